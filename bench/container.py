"""Run the built CPU image: start it, wait for SERVING on the plaintext health port,
moderate a text, SIGTERM it and check the drain; report image size and start-to-SERVING.

    deploy/image/build.sh && python -m bench.container [--image localhost/wacht:cpu]

Podman settings that work on the reference host: --runtime runc, explicit nofile/nproc
ulimits, host network (ports are chosen free on 127.0.0.1). The container runs with the
manifests' hardening: read-only root filesystem, all capabilities dropped, no new
privileges, a tmpfs /tmp.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import time
from typing import Any

PODMAN = ["podman", "--runtime", "runc"]
IMAGE = "localhost/wacht:cpu"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def available(image: str = IMAGE) -> str | None:
    """None when the image can be run here, else why not."""
    if shutil.which("podman") is None:
        return "podman is not installed (apt-get install podman runc)"
    found = subprocess.run([*PODMAN, "image", "exists", image], capture_output=True)
    if found.returncode != 0:
        return f"image {image} is not built (deploy/image/build.sh)"
    return None


def image_size_mib(image: str = IMAGE) -> float:
    out = subprocess.run([*PODMAN, "image", "inspect", image, "--format", "{{.Size}}"],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip()) / (1 << 20)


def run(image: str = IMAGE, timeout: float = 120) -> dict[str, Any]:
    from grpc_health.v1 import health_pb2

    from wacht.client import WachtClient

    port, health, metrics = _free_port(), _free_port(), _free_port()
    name = f"wacht-check-{port}"
    command = [
        *PODMAN, "run", "-d", "--name", name, "--network", "host",
        "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
        "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges",
        "-e", f"WACHT_ADDRESS=127.0.0.1:{port}",
        "-e", f"WACHT_HEALTH_ADDRESS=127.0.0.1:{health}",
        "-e", "WACHT_METRICS_HOST=127.0.0.1", "-e", f"WACHT_METRICS_PORT={metrics}",
        "-e", "WACHT_SHUTDOWN_GRACE_S=10",
        image,
    ]
    started = time.monotonic()
    subprocess.run(command, check=True, capture_output=True)
    result: dict[str, Any] = {"image": image, "image_size_mib": round(image_size_mib(image), 1)}
    try:
        with WachtClient(f"127.0.0.1:{health}", timeout=2, service_config=None) as probe:
            while True:
                try:
                    if probe.health() == health_pb2.HealthCheckResponse.SERVING:
                        break
                except Exception:
                    pass
                if time.monotonic() - started > timeout:
                    raise TimeoutError("the container did not turn SERVING")
                time.sleep(0.1)
        result["start_to_serving_s"] = round(time.monotonic() - started, 2)
        with WachtClient(f"127.0.0.1:{port}", timeout=30) as client:
            reply = client.moderate(["you are lovely", "you are an idiot"])
            result["decisions"] = [r.decision for r in reply.results]
            result["flagged"] = [r.flagged for r in reply.results]
        stop_started = time.monotonic()
        subprocess.run([*PODMAN, "kill", "--signal", "TERM", name], check=True,
                       capture_output=True)
        waited = subprocess.run([*PODMAN, "wait", name], capture_output=True, text=True,
                                timeout=60)
        result["exit_code"] = int(waited.stdout.strip() or -1)
        result["stop_s"] = round(time.monotonic() - stop_started, 2)
        logs = subprocess.run([*PODMAN, "logs", name], capture_output=True, text=True)
        events = []
        for line in (logs.stdout + logs.stderr).splitlines():
            try:
                events.append(json.loads(line).get("event"))
            except ValueError:
                continue
        result["drained"] = "draining" in events and events[-1] == "stopped"
        result["user"] = subprocess.run(
            [*PODMAN, "image", "inspect", image, "--format", "{{.Config.User}}"],
            capture_output=True, text=True).stdout.strip()
    finally:
        subprocess.run([*PODMAN, "rm", "-f", name], capture_output=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image", default=IMAGE)
    args = parser.parse_args()
    reason = available(args.image)
    if reason:
        raise SystemExit(reason)
    print(json.dumps(run(args.image)))


if __name__ == "__main__":
    main()
