"""``leukoscreen serve``: the whole service on one machine, for a lab laptop or a demo.

Runs the migrations, then the API under gunicorn and one worker with the reconciler schedule
as child processes; stops both on Ctrl-C. With no DATABASE_URL/BROKER_URL it needs no server:
SQLite and Celery's filesystem transport under ./var.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from db import migrate
from leukoscreen.config import Settings, load_settings


def ensure_first_admin(settings: Settings) -> str | None:
    """Create an admin when no user exists; returns the password to print, if one was made.

    The first admin belongs to the default laboratory and is a global admin: on a fresh
    install they add the other laboratories and their people.
    """
    from db.accounts import create_user, has_users
    from db.session import engine_for, session_factory

    with session_factory(engine_for(settings.database_url)).begin() as session:
        if has_users(session):
            return None
        password = settings.admin_password or secrets.token_urlsafe(12)
        create_user(session, "admin", "admin", password, global_admin=True)
    return password


METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_metrics_dir(settings: Settings) -> Path:
    """One prometheus-client multiprocess folder for every process this command starts, so
    that /metrics adds up the API's gunicorn workers and the Celery pool processes; emptied
    first, as the library requires: files of a previous run would be counted again."""
    folder = Path(settings.prometheus_multiproc_dir or settings.var_dir / "prometheus")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def run_serve(args: argparse.Namespace) -> int:
    settings = load_settings()
    if not settings.model_path.is_file():
        print(
            f"model weights not found at {settings.model_path}; set LEUKOSCREEN_MODEL_PATH",
            file=sys.stderr,
        )
        return 2
    migrate.upgrade(settings.database_url)
    password = ensure_first_admin(settings)
    # The children read it from their environment before they import prometheus-client.
    env = {**os.environ, METRICS_ENV: str(prepare_metrics_dir(settings))}
    cli = [sys.executable, "-m", "leukoscreen.cli"]
    children = [
        subprocess.Popen([*cli, "worker"], env=env),
        # The schedule and its own consumer: a scoring backlog never delays a reconcile run.
        subprocess.Popen([*cli, "worker", "--queue", "reconcile", "--beat"], env=env),
        subprocess.Popen([*cli, "api", "--host", args.host, "--port", str(args.port)], env=env),
    ]
    print(
        f"LeukoScreen on http://{args.host}:{args.port}  (database {settings.database_url}, "
        f"broker {settings.broker_url})",
        flush=True,
    )
    if password is not None:
        shown = "(from LEUKOSCREEN_ADMIN_PASSWORD)" if settings.admin_password else password
        print(
            f"First account created. Sign in at http://{args.host}:{args.port}/login as "
            f"'admin' with password {shown}\n"
            "Add people with: leukoscreen user add NAME --role uploader|reviewer|admin\n"
            "API token for submit: leukoscreen token create admin",
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
