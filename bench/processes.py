"""Running the project's own commands as real processes, for the benchmark and the tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent


def project_env(**settings: str) -> dict[str, str]:
    """This process's environment without LeukoScreen's own settings, plus ``settings``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LEUKOSCREEN_", "DATABASE", "BROKER", "REDIS"))
    }
    env.update(PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
    env.update(settings)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(base: str, timeout: float = 60) -> bool:
    """Until /healthz answers 200, or the timeout passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{base}/healthz", timeout=2).status_code == 200:
                return True
        time.sleep(0.3)
    return False


class ProcessGroup:
    """``leukoscreen`` subcommands sharing one environment, each in its own session."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env, self.log_dir = env, log_dir
        self.procs: list[subprocess.Popen] = []

    def start(self, *args: str, name: str) -> subprocess.Popen:
        with open(self.log_dir / f"{name}.log", "ab") as log:  # the child keeps its own copy
            proc = subprocess.Popen(
                [sys.executable, "-m", "leukoscreen.cli", *args],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def start_api(self, workers: int = 2, name: str = "api") -> str:
        """gunicorn on a free port; its base URL once /healthz answers, else every process of
        the group stopped and RuntimeError with the logs."""
        port = free_port()
        self.start("api", "--port", str(port), "--workers", str(workers), name=name)
        base = f"http://127.0.0.1:{port}"
        if not wait_healthy(base):
            self.stop_all()
            raise RuntimeError("API did not start:\n" + self.logs())
        return base

    def kill_group(self, proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        """The process and all its children (a worker's pool), as an operator's kill -9."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        proc.wait(timeout=30)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.log_dir.glob("*.log"))
        )
