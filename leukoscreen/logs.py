"""Log lines of every process, as text for a terminal or one JSON object per line for a log
shipper (``LEUKOSCREEN_LOG_FORMAT=json``), carrying the request, batch and images they are
about so that one batch can be followed from the upload through the workers and the
reconciler.

The context travels in a ``ContextVar`` within a process (bound per request by the API and
per task by the worker) and in the Celery message's headers between processes
(``task_headers`` when enqueuing, ``bind_from_task`` when a task starts).
"""

from __future__ import annotations

import contextvars
import logging
import logging.config
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any

# The context fields a line may carry, in the order text lines show them.
FIELDS = ("request_id", "batch_id", "task_id", "image_ids")
# Message headers of a scoring task: prefixed, so they never meet Celery's own names.
HEADER_PREFIX = "leukoscreen_"
CARRIED = ("request_id", "batch_id")

Token = contextvars.Token[Mapping[str, Any]]

# Read-only mappings: every bind makes a new one, so a context never changes under a reader.
_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "leukoscreen_log_context", default=MappingProxyType({})
)


def current() -> dict[str, Any]:
    return dict(_context.get())


@contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """Add ``fields`` to every line logged in this block (None values are left out)."""
    token = bind(**fields)
    try:
        yield
    finally:
        _context.reset(token)


def bind(**fields: Any) -> Token:
    """``bound`` for code that cannot hold a block open (Flask's before/teardown hooks,
    Celery's prerun/postrun signals); hand the token to ``unbind``."""
    added = {k: v for k, v in fields.items() if v is not None}
    return _context.set(MappingProxyType({**_context.get(), **added}))


def unbind(token: Token) -> None:
    _context.reset(token)


def task_headers() -> dict[str, str]:
    """What a task enqueued now must carry for its worker's lines to name the same request
    and batch."""
    context = _context.get()
    return {HEADER_PREFIX + k: str(context[k]) for k in CARRIED if context.get(k) is not None}


def from_task_request(request: Any) -> dict[str, Any]:
    """The carried fields out of a Celery task request (custom headers become attributes)."""
    return {k: getattr(request, HEADER_PREFIX + k, None) for k in CARRIED}


# Beyond this many, a line names the first and last id instead (a 20,000-file zip upload).
MAX_LISTED_IDS = 256


def image_ids(ids: Sequence[int]) -> dict[str, Any]:
    """Log fields naming these images, bounded in size."""
    if len(ids) <= MAX_LISTED_IDS:
        return {"image_ids": list(ids)}
    return {"image_id_range": [min(ids), max(ids)], "images": len(ids)}


class ContextFilter(logging.Filter):
    """Puts the bound fields on every record, as attributes the formatters read."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class TextFormatter(logging.Formatter):
    """The terminal's format, with the bound fields appended as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = [
            f"{k}={getattr(record, k)}" for k in FIELDS if getattr(record, k, None) is not None
        ]
        return f"{line} [{' '.join(extra)}]" if extra else line


def dict_config(log_format: str, level: str = "INFO") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for the root logger (and gunicorn's, which propagate to
    it): one handler on stderr, the context filter, text or JSON."""
    if log_format == "json":
        formatter: dict[str, Any] = {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "{levelname}{name}{message}",
            "style": "{",
            "rename_fields": {"levelname": "level", "name": "logger"},
            # ISO 8601 in UTC, whatever the host's time zone.
            "timestamp": "time",
        }
    elif log_format == "text":
        formatter = {"()": "leukoscreen.logs.TextFormatter"}
    else:
        raise ValueError(f"LEUKOSCREEN_LOG_FORMAT must be text or json, not {log_format!r}")
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": "leukoscreen.logs.ContextFilter"}},
        "formatters": {"main": formatter},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "main",
                "filters": ["context"],
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": level, "handlers": ["stderr"]},
        # gunicorn's own lines (start, stop, worker timeouts) in the same format.
        "loggers": {
            name: {"handlers": [], "propagate": True}
            for name in ("gunicorn.error", "gunicorn.access")
        },
    }


def configure(log_format: str, level: str = "INFO") -> None:
    logging.config.dictConfig(dict_config(log_format, level))
    # Python warnings (Celery's running-as-root one, deprecations) as log lines too, rather
    # than raw text on stderr in the middle of a JSON log.
    logging.captureWarnings(True)
