"""The OpenAPI description matches the routes, and schemathesis finds nothing wrong live."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from api import create_app
from bench.processes import ProcessGroup, free_port, project_env, wait_healthy
from db import migrate
from tests.conftest import create_account, token_client


def _flask_paths(app) -> set[tuple[str, str]]:
    routes = set()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith(("/api/v1/", "/healthz", "/readyz")):
            continue  # HTML pages are not part of the JSON API
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            routes.add((path, method.lower()))
    return routes


def test_every_route_is_described_and_every_description_is_a_route(db_settings):
    settings = db_settings
    app = create_app(settings)
    spec = token_client(app, settings.database_url).get("/api/v1/openapi.json").json
    described = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    assert described == _flask_paths(app)


@pytest.mark.e2e
@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.timeout(600)
def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    tmp_path, postgres_url, redis_url
):
    if shutil.which("schemathesis", path=os.path.dirname(sys.executable)) is None:
        pytest.fail("schemathesis is not installed (it is in the test extra)")
    env = project_env(
        DATABASE_URL=postgres_url, BROKER_URL=redis_url, LEUKOSCREEN_VAR_DIR=str(tmp_path / "var")
    )
    migrate.upgrade(postgres_url)
    token = create_account(postgres_url, "schemathesis", "admin")
    (tmp_path / "logs").mkdir()
    svc = ProcessGroup(env, tmp_path / "logs")
    port = free_port()
    svc.start("api", "--port", str(port), "--workers", "2", name="api")
    base = f"http://127.0.0.1:{port}"
    try:
        if not wait_healthy(base):
            pytest.fail("API did not start:\n" + svc.logs())
        done = subprocess.run(
            [
                os.path.join(os.path.dirname(sys.executable), "schemathesis"),
                "run",
                f"{base}/api/v1/openapi.json",
                "--checks",
                "all",
                # Whether uploaded bytes are a usable image cannot be said in a schema.
                "--exclude-checks",
                "positive_data_acceptance",
                "--header",
                f"Authorization: Bearer {token}",
                # Revoking its own token or deactivating its own user would lock the run
                # out; tests/test_access.py covers both.
                "--exclude-method",
                "DELETE",
                "--exclude-method",
                "PATCH",
                # No worker runs here, so /readyz answers 503 by design (its shape is tested
                # in tests/test_stalled_work.py).
                "--exclude-path",
                "/readyz",
                "--max-examples",
                "40",
                "--generation-deterministic",
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=500,
        )
    finally:
        svc.stop_all()
    print(done.stdout[-3000:])
    assert done.returncode == 0, done.stdout[-6000:] + svc.logs()
    assert "500" not in re.findall(r"\[(\d{3})\]", done.stdout)


def test_the_enums_of_the_spec_and_the_cli_are_the_models():
    from api.openapi import BATCH, RESULT_ROW, spec
    from db.models import BatchState, Decision, ImageState, Role
    from leukoscreen.cli import build_parser

    def body(path: str, method: str) -> dict:
        op = spec()["paths"][path][method]
        return op["requestBody"]["content"]["application/json"]["schema"]["properties"]

    def query(path: str, name: str) -> list[str]:
        params = spec()["paths"][path]["get"]["parameters"]
        return next(p["schema"]["enum"] for p in params if p["name"] == name)

    assert body("/api/v1/images/{image_id}/reviews", "post")["decision"]["enum"] == list(Decision)
    assert body("/api/v1/users", "post")["role"]["enum"] == list(Role)
    assert body("/api/v1/users/{user_id}", "patch")["role"]["enum"] == list(Role)
    assert query("/api/v1/review/queue", "state") == [
        "unreviewed",
        *Decision,
        "false_negative",
        "all",
    ]
    assert BATCH["properties"]["state"]["enum"] == list(BatchState)
    assert list(BATCH["properties"]["counts"]["properties"]) == list(ImageState)
    assert RESULT_ROW["properties"]["state"]["enum"] == list(ImageState)
    for role in Role:
        args = build_parser("user").parse_args(["user", "add", "x", "--role", role.value])
        assert args.role == role
    with pytest.raises(SystemExit):
        build_parser("user").parse_args(["user", "add", "x", "--role", "superuser"])
