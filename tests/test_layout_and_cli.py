from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, text

from db.models import Base
from leukoscreen.cli import build_parser
from leukoscreen.submit import collect_files, plan_parts
from tests.conftest import REPO


def test_api_process_never_imports_tensorflow(settings):
    code = (
        "import sys; from api import create_app; app = create_app();"
        "c = app.test_client(); assert c.get('/healthz').status_code in (200, 503);"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    env = {"LEUKOSCREEN_VAR_DIR": str(settings.var_dir), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_alembic_schema_matches_the_models(db_settings):
    engine = create_engine(db_settings.database_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(settings):
    from db import migrate
    from db.session import make_engine

    migrate.upgrade(settings.database_url)
    with make_engine(settings.database_url).connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 30000


def test_settings_come_from_the_environment(monkeypatch, tmp_path):
    from leukoscreen.config import load_settings

    monkeypatch.setenv("LEUKOSCREEN_VAR_DIR", str(tmp_path))
    monkeypatch.delenv("BROKER_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    s = load_settings()
    assert s.database_url == f"sqlite:///{tmp_path / 'leukoscreen.db'}"
    assert s.uses_filesystem_broker and s.chunk_size == 64
    monkeypatch.setenv("REDIS_URL", "redis://example:6379/2")
    monkeypatch.setenv("DATABASE_URL", "postgres://u:p@db/screen")
    monkeypatch.setenv("LEUKOSCREEN_CHUNK_SIZE", "128")
    s = load_settings()
    assert s.broker_url == "redis://example:6379/2" and not s.uses_filesystem_broker
    assert s.database_url == "postgresql+psycopg://u:p@db/screen"
    assert s.chunk_size == 128


@pytest.mark.parametrize(
    "command",
    [
        "db upgrade",
        "api",
        "worker --queue gpu --concurrency 2",
        "beat",
        "reconcile",
        "submit some/dir --wait --csv out.csv",
        "serve",
    ],
)
def test_cli_offers_every_documented_subcommand(command):
    args = build_parser(command.split()[0]).parse_args(command.split())
    assert callable(args.func)


def test_submit_splits_a_folder_into_parts_by_count_and_size(tmp_path):
    (tmp_path / "a").mkdir()
    for i in range(5):
        (tmp_path / "a" / f"{i}.jpg").write_bytes(b"x" * 100)
    (tmp_path / ".hidden").write_bytes(b"x")
    files = collect_files([str(tmp_path)])
    assert [name for _, name in files] == [f"a/{i}.jpg" for i in range(5)]
    assert [len(p) for p in plan_parts(files, max_files=2, max_bytes=10_000)] == [2, 2, 1]
    assert [len(p) for p in plan_parts(files, max_files=100, max_bytes=250)] == [2, 2, 1]


def test_docker_compose_names_every_service():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "postgres", "migrate", "api", "worker", "worker-gpu", "beat"} <= set(services)
    assert "gunicorn" in " ".join(services["api"]["command"])
    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    for name in ("api", "worker", "worker-gpu"):
        volumes = services[name]["volumes"]
        assert any(v.startswith("images:") for v in volumes), name
    assert services["worker"]["depends_on"]["migrate"]["condition"] == (
        "service_completed_successfully"
    )


def test_submit_without_a_token_explains_how_to_get_one(tmp_path, monkeypatch, capsys):
    from leukoscreen.submit import run_submit

    monkeypatch.delenv("LEUKOSCREEN_TOKEN", raising=False)
    (tmp_path / "a.jpg").write_bytes(b"x")
    args = build_parser("submit").parse_args(["submit", str(tmp_path)])
    assert args.token is None
    assert run_submit(args) == 2
    assert "token create" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command", ["user add rita --role reviewer", "token create rita", "token revoke 3"]
)
def test_cli_offers_account_and_token_commands(command):
    args = build_parser(command.split()[0]).parse_args(command.split())
    assert callable(args.func)


def test_the_image_holds_every_package_the_cli_imports():
    """`leukoscreen bench` runs inside the image: every packaged folder is copied into it."""
    copied = {
        line.split()[1]
        for line in (REPO / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY ") and len(line.split()) == 3
    }
    packages = {"api", "worker", "model", "db", "migrations", "leukoscreen", "bench"}
    assert packages <= copied, packages - copied


LAYERS = ("api", "worker", "model", "db", "bench")
ENTRY_POINTS = {"leukoscreen.cli", "leukoscreen.serve", "leukoscreen.submit"}
BASE = ("leukoscreen/config.py", "leukoscreen/storage.py", "leukoscreen/imagetypes.py")


def _imports(path) -> set[str]:  # type: ignore[no-untyped-def]
    import ast

    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def _modules(*folders: str):  # type: ignore[no-untyped-def]
    return [p for folder in folders for p in sorted((REPO / folder).rglob("*.py"))]


def test_entry_points_sit_above_everything_they_call():
    """api/ worker/ model/ db/ bench/ never import the CLI, serve or submit; the shared base
    (settings, storage, image types) imports none of the layers above it."""
    upward = {
        f"{p.relative_to(REPO)} imports {name}"
        for p in _modules(*LAYERS, "migrations")
        for name in _imports(p)
        if name in ENTRY_POINTS
    }
    upward |= {
        f"{path} imports {name}"
        for path in BASE
        for name in _imports(REPO / path)
        if name.split(".")[0] in LAYERS or name in ENTRY_POINTS
    }
    assert not upward, sorted(upward)


def _environment_reads(path) -> int:  # type: ignore[no-untyped-def]
    """How often a module reads os.environ / os.getenv (setting a variable for a library,
    like CUDA_VISIBLE_DEVICES for TensorFlow, or giving one a default the operator can
    override, ``os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")``, is not a read)."""
    import ast

    tree = ast.parse(path.read_text())
    written = {
        id(target.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Subscript)
    } | {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr == "setdefault"
    }
    return sum(
        1
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr in ("environ", "getenv")
        and id(node) not in written
    )


def test_settings_are_read_only_in_the_settings_module():
    """No layer reads the environment itself; db/ and model/ are handed their settings."""
    readers = {str(p.relative_to(REPO)) for p in _modules(*LAYERS[:4]) if _environment_reads(p)}
    readers |= {
        f"{p.relative_to(REPO)} imports the settings"
        for p in _modules("model", "db")
        if "leukoscreen.config" in _imports(p)
    }
    assert not readers, sorted(readers)


def test_leukoscreen_evaluate_defaults_to_the_configured_model(monkeypatch, tmp_path):
    """The entry point reads the settings; model/evaluate.py is handed the path."""
    import model.evaluate

    weights = tmp_path / "chosen.keras"
    monkeypatch.setenv("LEUKOSCREEN_MODEL_PATH", str(weights))
    with pytest.raises(SystemExit, match="give --model"):
        model.evaluate.main(["--data", str(tmp_path)])
    seen = []
    monkeypatch.setattr(model.evaluate, "run", lambda args: seen.append(args.model) or 0)
    args = build_parser("evaluate").parse_args(["evaluate", "--data", str(tmp_path)])
    assert args.func(args) == 0
    assert seen == [weights]
