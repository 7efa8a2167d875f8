"""Slow clients cannot take the served API down.

Issue 12: two connections sending one header line every 5 s made the default API (2 sync
workers) unresponsive. The served configuration (``leukoscreen api``, as ``serve`` and compose
run it) uses threaded workers; this test opens slow-header and slow-body connections to
127.0.0.1 and checks that /healthz keeps answering. Bounded: 10 connections, about 8 s.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
import requests
import yaml

from bench.processes import ProcessGroup, free_port, project_env, wait_healthy
from tests.conftest import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

SLOW_HEADERS, SLOW_BODIES, HOLD_S = 6, 4, 8.0


def _trickle(port: int, first: bytes, drip: bytes, stop: threading.Event) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(first)
        while not stop.wait(1.0):
            try:
                sock.sendall(drip)
            except OSError:
                return


def test_slow_header_and_body_clients_do_not_block_healthz(tmp_path):
    env = project_env(
        DATABASE_URL=f"sqlite:///{tmp_path / 'var' / 'leukoscreen.db'}",
        LEUKOSCREEN_VAR_DIR=str(tmp_path / "var"),
    )
    (tmp_path / "logs").mkdir()
    api = ProcessGroup(env, tmp_path / "logs")
    port = free_port()
    api.start("api", "--port", str(port), "--workers", "2", name="api")
    stop = threading.Event()
    base = f"http://127.0.0.1:{port}"
    try:
        assert wait_healthy(base), api.logs()
        slow_header = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        slow_body = (
            b"POST /api/v1/batches HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 1000000\r\n\r\n"
        )
        clients = [
            threading.Thread(target=_trickle, args=(port, first, drip, stop), daemon=True)
            for first, drip, n in (
                (slow_header, b"X-Slow: 1\r\n", SLOW_HEADERS),
                (slow_body, b"--x\r\n", SLOW_BODIES),
            )
            for _ in range(n)
        ]
        for client in clients:
            client.start()
        time.sleep(1.5)  # every slow connection has sent its first bytes
        latencies, deadline = [], time.monotonic() + HOLD_S
        while time.monotonic() < deadline:
            started = time.monotonic()
            status = requests.get(f"{base}/healthz", timeout=3).status_code
            latencies.append(time.monotonic() - started)
            assert status == 200
            time.sleep(0.5)
        print(
            f"\n{SLOW_HEADERS} slow-header + {SLOW_BODIES} slow-body connections: "
            f"{len(latencies)} /healthz answered, slowest {max(latencies) * 1000:.0f} ms"
        )
    finally:
        stop.set()
        api.stop_all()


def test_compose_serves_the_api_with_threaded_workers():
    api = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["api"]
    argv = api["command"]
    assert argv[argv.index("--worker-class") + 1] == "gthread"
    assert int(argv[argv.index("--threads") + 1]) > 1
