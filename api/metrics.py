"""``/metrics`` for Prometheus: the service's state from SQL and the processes' counters.

Never public: Prometheus sends ``Authorization: Bearer $LEUKOSCREEN_METRICS_TOKEN`` (checked in
``api/auth.py``), and an admin's API token or session works too. Gauges are computed from
SQL at scrape time (``db/operations.py``, ``db/workers.py``); counters and histograms come
from the processes (``leukoscreen/metrics.py``), added up over every gunicorn and Celery
process of this host through prometheus-client's multiprocess directory when
``PROMETHEUS_MULTIPROC_DIR`` is set.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

from flask import Blueprint, Response, g
from flask_login import current_user
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from api import context
from api.auth import is_global_admin
from api.errors import ApiError
from api.workers import known_workers, scoring_queues
from db.operations import ServiceState, service_state
from db.workers import WorkerView, queue_presence
from model.gate import Route
from worker.celery_app import RECONCILE_QUEUE

bp = Blueprint("metrics", __name__)
# The classic text format every Prometheus version reads; our names need none of the newer
# format's escaping (prometheus-client's CONTENT_TYPE_LATEST says 1.0.0 and older servers
# may not take it).
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"


def _gauge(name: str, doc: str, value: float | None, **labels: str) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=list(labels))
    if value is not None:
        family.add_metric(list(labels.values()), value)
    return family


class _FromSql:
    """A collector over one snapshot: every gauge of one scrape reads the same moment."""

    def __init__(self, state: ServiceState, workers: list[WorkerView]) -> None:
        self.state, self.workers = state, workers

    def collect(self) -> Iterator[Metric]:
        s = self.state
        images = GaugeMetricFamily(
            "leukoscreen_images", "Images by lifecycle state", labels=["state"]
        )
        for state, n in s.images_by_state.items():
            images.add_metric([state], n)
        yield images
        oldest = GaugeMetricFamily(
            "leukoscreen_oldest_image_age_seconds",
            "Age of the longest-waiting image in a pending state (absent when none)",
            labels=["state"],
        )
        for state, age in (("queued", s.oldest_queued_age_s), ("scoring", s.oldest_scoring_age_s)):
            if age is not None:
                oldest.add_metric([state], age)
        yield oldest
        yield _gauge(
            "leukoscreen_batches_in_progress",
            "Batches with images still queued or scoring",
            s.batches_in_progress,
        )
        recent = GaugeMetricFamily(
            "leukoscreen_results_last_hour", "Results written in the last hour", labels=["route"]
        )
        share = GaugeMetricFamily(
            "leukoscreen_route_share_last_hour",
            "Share of the last hour's results per route (flagged rate, manual-review rate)",
            labels=["route"],
        )
        for route in Route:
            recent.add_metric([route.value], s.recent_routes.get(route.value, 0))
            if (fraction := s.recent_share(route.value)) is not None:
                share.add_metric([route.value], fraction)
        yield recent
        yield share
        yield _gauge(
            "leukoscreen_review_backlog_images",
            "Images sent to a person (flagged or manual review) with no decision yet",
            s.review_backlog,
        )
        yield _gauge(
            "leukoscreen_review_backlog_oldest_age_seconds",
            "Age of the oldest undecided image sent to a person (absent when none)",
            s.review_backlog_oldest_age_s,
        )
        presence = queue_presence(self.workers, [*scoring_queues(), RECONCILE_QUEUE])
        live = GaugeMetricFamily(
            "leukoscreen_worker_processes",
            "Live worker pool processes per queue (from heartbeats)",
            labels=["queue"],
        )
        for queue, p in presence.items():
            live.add_metric([queue], p.processes)
        yield live
        yield _gauge(
            "leukoscreen_worker_processes_stale",
            "Worker processes whose heartbeat stopped (dead or hung) within the last day",
            sum(1 for w in self.workers if w.stale),
        )
        yield _gauge(
            "leukoscreen_worker_images_last_minute",
            "Images scored in the last minute, summed over live worker processes",
            sum(w.images_last_minute for w in self.workers if not w.stale),
        )


def exposition() -> bytes:
    now = datetime.now(UTC)
    with context.sessions()() as session:
        state = service_state(session, now)
        workers = known_workers(session, now)
    sql = CollectorRegistry(auto_describe=False)
    sql.register(_FromSql(state, workers))
    directory = context.settings().prometheus_multiproc_dir
    if directory:
        processes = CollectorRegistry()
        MultiProcessCollector(processes, path=directory)
        return generate_latest(sql) + generate_latest(processes)
    return generate_latest(sql) + generate_latest(REGISTRY)


@bp.get("/metrics")
def metrics() -> Response:
    # The figures span every laboratory (backlogs, routes): a global admin's, not a lab's.
    if not (g.get("metrics_scraper") or is_global_admin(current_user)):
        raise ApiError(403, "needs the metrics token or a global admin")
    return Response(exposition(), content_type=TEXT_FORMAT)
