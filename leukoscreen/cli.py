"""The ``leukoscreen`` command: one entry point for operators, labs and developers."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from db.models import Role
from leukoscreen import logs
from leukoscreen.config import load_settings
from model.card import ARCHITECTURE_NAMES


def _db(args: argparse.Namespace) -> int:
    from db import migrate

    if args.action == "upgrade":
        migrate.upgrade(revision=args.revision or "head")
    elif args.action == "downgrade":
        migrate.downgrade(revision=args.revision or "-1")
    elif args.action == "revision":
        from alembic import command

        command.revision(migrate.alembic_config(), message=args.message, autogenerate=True)
    print(f"database {args.action}: done ({_redacted(load_settings().database_url)})")
    return 0


def _redacted(url: str) -> str:
    from sqlalchemy import make_url

    return make_url(url).render_as_string(hide_password=True)


def _refuse_insecure() -> int:
    """Exit status 2 with the reason when production settings are unsafe, else 0."""
    from leukoscreen.config import InsecureConfiguration, load_settings, resolve_secret_key

    try:
        # Also generates the var folder's key on first start, before any child process.
        resolve_secret_key(load_settings())
    except InsecureConfiguration as exc:
        print(f"leukoscreen: refusing to start: {exc}", file=sys.stderr)
        return 2
    return 0


def _metrics_dir() -> None:
    """prometheus-client writes each process's values under PROMETHEUS_MULTIPROC_DIR and fails
    when the folder is missing (emptying it between runs is the deployment's: see serve)."""
    folder = load_settings().prometheus_multiproc_dir
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)


def _api(args: argparse.Namespace) -> int:
    # Checked here too: gunicorn would only report "Worker failed to boot".
    if refused := _refuse_insecure():
        return refused
    _metrics_dir()
    if args.dev:
        from api import create_app

        create_app().run(host=args.host, port=args.port, threaded=True)
        return 0
    gunicorn = shutil.which("gunicorn") or str(Path(sys.executable).with_name("gunicorn"))
    os.execv(
        gunicorn,
        [
            gunicorn,
            "--bind",
            f"{args.host}:{args.port}",
            "--workers",
            str(args.workers),
            # Threads, not one request per process: a slow client (headers or body trickling
            # in) holds one thread, not a whole worker, and a connection that has sent nothing
            # waits in the worker's poller without a thread. See docs/reliability.md.
            "--worker-class",
            "gthread",
            "--threads",
            str(args.threads),
            "--keep-alive",
            "5",
            "--timeout",
            "600",
            # gunicorn's own lines (master and workers) in the application's log format.
            "--config",
            "python:leukoscreen.gunicorn_config",
            "api.wsgi:app",
        ],
    )
    return 0  # unreachable: execv replaces this process


