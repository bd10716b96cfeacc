"""The built CPU image really runs: SERVING via the health port, a moderation, SIGTERM
drains and exits 0 (bench/container.py). Skipped unless podman and the image are here:
build it with deploy/image/build.sh (a few minutes; not part of the test run)."""

from __future__ import annotations

import pytest

from bench import container

pytestmark = pytest.mark.slow


def test_image_serves_moderates_and_drains() -> None:
    reason = container.available()
    if reason:
        pytest.skip(reason)
    result = container.run()
    assert result["start_to_serving_s"] < 60
    assert result["flagged"] == [False, True]
    assert result["exit_code"] == 0 and result["drained"], result
    assert result["user"] == "10001:10001"
