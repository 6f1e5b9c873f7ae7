"""Starting ``python cli.py serve`` as a subprocess on a free loopback port, waiting for it, measuring and stopping it.

Used by the tests (tests/test_serve.py) and the serving benchmark (bench/serve.py).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``python cli.py serve ARGS --port FREE`` in its own process group, stdout and stderr in ``log``."""

    def __init__(self, args: list[str], log: Path, start_timeout: float = 180.0, env: dict | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled", **(env or {})}
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, str(REPO / "cli.py"), "serve", *args, "--port", str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=log.parent,
                start_new_session=True,
            )
        self._wait_healthy(start_timeout)

    def _wait_healthy(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if requests.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"serve not healthy after {seconds} s:\n{self.log.read_text()[-3000:]}")

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM to the server's process, then its group if it is still there; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        return self.process.returncode

    def rss_mb(self) -> float:
        """Resident memory of the server and every process under it (HTTP servers, workers, queue manager), MB."""
        parents: dict[int, int] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(stat.parent.name)] = int(fields[1])
        tree, grown = {self.process.pid}, True
        while grown:
            children = {pid for pid, parent in parents.items() if parent in tree} - tree
            tree |= children
            grown = bool(children)
        total_kb = 0
        for pid in tree:
            try:
                status = Path(f"/proc/{pid}/status").read_text().splitlines()
            except OSError:
                continue
            total_kb += next((int(line.split()[1]) for line in status if line.startswith("VmRSS")), 0)
        return total_kb / 1024
