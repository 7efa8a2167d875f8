"""The process-side Prometheus metrics: counters and histograms the API and workers update.

Counts that SQL already holds (images by state, ages, routes, review backlog) are read at
scrape time instead (``api/metrics.py``), so they are right however many processes run.

These are per process. Under gunicorn's workers and Celery's prefork pool, set
``PROMETHEUS_MULTIPROC_DIR`` (``leukoscreen serve`` does) before any of them starts:
prometheus-client then keeps each process's values in a file there, and ``/metrics`` adds
them up. It must be set before this module is imported, hence in the environment.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.multiprocess import MultiProcessCollector

# The *_created series say when a counter was created, per process: noise for an operator,
# and the multiprocess mode (gunicorn, Celery) has none, so one process alone has none either.
disable_created_metrics()

# Chunks take from tens of milliseconds (a few images on a GPU) to minutes (64 large images
# on a busy CPU host).
CHUNK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
PER_IMAGE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1)

INTAKE_REQUESTS = Counter(
    "leukoscreen_intake_requests",
    "Upload requests answered, by outcome (accepted: 202; unusable: 422, nothing recorded)",
    ["outcome"],
)
INTAKE_BYTES = Counter("leukoscreen_intake_bytes", "Bytes of upload request bodies received")
INTAKE_FILES = Counter(
    "leukoscreen_intake_files",
    "Files received in uploads, by status (accepted, rejected, duplicate)",
    ["status"],
)
ENQUEUED = Counter(
    "leukoscreen_enqueued_images", "Image ids sent to the broker, by queue", ["queue"]
)
CHUNK_SECONDS = Histogram(
    "leukoscreen_chunk_seconds",
    "Wall time of one scoring task: claim, decode, model, store",
    buckets=CHUNK_BUCKETS,
)
MODEL_SECONDS_PER_IMAGE = Histogram(
    "leukoscreen_model_seconds_per_image",
    "Seconds of the batched model call divided by the images in it",
    buckets=PER_IMAGE_BUCKETS,
)
IMAGES_SCORED = Counter("leukoscreen_images_scored", "Images scored by the workers")
IMAGES_FAILED = Counter(
    "leukoscreen_images_failed", "Images the workers could not score (undecodable, missing)"
)
RECONCILER = Counter(
    "leukoscreen_reconciler_images",
    "Images the reconciler acted on: requeued (from a lost worker), failed (attempts used "
    "up), enqueued (sent again, lost or never-sent messages included)",
    ["action"],
)


def serve_host_metrics(folder: str, port: int, addr: str) -> None:
    """This host's process metrics (every process writing to ``folder``) on
    ``http://addr:port/metrics``, from a thread of the calling process.

    For worker hosts that run no API: their Celery pool's counters are in their own folder,
    which the API's /metrics cannot read. Unauthenticated, so bind it to loopback or a
    private network only (``leukoscreen worker --metrics-port``).
    """
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=folder)
    start_http_server(port, addr=addr, registry=registry)
