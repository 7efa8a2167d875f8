"""/metrics for Prometheus: protected, SQL-derived gauges that match the database, and the
intake counters. (tests/test_metrics.py is about the model's metrics, not these.)"""

from __future__ import annotations

import io
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from prometheus_client.parser import text_string_to_metric_families

from api import create_app
from db.session import engine_for, session_factory
from db.workers import Beat, record_beat
from tests.conftest import create_account, smear_like_jpeg, token_client
from tests.reviewdata import seed_scored

SCRAPER_TOKEN = "prometheus-scrapes-with-this-token-0123456789"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by name and sorted labels (the format is checked too)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
def metrics_app(db_settings):  # type: ignore[no-untyped-def]
    return create_app(replace(db_settings, metrics_token=SCRAPER_TOKEN))


def _scrape(app, token: str = SCRAPER_TOKEN):  # type: ignore[no-untyped-def]
    return app.test_client().get("/metrics", headers={"Authorization": f"Bearer {token}"})


def test_metrics_need_the_scraper_token_or_an_admin(metrics_app, db_settings):
    anonymous = metrics_app.test_client().get("/metrics")
    assert anonymous.status_code == 401 and anonymous.is_json
    assert _scrape(metrics_app, "not-the-token").status_code == 401
    uploader = create_account(db_settings.database_url, "lab", "uploader")
    assert _scrape(metrics_app, uploader).status_code == 403
    admin = create_account(db_settings.database_url, "boss", "admin", global_admin=True)
    assert _scrape(metrics_app, admin).status_code == 200
    ok = _scrape(metrics_app)
    assert ok.status_code == 200 and ok.content_type.startswith("text/plain; version=0.0.4")


def test_without_a_configured_token_only_admins_read_metrics(app, db_settings):
    # No LEUKOSCREEN_METRICS_TOKEN: an empty or guessed bearer must not match "".
    assert _scrape(app, "").status_code == 401
    assert _scrape(app, "x").status_code == 401
    assert (
        _scrape(
            app, create_account(db_settings.database_url, "boss", "admin", global_admin=True)
        ).status_code
        == 200
    )


def test_gauges_from_sql_match_the_database(metrics_app, db_settings):
    url = db_settings.database_url
    seed_scored(url, [0.9, 0.1, 0.2])  # one flagged, two cleared, nobody decided yet
    uploader = token_client(metrics_app, url)
    files = [(io.BytesIO(smear_like_jpeg(i)), f"q{i}.jpg") for i in range(4)]
    assert uploader.post("/api/v1/batches", data={"images": files}).status_code == 202
    now = datetime.now(UTC)
    record_beat(
        session_factory(engine_for(url)),
        Beat("cpu-1@lab", "lab", 1, ["cpu"], 1, "m", "v", now, now, 42),
    )

    got = samples(_scrape(metrics_app).get_data(as_text=True))
    assert got[("leukoscreen_images", (("state", "queued"),))] == 4
    assert got[("leukoscreen_images", (("state", "scored"),))] == 3
    assert got[("leukoscreen_images", (("state", "failed"),))] == 0
    assert got[("leukoscreen_oldest_image_age_seconds", (("state", "queued"),))] >= 0
    assert ("leukoscreen_oldest_image_age_seconds", (("state", "scoring"),)) not in got
    assert got[("leukoscreen_batches_in_progress", ())] >= 1
    assert got[("leukoscreen_results_last_hour", (("route", "flagged"),))] == 1
    assert got[("leukoscreen_results_last_hour", (("route", "cleared"),))] == 2
    assert got[("leukoscreen_route_share_last_hour", (("route", "flagged"),))] == pytest.approx(
        1 / 3
    )
    assert got[("leukoscreen_review_backlog_images", ())] == 1
    assert got[("leukoscreen_review_backlog_oldest_age_seconds", ())] >= 0
    assert got[("leukoscreen_worker_processes", (("queue", "cpu"),))] == 1
    assert got[("leukoscreen_worker_processes", (("queue", "reconcile"),))] == 0
    assert got[("leukoscreen_worker_images_last_minute", ())] == 42


def test_a_decision_takes_an_image_out_of_the_review_backlog(metrics_app, db_settings):
    url = db_settings.database_url
    _, ids = seed_scored(url, [0.9, 0.8])
    reviewer = token_client(metrics_app, url, "rita", "reviewer")
    assert (
        reviewer.post(f"/api/v1/images/{ids[0]}/reviews", json={"decision": "confirmed"})
    ).status_code == 201
    got = samples(_scrape(metrics_app).get_data(as_text=True))
    assert got[("leukoscreen_review_backlog_images", ())] == 1


def test_uploads_move_the_intake_counters(metrics_app, db_settings):
    def intake(got, name: str, **labels: str) -> float:  # type: ignore[no-untyped-def]
        return got.get((name, tuple(sorted(labels.items()))), 0.0)

    before = samples(_scrape(metrics_app).get_data(as_text=True))
    uploader = token_client(metrics_app, db_settings.database_url)
    files = [(io.BytesIO(smear_like_jpeg(i)), f"c{i}.jpg") for i in range(2)]
    files.append((io.BytesIO(b"not an image"), "notes.txt"))
    assert uploader.post("/api/v1/batches", data={"images": files}).status_code == 202
    nothing = [(io.BytesIO(b"still not an image"), "x.jpg")]
    assert uploader.post("/api/v1/batches", data={"images": nothing}).status_code == 422
    after = samples(_scrape(metrics_app).get_data(as_text=True))

    def moved(name: str, **labels: str) -> float:
        return intake(after, name, **labels) - intake(before, name, **labels)

    assert moved("leukoscreen_intake_requests_total", outcome="accepted") == 1
    assert moved("leukoscreen_intake_requests_total", outcome="unusable") == 1
    assert moved("leukoscreen_intake_files_total", status="accepted") == 2
    assert moved("leukoscreen_intake_files_total", status="rejected") == 2
    assert moved("leukoscreen_intake_bytes_total") > 0
    assert moved("leukoscreen_enqueued_images_total", queue="priority") == 2  # a small batch


def test_serve_gives_its_processes_one_emptied_metrics_folder(settings):
    from leukoscreen.serve import prepare_metrics_dir

    stale = settings.var_dir / "prometheus" / "counter_123.db"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"counts of a previous run")
    folder = prepare_metrics_dir(settings)
    assert folder == settings.var_dir / "prometheus"
    assert folder.is_dir() and list(folder.iterdir()) == []
