"""Per-process worker state: settings, database, storage and the model, created after fork.

TensorFlow must never be initialised in the prefork parent (children would hang), so the
model is loaded lazily on the first task a child process runs, then kept for its lifetime.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property

from sqlalchemy.orm import Session, sessionmaker

from db.session import engine_for, session_factory
from leukoscreen.config import Settings, load_settings, resolve_secret_key
from leukoscreen.storage import Store, open_store
from model.inference import LoadedModel, load_model
from model.precision import for_model as precision_for_model
from worker.celery_app import app
from worker.dispatch import watch_outbox
from worker.scoring import register_model_version

log = logging.getLogger(__name__)


@dataclass
class WorkerRuntime:
    settings: Settings

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        sessions = session_factory(engine_for(self.settings.database_url))
        # A completed batch's webhook deliveries are enqueued once its transaction commits.
        watch_outbox(sessions, app)
        return sessions

    @cached_property
    def secret_key(self) -> str:
        """The server's key (configured, or the var folder's): webhook secrets are encrypted
        under it."""
        return resolve_secret_key(self.settings).secret_key

    @cached_property
    def store(self) -> Store:
        return open_store(self.settings)

    @cached_property
    def model(self) -> LoadedModel:
        on_gpu = configure_tensorflow(self.settings.tf_threads)
        path = self.settings.model_path
        precision = precision_for_model(self.settings.precision, path, on_gpu, self.settings.onednn)
        loaded = load_model(path, self.settings.batch_size, precision)
        log.info(
            "loaded model %s (%s) threshold %.4f, %s",
            loaded.card.name,
            loaded.sha256[:12],
            loaded.card.threshold,
            precision,
        )
        return loaded

    @cached_property
    def version_id(self) -> int:
        return register_model_version(self.sessions, self.model)

    @cached_property
    def decode_pool(self) -> ThreadPoolExecutor:
        # Pillow releases the GIL while decoding, so threads overlap decode with each other.
        return ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2))


def configure_tensorflow(threads: int = 0) -> bool:
    """Threads and GPU memory growth; whether this process sees a GPU."""
    import tensorflow as tf

    if threads > 0:
        # Several worker processes on one host each get a share of the cores instead of all
        # of them fighting over every core.
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)

    # A GPU worker shares its card with nobody else but should still not grab all memory up
    # front: growth keeps room for the CUDA context of a restarted child.
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError as exc:  # already initialised in this process
            log.warning("could not enable memory growth: %s", exc)
    return bool(gpus)


_settings: Settings | None = None
_runtime: WorkerRuntime | None = None


def use_settings(settings: Settings) -> None:
    """Settings for this worker and the pool processes it forks (``leukoscreen worker``)."""
    global _settings
    _settings = settings
    reset_runtime()


def worker_settings() -> Settings:
    global _settings
    if _settings is None:
        _settings = load_settings()
    return _settings


def runtime() -> WorkerRuntime:
    global _runtime
    if _runtime is None:
        _runtime = WorkerRuntime(worker_settings())
    return _runtime


def reset_runtime() -> None:
    global _runtime
    _runtime = None