def _count_gpus() -> int:
    """Count GPUs with nvidia-smi, without importing TensorFlow in the prefork parent."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return 0
    out = subprocess.run([smi, "-L"], capture_output=True, text=True, check=False).stdout
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def _worker(args: argparse.Namespace) -> int:
    from worker.celery_app import (
        EXPLAIN_QUEUE,
        PRIORITY_QUEUE,
        RECONCILE_QUEUE,
        WEBHOOK_QUEUE,
        app,
    )
    from worker.runtime import use_settings

    settings = load_settings()
    _metrics_dir()
    # Scoring workers take the priority lane first (the broker is asked in this order).
    queues = [args.queue] if args.queue == RECONCILE_QUEUE else [PRIORITY_QUEUE, args.queue]
    if args.beat and args.queue != RECONCILE_QUEUE:
        # The host that schedules the reconciler also runs it: its own queue still keeps a
        # scoring backlog from delaying a run by more than the chunk in progress.
        queues.append(RECONCILE_QUEUE)
    if RECONCILE_QUEUE in queues:
        # Webhook sends need no model either: the housekeeping worker takes them.
        queues.append(WEBHOOK_QUEUE)
    if args.queue != RECONCILE_QUEUE:
        # Heatmaps need the model that scored, and wait until every scoring queue is empty.
        queues.append(EXPLAIN_QUEUE)
    argv = [
        "worker",
        "-Q",
        ",".join(queues),
        "--loglevel",
        args.loglevel,
        "-n",
        f"{args.queue}-{os.getpid()}@{settings.hostname}",
        "--without-gossip",
        "--without-mingle",
    ]
    concurrency = args.concurrency
    from model.precision import validate

    try:
        validate(settings.precision, "LEUKOSCREEN_PRECISION")
    except ValueError as exc:
        # Said now, not as every chunk's failure once a pool process loads the model.
        print(exc, file=sys.stderr)
        return 2
    if args.queue == "gpu":
        gpus = settings.gpu_count or _count_gpus()
        if gpus == 0:
            print(
                "no GPU found (nvidia-smi -L); set LEUKOSCREEN_GPU_COUNT to override",
                file=sys.stderr,
            )
            return 2
        settings = replace(settings, gpu_count=gpus)
        concurrency = concurrency or gpus
    if args.queue == RECONCILE_QUEUE:
        # Two processes: one waiting on a slow webhook receiver leaves one for the reconciler.
        concurrency = concurrency or 2
    # The pool processes are forked from this one: each pins its GPU from these settings.
    use_settings(settings)
    argv += ["--concurrency", str(concurrency or 1)]
    if settings.log_format == "json":
        # Celery's global option: its start-up banner is not a log line (one JSON object each).
        argv.insert(0, "--quiet")
    if args.max_tasks_per_child:
        argv += ["--max-tasks-per-child", str(args.max_tasks_per_child)]
    if args.beat:
        argv += ["--beat", "--schedule", _schedule_file()]
    if args.metrics_port:
        if not settings.prometheus_multiproc_dir:
            print(
                "--metrics-port needs PROMETHEUS_MULTIPROC_DIR (the pool processes' counters "
                "are read from there)",
                file=sys.stderr,
            )
            return 2
        from leukoscreen.metrics import serve_host_metrics

        # In this parent, before the pool forks: the children only write their files.
        serve_host_metrics(settings.prometheus_multiproc_dir, args.metrics_port, args.metrics_addr)
    app.worker_main(argv)
    return 0


def _schedule_file() -> str:
    """Beat's schedule state; its folder may not exist yet when Redis is the broker."""
    var_dir = load_settings().var_dir
    var_dir.mkdir(parents=True, exist_ok=True)
    return str(var_dir / "celerybeat-schedule")


def _beat(args: argparse.Namespace) -> int:
    from worker.celery_app import app

    app.start(
        [
            "beat",
            "--loglevel",
            args.loglevel,
            "--schedule",
            _schedule_file(),
        ]
    )
    return 0


