"""Run the admission front (service/front.py, nginx) in front of a Wacht process: used by
bench/reliability.py (`--front LIMIT`) and tests/test_front.py."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from bench.load import _free_port
from wacht.service.front import Front, render


def nginx() -> str | None:
    """The nginx binary, or None (Debian: `apt-get install nginx-light`)."""
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).is_file()), None)


class NginxFront:
    """nginx with `wacht front-config`'s configuration, listening on a free loopback port."""

    def __init__(self, upstream: str, limit: int = 8, per_caller: int = 6,
                 retry_after_ms: int = 50, tls: tuple[str, str] | None = None) -> None:
        binary = nginx()
        if binary is None:
            raise FileNotFoundError("nginx is not installed (apt-get install nginx-light)")
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.run_dir = Path(tempfile.mkdtemp(prefix="wacht-front-"))
        self.run_dir.chmod(0o755)  # nginx's workers drop root (to nobody) and write here
        self.config = self.run_dir / "nginx.conf"
        self.config.write_text(render(Front(
            upstream=upstream, listen=self.address, limit=limit, per_caller=per_caller,
            retry_after_ms=retry_after_ms, run_dir=str(self.run_dir),
            tls_cert=tls[0] if tls else "", tls_key=tls[1] if tls else "")))
        self.process = subprocess.Popen(
            [binary, "-c", str(self.config), "-e", "stderr", "-g", "daemon off;"],
            stdout=subprocess.DEVNULL)
        self._wait_listening()

    def _wait_listening(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError("nginx did not start listening")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> NginxFront:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
