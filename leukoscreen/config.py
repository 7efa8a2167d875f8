"""Every setting LeukoScreen reads from the environment, in one place.

Defaults are chosen so that a laptop runs the whole service with no external server:
an SQLite database and Celery's filesystem transport under ``./var``. Production sets
``DATABASE_URL`` (PostgreSQL) and ``BROKER_URL`` (Redis).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

PACKAGED_MODEL = Path(__file__).resolve().parent.parent / "model" / "weights" / "lenet_lld.keras"


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw not in (None, "") else default


def _env_str(name: str, default: str) -> str:
    raw = os.environ.get(name)
    return raw if raw not in (None, "") else default


def _broker_url() -> str:
    for name in ("BROKER_URL", "REDIS_URL", "CELERY_BROKER_URL"):
        if os.environ.get(name):
            return os.environ[name]
    return "filesystem://"


# Published in this repository: anyone can sign a session cookie with it, so it is refused
# everywhere but in tests (LEUKOSCREEN_ENV=test).
DEV_SECRET_KEY = "dev-only-insecure-key"
# With no LEUKOSCREEN_SECRET_KEY, the key generated on first start, in the var folder (0600).
SECRET_KEY_FILE = "secret_key"


@dataclass(frozen=True)
class Settings:
    var_dir: Path
    database_url: str
    broker_url: str
    storage_dir: Path
    broker_dir: Path
    model_path: Path
    chunk_size: int
    batch_size: int
    max_file_bytes: int
    max_request_bytes: int
    max_image_pixels: int
    max_zip_entries: int
    max_zip_ratio: int
    stale_after_s: int
    max_attempts: int
    reconcile_every_s: int
    default_queue: str
    tf_threads: int
    hostname: str
    # Empty: generated on first start and kept in var_dir/secret_key (see resolve_secret_key).
    secret_key: str = ""
    # `leukoscreen serve` creates a first admin with this password when no user exists.
    admin_password: str | None = None
    # Browsers send the session cookie only over HTTPS when set (behind a TLS proxy).
    secure_cookies: bool = False
    # "production" refuses to start with a guessable secret key (see check_secret_key).
    env: str = "development"
    # Failed sign-ins allowed per user name and per client address within the window.
    login_max_failures: int = 5
    login_window_s: int = 900
    # Store originals without EXIF/XMP/ICC comments and PNG/TIFF text (names, dates, devices).
    strip_metadata: bool = False
    # Uncompressed bytes one zip archive may hold, and one request may unpack in all (plain
    # files and archive entries together), counted as they are read.
    max_archive_bytes: int = 1024 * 1024 * 1024
    max_unpacked_bytes: int = 2 * 1024 * 1024 * 1024
    # Reverse proxies in front of the API (nginx, a load balancer) whose X-Forwarded-For/
    # -Proto/-Host headers are trusted. 0 ignores those headers: a client could forge them.
    proxy_hops: int = 0
    # GPUs of a `--queue gpu` worker, one pool process pinned to each; 0 means "count them with
    # nvidia-smi" (the CLI fills in the count before the pool forks).
    gpu_count: int = 0
    # Outbound webhooks: seconds a receiver has to answer, and attempts (first send and
    # retries with exponential backoff) before a delivery is marked failed.
    webhook_timeout_s: int = 10
    webhook_max_attempts: int = 8
    # Days the stored pixels of an image are kept (results, decisions, sign-offs and the audit
    # trail stay for ever); 0 keeps the pixels for ever too.
    retain_images_days: int = 0
    # Every worker pool process records itself this often (``worker/heartbeat.py``); one
    # silent for ``worker_stale_s`` counts as gone. Queued work with no live worker, or with
    # workers that finished nothing for ``stall_after_s``, is shown as stalled.
    heartbeat_every_s: int = 10
    worker_stale_s: int = 60
    stall_after_s: int = 120
    # Bearer token that Prometheus sends to /metrics (an admin's API token works too); empty:
    # admins only. /metrics is never public.
    metrics_token: str = ""
    # Where gunicorn and Celery pool processes keep prometheus-client's per-process files;
    # empty: only this process's own metrics are exported.
    prometheus_multiproc_dir: str = ""
    # "text" (a terminal) or "json" (one object per line, for a log shipper).
    log_format: str = "text"
    # A new batch of at most this many accepted images (/single's one image, a small upload)
    # goes to the priority queue, which every scoring worker takes from first; 0: no lane.
    priority_max_images: int = 16
    # Originals in an S3-compatible bucket (s3://bucket/prefix) instead of under storage_dir,
    # for worker hosts without a shared volume; storage_dir then holds only the API's staging
    # files. Credentials are not read here: boto3 finds them by its standard chain
    # (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, an instance or pod role), which
    # keeps every source an operator may use. Empty endpoint: AWS itself.
    storage_url: str = ""
    s3_endpoint_url: str = ""
    s3_region: str = ""
    # The arithmetic of a worker's convolutions (``model.precision``): "auto" is bfloat16 on a
    # CPU with native bfloat16 (AVX-512 BF16, AMX), float32 elsewhere; or either, forced.
    precision: str = "auto"
    # TensorFlow's oneDNN kernels (TF_ENABLE_ONEDNN_OPTS, which the ``model`` package sets to
    # 1 unless the operator set it): bfloat16 is only chosen with them.
    onednn: bool = True

    @property
    def uses_filesystem_broker(self) -> bool:
        return self.broker_url.startswith("filesystem://")

    @property
    def broker_transport_options(self) -> dict[str, object]:
        if not self.uses_filesystem_broker:
            # Redis re-delivers unacknowledged tasks after this many seconds; it must exceed
            # the longest chunk so that a slow chunk is not handed to a second worker.
            visibility = _env_int("LEUKOSCREEN_VISIBILITY_TIMEOUT", 3600)
            return {
                "visibility_timeout": visibility,
                # Sweep for expired tasks every quarter timeout (kombu's default is 100 s).
                "unacked_restore_interval": max(1, min(60, visibility // 4)),
                "unacked_restore_throttle": 1,
                # A publish to a broker that vanished without closing the socket must fail
                # fast: the images are in SQL and the reconciler enqueues them later.
                "socket_timeout": 10,
                "socket_connect_timeout": 5,
                # BRPOP over a worker's queues in the order it consumes them (priority lane
                # first) instead of kombu's default round robin.
                "queue_order_strategy": "priority",
            }
        folder = str(self.broker_dir)
        return {
            "data_folder_in": folder,
            "data_folder_out": folder,
            "processed_folder": str(self.broker_dir / "processed"),
            # Otherwise kombu writes its broadcast bindings to ./control in whatever folder
            # the process was started from.
            "control_folder": str(self.broker_dir / "control"),
            "store_processed": False,
            # The filesystem transport polls; the default 1 s gap caps it at one chunk a second.
            "polling_interval": 0.1,
        }


MIN_SECRET_KEY_CHARS = 32
ENVIRONMENTS = ("development", "production", "test")


class InsecureConfiguration(RuntimeError):
    """Settings a production service must not start with."""


def _env_flag(name: str) -> bool:
    return _env_str(name, "0").lower() in ("1", "true", "yes", "on")


def check_secret_key(settings: Settings) -> None:
    """Refuse a known or weak secret key.

    Anyone who knows the key can forge a session cookie for any user. The development key is
    published in this repository: only LEUKOSCREEN_ENV=test may use it. Production needs a key
    of its own; elsewhere an unset key is generated once in the var folder.
    """
    if settings.env not in ENVIRONMENTS:
        raise InsecureConfiguration(
            f"LEUKOSCREEN_ENV must be one of {', '.join(ENVIRONMENTS)}, not {settings.env!r}"
        )
    key = settings.secret_key or ""
    if key == DEV_SECRET_KEY and settings.env != "test":
        raise InsecureConfiguration(
            "LEUKOSCREEN_SECRET_KEY is the development key published in LeukoScreen's source: "
            "anyone could forge sign-in sessions. Unset it (a random key is then generated in "
            f"the var folder) or set a random value of at least {MIN_SECRET_KEY_CHARS} "
            "characters."
        )
    if settings.env == "production" and len(key.strip()) < MIN_SECRET_KEY_CHARS:
        raise InsecureConfiguration(
            "LEUKOSCREEN_ENV=production needs LEUKOSCREEN_SECRET_KEY set to a random value of at "
            f"least {MIN_SECRET_KEY_CHARS} characters (the default development key, an empty or "
            "a short key lets anyone forge sign-in sessions). Generate one with: "
            "python -c 'import secrets; print(secrets.token_urlsafe(48))'"
        )


def resolve_secret_key(settings: Settings) -> Settings:
    """Settings with the key to sign sessions: the configured one, else the var folder's.

    With no key configured (development, embedded mode), a random key is generated on first
    start into ``var_dir/secret_key`` with owner-only permissions and read back by every
    process that starts later, so sessions survive restarts and every gunicorn worker agrees.
    """
    check_secret_key(settings)
    if settings.secret_key:
        return settings
    path = settings.var_dir / SECRET_KEY_FILE
    if not path.exists():
        settings.var_dir.mkdir(parents=True, exist_ok=True)
        # Written whole to a private temporary file, then linked into place: a process
        # starting at the same moment sees no key or the whole key, never half of one, and
        # link() keeps the first key if two processes generate one at once.
        fd, tmp = tempfile.mkstemp(prefix=".secret_key-", dir=settings.var_dir)  # mode 0600
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(48))
                fh.flush()
                os.fsync(fh.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    if path.stat().st_mode & 0o077:
        raise InsecureConfiguration(
            f"{path} can be read by other users: make it owner-only (chmod 600) or delete it "
            "to generate a new key (signing everyone out)"
        )
    key = path.read_text().strip()
    if len(key) < MIN_SECRET_KEY_CHARS:
        raise InsecureConfiguration(
            f"{path} holds a key shorter than {MIN_SECRET_KEY_CHARS} characters; delete it to "
            "generate a new one"
        )
    return replace(settings, secret_key=key)


def load_settings() -> Settings:
    var_dir = Path(_env_str("LEUKOSCREEN_VAR_DIR", "var")).resolve()
    database_url = _env_str("DATABASE_URL", f"sqlite:///{var_dir / 'leukoscreen.db'}")
    # Accept the URL form Heroku-style platforms hand out, and pick psycopg 3 explicitly.
    if database_url.startswith("postgres://"):
        database_url = "postgresql+psycopg://" + database_url[len("postgres://") :]
    elif database_url.startswith("postgresql://"):
        database_url = "postgresql+psycopg://" + database_url[len("postgresql://") :]
    return Settings(
        var_dir=var_dir,
        database_url=database_url,
        broker_url=_broker_url(),
        storage_dir=Path(_env_str("LEUKOSCREEN_STORAGE_DIR", str(var_dir / "images"))).resolve(),
        broker_dir=Path(_env_str("LEUKOSCREEN_BROKER_DIR", str(var_dir / "broker"))).resolve(),
        model_path=Path(_env_str("LEUKOSCREEN_MODEL_PATH", str(PACKAGED_MODEL))).resolve(),
        chunk_size=_env_int("LEUKOSCREEN_CHUNK_SIZE", 64),
        batch_size=_env_int("LEUKOSCREEN_BATCH_SIZE", 32),
        max_file_bytes=_env_int("LEUKOSCREEN_MAX_FILE_BYTES", 20 * 1024 * 1024),
        max_request_bytes=_env_int("LEUKOSCREEN_MAX_REQUEST_BYTES", 2 * 1024 * 1024 * 1024),
        max_image_pixels=_env_int("LEUKOSCREEN_MAX_IMAGE_PIXELS", 50_000_000),
        max_zip_entries=_env_int("LEUKOSCREEN_MAX_ZIP_ENTRIES", 20_000),
        max_zip_ratio=_env_int("LEUKOSCREEN_MAX_ZIP_RATIO", 200),
        stale_after_s=_env_int("LEUKOSCREEN_STALE_AFTER_S", 900),
        max_attempts=_env_int("LEUKOSCREEN_MAX_ATTEMPTS", 5),
        reconcile_every_s=_env_int("LEUKOSCREEN_RECONCILE_EVERY_S", 60),
        default_queue=_env_str("LEUKOSCREEN_QUEUE", "cpu"),
        tf_threads=_env_int("LEUKOSCREEN_TF_THREADS", 0),
        hostname=_env_str("LEUKOSCREEN_WORKER_HOSTNAME", socket.gethostname()),
        # Unset or empty: generated in the var folder (production refuses to start without one).
        secret_key=_env_str("LEUKOSCREEN_SECRET_KEY", ""),
        admin_password=os.environ.get("LEUKOSCREEN_ADMIN_PASSWORD") or None,
        secure_cookies=_env_flag("LEUKOSCREEN_SECURE_COOKIES"),
        env=_env_str("LEUKOSCREEN_ENV", "development").strip().lower(),
        login_max_failures=_env_int("LEUKOSCREEN_LOGIN_MAX_FAILURES", 5),
        login_window_s=_env_int("LEUKOSCREEN_LOGIN_WINDOW_S", 900),
        strip_metadata=_env_flag("LEUKOSCREEN_STRIP_METADATA"),
        proxy_hops=_env_int("LEUKOSCREEN_PROXY_HOPS", 0),
        gpu_count=_env_int("LEUKOSCREEN_GPU_COUNT", 0),
        heartbeat_every_s=_env_int("LEUKOSCREEN_HEARTBEAT_S", 10),
        worker_stale_s=_env_int("LEUKOSCREEN_WORKER_STALE_S", 60),
        stall_after_s=_env_int("LEUKOSCREEN_STALL_AFTER_S", 120),
        metrics_token=_env_str("LEUKOSCREEN_METRICS_TOKEN", ""),
        prometheus_multiproc_dir=_env_str("PROMETHEUS_MULTIPROC_DIR", ""),
        log_format=_env_str("LEUKOSCREEN_LOG_FORMAT", "text").strip().lower(),
        priority_max_images=_env_int("LEUKOSCREEN_PRIORITY_MAX_IMAGES", 16),
        storage_url=_env_str("LEUKOSCREEN_STORAGE", "").strip(),
        s3_endpoint_url=_env_str("LEUKOSCREEN_S3_ENDPOINT_URL", "").strip(),
        s3_region=_env_str("LEUKOSCREEN_S3_REGION", _env_str("AWS_DEFAULT_REGION", "")).strip(),
        max_archive_bytes=_env_int("LEUKOSCREEN_MAX_ARCHIVE_BYTES", 1024 * 1024 * 1024),
        max_unpacked_bytes=_env_int("LEUKOSCREEN_MAX_UNPACKED_BYTES", 2 * 1024 * 1024 * 1024),
        webhook_timeout_s=_env_int("LEUKOSCREEN_WEBHOOK_TIMEOUT_S", 10),
        webhook_max_attempts=_env_int("LEUKOSCREEN_WEBHOOK_MAX_ATTEMPTS", 8),
        retain_images_days=_env_int("LEUKOSCREEN_RETAIN_IMAGES_DAYS", 0),
        precision=_env_str("LEUKOSCREEN_PRECISION", "auto").strip().lower(),
        onednn=_env_str("TF_ENABLE_ONEDNN_OPTS", "1").strip() != "0",
    )
