"""Every setting LeukoScreen reads from the environment, in one place.

Defaults are chosen so that a laptop runs the whole service with no external server:
an SQLite database and Celery's filesystem transport under ``./var``. Production sets
``DATABASE_URL`` (PostgreSQL) and ``BROKER_URL`` (Redis).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
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


# Published in this repository: fine for development, refused in production.
DEV_SECRET_KEY = "dev-only-insecure-key"


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
    secret_key: str = DEV_SECRET_KEY
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
    # Reverse proxies in front of the API (nginx, a load balancer) whose X-Forwarded-For/
    # -Proto/-Host headers are trusted. 0 ignores those headers: a client could forge them.
    proxy_hops: int = 0
    # GPUs of a `--queue gpu` worker, one pool process pinned to each; 0 means "count them with
    # nvidia-smi" (the CLI fills in the count before the pool forks).
    gpu_count: int = 0

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
ENVIRONMENTS = ("development", "production")


class InsecureConfiguration(RuntimeError):
    """Settings a production service must not start with."""


def _env_flag(name: str) -> bool:
    return _env_str(name, "0").lower() in ("1", "true", "yes", "on")


def check_secret_key(settings: Settings) -> None:
    """Refuse a default, empty or short secret key in production.

    Anyone who knows the key can forge a session cookie for any user, and the default is
    published in this repository.
    """
    if settings.env not in ENVIRONMENTS:
        raise InsecureConfiguration(
            f"LEUKOSCREEN_ENV must be one of {', '.join(ENVIRONMENTS)}, not {settings.env!r}"
        )
    if settings.env != "production":
        return
    key = settings.secret_key or ""
    if key == DEV_SECRET_KEY or len(key.strip()) < MIN_SECRET_KEY_CHARS:
        raise InsecureConfiguration(
            "LEUKOSCREEN_ENV=production needs LEUKOSCREEN_SECRET_KEY set to a random value of at "
            f"least {MIN_SECRET_KEY_CHARS} characters (the default development key, an empty or "
            "a short key lets anyone forge sign-in sessions). Generate one with: "
            "python -c 'import secrets; print(secrets.token_urlsafe(48))'"
        )


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
        # Unset or empty means the development key, which production refuses.
        secret_key=_env_str("LEUKOSCREEN_SECRET_KEY", DEV_SECRET_KEY),
        admin_password=os.environ.get("LEUKOSCREEN_ADMIN_PASSWORD") or None,
        secure_cookies=_env_flag("LEUKOSCREEN_SECURE_COOKIES"),
        env=_env_str("LEUKOSCREEN_ENV", "development").strip().lower(),
        login_max_failures=_env_int("LEUKOSCREEN_LOGIN_MAX_FAILURES", 5),
        login_window_s=_env_int("LEUKOSCREEN_LOGIN_WINDOW_S", 900),
        strip_metadata=_env_flag("LEUKOSCREEN_STRIP_METADATA"),
        proxy_hops=_env_int("LEUKOSCREEN_PROXY_HOPS", 0),
        gpu_count=_env_int("LEUKOSCREEN_GPU_COUNT", 0),
    )