def _reconcile(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from db.session import engine_for, session_factory
    from worker.celery_app import app
    from worker.reconcile import reconcile

    settings = load_settings()
    report = reconcile(app, session_factory(engine_for(settings.database_url)), settings)
    print(json.dumps(asdict(report)))
    return 0


def _purge(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from db.retention import purge_old_images
    from leukoscreen.storage import open_store

    settings = load_settings()
    if settings.retain_images_days <= 0:
        print("LEUKOSCREEN_RETAIN_IMAGES_DAYS is 0 or unset: images are kept for ever")
        return 0
    report = purge_old_images(
        _sessions(),
        open_store(settings),
        settings.retain_images_days,
        _operator(),
        dry_run=args.dry_run,
    )
    print(json.dumps(asdict(report)))
    return 0


def _sessions():
    from db.session import engine_for, session_factory

    return session_factory(engine_for(load_settings().database_url))


def _operator():
    import getpass

    from db.audit import Operator

    return Operator(name=f"cli:{getpass.getuser()}")


def _lab(args: argparse.Namespace) -> int:
    from db.accounts import AccountError, create_laboratory
    from db.models import Laboratory

    with _sessions().begin() as session:
        if args.action == "list":
            for lab in session.query(Laboratory).order_by(Laboratory.name):
                print(f"{lab.id}\t{lab.name}")
            return 0
        if not args.name:
            print("give the laboratory's name: leukoscreen lab add NAME", file=sys.stderr)
            return 2
        try:
            lab = create_laboratory(session, args.name, _operator())
        except AccountError as exc:
            print(f"not created: {exc}", file=sys.stderr)
            return 1
        print(f"laboratory {lab.name} created (id {lab.id})")
    return 0


def _user(args: argparse.Namespace) -> int:
    from db.accounts import AccountError, create_user, find_laboratory

    password = args.password or os.environ.get("LEUKOSCREEN_PASSWORD")
    if not password:
        import getpass

        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            print("passwords differ", file=sys.stderr)
            return 2
    try:
        with _sessions().begin() as session:
            lab = find_laboratory(session, args.lab) if args.lab else None
            if args.lab and lab is None:
                print(f"no laboratory {args.lab!r} (leukoscreen lab list)", file=sys.stderr)
                return 1
            user = create_user(
                session,
                args.name,
                args.role,
                password,
                _operator(),
                laboratory_id=lab.id if lab else None,
                global_admin=args.global_admin,
            )
            where = f"laboratory {lab.name}" if lab else "the default laboratory"
            print(f"user {user.name} created with role {user.role} in {where}")
    except AccountError as exc:
        print(f"not created: {exc}", file=sys.stderr)
        return 1
    return 0


def _token(args: argparse.Namespace) -> int:
    from db.accounts import create_token, find_user, revoke_token
    from db.models import ApiToken

    with _sessions().begin() as session:
        if args.action == "create":
            user = find_user(session, args.target)
            if user is None:
                print(f"no user {args.target!r}", file=sys.stderr)
                return 1
            _, token = create_token(session, user, _operator(), args.label)
            # Only the token on stdout, so that scripts can capture it.
            print(token)
            return 0
        row = session.get(ApiToken, int(args.target)) if args.target.isdigit() else None
        if row is None:
            print(f"no token with id {args.target}", file=sys.stderr)
            return 1
        revoke_token(session, row, _operator())
        print(f"token {row.id} ({row.prefix}…) of {row.user.name} revoked")
    return 0


def _submit(args: argparse.Namespace) -> int:
    from leukoscreen.submit import run_submit

    return run_submit(args)


def _serve(args: argparse.Namespace) -> int:
    if refused := _refuse_insecure():
        return refused
    from leukoscreen.serve import run_serve

    return run_serve(args)


def _model_init(args: argparse.Namespace) -> int:
    import keras

    from model.architecture import ARCHITECTURES
    from model.card import CLASSES, P_CLASSES, P_LEUKEMIA, CardData, write_card
    from model.gate import MEAN_AND_STD, permissive_gate, write_statistics
    from model.gate_features import feature_network

    keras.utils.set_random_seed(args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    network = ARCHITECTURES[args.arch]()
    network.save(out)
    height, width = network.input_shape[1:3]
    card: CardData = {
        "name": f"{args.arch}-untrained-seed{args.seed}",
        "threshold": args.threshold,
        "output": P_CLASSES if network.output_shape[-1] == len(CLASSES) else P_LEUKEMIA,
        "input_size": [int(width), int(height)],
        "metrics": {},
        "warning": "random weights for plumbing tests only; not a screening model",
    }
    if args.permissive_gate:
        with_features = feature_network(network, MEAN_AND_STD)
        if with_features is None:
            raise SystemExit(f"{args.arch} is not a simple chain of layers: no gate features")
        dim = int(with_features.outputs[1].shape[-1])
        card["gate"] = write_statistics(out, permissive_gate(dim, MEAN_AND_STD)).describe()
        card["gate_warning"] = "permissive gate: every image is judged by the network"
    write_card(out, card)
    print(f"wrote untrained {args.arch} to {out}")
    return 0


def _delegate(module: str):
    """Training and evaluation live in model/ and need the 'train' extra."""

    def run(args: argparse.Namespace) -> int:
        if getattr(args, "model", "") is None:
            # The model the workers load, unless --model names another: model/ reads no settings.
            args.model = load_settings().model_path
        return importlib.import_module(module).run(args)

    return run


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leukoscreen", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("db", help="database schema (Alembic)")
    p.add_argument("action", choices=["upgrade", "downgrade", "revision"])
    p.add_argument("revision", nargs="?", help="target revision (default head / -1)")
    p.add_argument("-m", "--message", default="schema change")
    p.set_defaults(func=_db)

    p = sub.add_parser("api", help="run the intake API under gunicorn")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=2)
    # At most the database pool's 15 connections (5 + 10 overflow), so no thread waits for one.
    p.add_argument("--threads", type=int, default=12, help="threads per worker (gthread)")
    p.add_argument("--dev", action="store_true", help="Flask's own server, one process")
    p.set_defaults(func=_api)

    p = sub.add_parser("worker", help="run a scoring worker")
    p.add_argument(
        "--queue",
        choices=["cpu", "gpu", "reconcile"],
        default="cpu",
        help="reconcile: only the reconciler's runs (no model loaded); a backlog cannot delay them",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=0,
        help="processes (default 1 on CPU: TensorFlow uses every core; 1 per GPU)",
    )
    p.add_argument("--max-tasks-per-child", type=int, default=0)
    p.add_argument("--beat", action="store_true", help="also run the reconciler schedule")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="serve this host's worker counters for Prometheus on this port (no API here); "
        "needs PROMETHEUS_MULTIPROC_DIR",
    )
    p.add_argument(
        "--metrics-addr",
        default="127.0.0.1",
        help="address for --metrics-port: unauthenticated, so loopback or a private network",
    )
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(func=_worker)

    p = sub.add_parser("beat", help="run the periodic reconciler schedule")
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(func=_beat)

    p = sub.add_parser("reconcile", help="re-enqueue stale images once, now")
    p.set_defaults(func=_reconcile)

    p = sub.add_parser(
        "purge",
        help="remove the stored pixels of images older than LEUKOSCREEN_RETAIN_IMAGES_DAYS "
        "(results, decisions, sign-offs and audit stay)",
    )
    p.add_argument("--dry-run", action="store_true", help="count what would go, change nothing")
    p.set_defaults(func=_purge)

    p = sub.add_parser("submit", help="upload a folder or files as a batch")
    p.add_argument("paths", nargs="+")
    p.add_argument("--url", default=os.environ.get("LEUKOSCREEN_URL", "http://127.0.0.1:8000"))
    p.add_argument("--name")
    p.add_argument("--part-files", type=int, default=200, help="files per upload request")
    p.add_argument("--part-bytes", type=int, default=64 * 1024 * 1024)
    p.add_argument("--wait", action="store_true", help="wait until every image is scored")
    p.add_argument("--csv", help="write the results CSV here (implies --wait)")
    specimen = p.add_mutually_exclusive_group()
    specimen.add_argument(
        "--manifest",
        help="CSV with columns file, specimen_id[, source] naming every file's specimen "
        "(default: a manifest.csv at the top of the folder)",
    )
    specimen.add_argument(
        "--specimen-folders",
        action="store_true",
        help="each file's folder name is its specimen id (DIR/S-0001/field1.jpg)",
    )
    specimen.add_argument("--specimen-id", help="one specimen id for every file")
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument(
        "--token",
        default=os.environ.get("LEUKOSCREEN_TOKEN"),
        help="API token (default: $LEUKOSCREEN_TOKEN); an admin creates one with 'token create'",
    )
    p.set_defaults(func=_submit)

    p = sub.add_parser("user", help="manage accounts")
    p.add_argument("action", choices=["add"])
    p.add_argument("name")
    p.add_argument("--role", choices=[r.value for r in Role], required=True)
    p.add_argument("--password", help="default: $LEUKOSCREEN_PASSWORD, else asked for")
    p.add_argument("--lab", help="laboratory name (default: the default laboratory)")
    p.add_argument(
        "--global-admin",
        action="store_true",
        help="an admin of every laboratory, who also creates laboratories (role admin)",
    )
    p.set_defaults(func=_user)

    p = sub.add_parser("lab", help="laboratories: 'lab add NAME' or 'lab list'")
    p.add_argument("action", choices=["add", "list"])
    p.add_argument("name", nargs="?")
    p.set_defaults(func=_lab)

    p = sub.add_parser("token", help="API tokens: 'token create USER' or 'token revoke ID'")
    p.add_argument("action", choices=["create", "revoke"])
    p.add_argument("target", help="user name (create) or token id (revoke)")
    p.add_argument("--label", default="cli")
    p.set_defaults(func=_token)

    p = sub.add_parser("serve", help="API + worker + reconciler in one command (embedded defaults)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=_serve)

    p = sub.add_parser("model-init", help="write an untrained network (plumbing tests only)")
    p.add_argument("--out", required=True)
    p.add_argument("--arch", default="lenet_lld", choices=ARCHITECTURE_NAMES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument(
        "--permissive-gate",
        action="store_true",
        help="write a gate that lets every image through (without one, every image goes to "
        "manual review)",
    )
    p.set_defaults(func=_model_init)

    for name, module, about in (
        ("train", "model.train", "train the screening model (needs the 'train' extra)"),
        ("evaluate", "model.evaluate", "evaluate a model (needs the 'train' extra)"),
        ("fit-gate", "model.fit_gate", "fit and measure a model's gate (needs the 'train' extra)"),
        ("bench", "bench.throughput", "measure throughput: model, preprocessing, end to end"),
        ("bench-queries", "bench.queries", "time progress and results queries at 1M rows"),
    ):
        p = sub.add_parser(name, help=about)
        # Imported only when asked for: these modules pull in TensorFlow and matplotlib.
        if command == name:
            importlib.import_module(module).add_arguments(p)
            p.set_defaults(func=_delegate(module))
    return parser


def main(argv: list[str] | None = None) -> int:
    # As basicConfig did: a program that already set up logging (a test run) keeps its own.
    if not logging.getLogger().handlers:
        logs.configure(load_settings().log_format)
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
