"""``leukoscreen serve``: the whole service on one machine, for a lab laptop or a demo.

Runs the migrations, then the API under gunicorn and one worker with the reconciler schedule
as child processes; stops both on Ctrl-C. With no DATABASE_URL/BROKER_URL it needs no server:
SQLite and Celery's filesystem transport under ./var.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time

from db import migrate
from leukoscreen.config import load_settings


def run_serve(args: argparse.Namespace) -> int:
    settings = load_settings()
    if not settings.model_path.is_file():
        print(
            f"model weights not found at {settings.model_path}; set LEUKOSCREEN_MODEL_PATH",
            file=sys.stderr,
        )
        return 2
    migrate.upgrade(settings.database_url)
    cli = [sys.executable, "-m", "leukoscreen.cli"]
    children = [
        subprocess.Popen([*cli, "worker", "--beat"]),
        subprocess.Popen([*cli, "api", "--host", args.host, "--port", str(args.port)]),
    ]
    print(
        f"LeukoScreen on http://{args.host}:{args.port}  (database {settings.database_url}, "
        f"broker {settings.broker_url})",
        flush=True,
    )

    def stop(*_: object) -> None:
        for child in children:
            if child.poll() is None:
                child.terminate()

    signal.signal(signal.SIGTERM, stop)
    try:
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        stop()
        for child in children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
    return max((c.returncode or 0) for c in children)
