"""Shared fixtures. The API server fixtures live in api_support.py (engineer A)."""

from api_support import client, wacht_server  # noqa: F401
