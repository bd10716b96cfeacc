"""Google's HTTP error JSON, used by Wacht's JSON API and the Perspective endpoint:
`{"error": {"code": 400, "message": ..., "status": "INVALID_ARGUMENT", "details": [...]}}`,
the details being the google.rpc messages gRPC sends (BadRequest field violations,
RetryInfo) in their canonical JSON form with an `@type`."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from google.protobuf import json_format

from wacht.service.api import errors
from wacht.service.api.calls import REQUEST_ID_KEY
from wacht.service.http.common import http_status, json_response, retry_headers


def error_body(error: errors.ApiError, extra: list[dict[str, Any]] | None = None) -> dict:
    status = json_format.MessageToDict(error.to_status_proto())
    body: dict[str, Any] = {
        "code": http_status(error),
        "message": error.message,
        "status": error.code.name,
    }
    details = [*(extra or []), *status.get("details", [])]
    if details:
        body["details"] = details
    return {"error": body}


def error_response(
    error: errors.ApiError, request_id: str, extra: list[dict[str, Any]] | None = None
) -> web.Response:
    headers = {**retry_headers(error), REQUEST_ID_KEY: request_id}
    return json_response(error_body(error, extra), http_status(error), headers)
