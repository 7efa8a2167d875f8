"""Each pool process says it is alive: a daemon thread writes its row in ``worker_heartbeat``.

A thread in the pool process, not the Celery parent: the parent stays alive when every child
is stuck, and only the child knows how many images it scored and which model it loaded. One
UPDATE every ``heartbeat_every_s`` seconds per process is all it costs.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.orm import Session, sessionmaker

from db.workers import Beat, forget, record_beat

log = logging.getLogger(__name__)

WINDOW_S = 60.0


@dataclass
class Identity:
    """What the Celery parent knows (node name, queues, pool size), inherited by its children."""

    node: str = ""
    queues: list[str] = field(default_factory=list)
    concurrency: int = 1


class Heartbeat:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        identity: Identity,
        host: str,
        every_s: float,
        model_info: Callable[[], tuple[str, str] | None] = lambda: None,
    ) -> None:
        self.sessions, self.identity, self.host, self.every_s = sessions, identity, host, every_s
        self.model_info = model_info
        self.pid = os.getpid()
        self.started_at = datetime.now(UTC)
        self.last_task_at: datetime | None = None
        self.task_started_at: datetime | None = None
        self._done: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def task_started(self) -> None:
        """A task began: said at once (not at the next beat), so that a batch that wakes an
        idle worker never reads as stalled."""
        with self._lock:
            self.task_started_at = self.last_task_at = datetime.now(UTC)
        self._wake.set()

    def task_done(self, images: int) -> None:
        """A task finished (any outcome): it took work, and scored ``images``."""
        with self._lock:
            self.last_task_at = datetime.now(UTC)
            self.task_started_at = None
            if images:
                self._done.append((time.monotonic(), images))

    def images_last_minute(self) -> int:
        with self._lock:
            horizon = time.monotonic() - WINDOW_S
            while self._done and self._done[0][0] < horizon:
                self._done.popleft()
            return sum(n for _, n in self._done)

    def beat(self) -> None:
        model = self.model_info()
        record_beat(
            self.sessions,
            Beat(
                node=self.identity.node or f"pid-{self.pid}@{self.host}",
                host=self.host,
                pid=self.pid,
                queues=self.identity.queues,
                concurrency=self.identity.concurrency,
                model_name=model[0] if model else None,
                model_version=model[1] if model else None,
                started_at=self.started_at,
                last_task_at=self.last_task_at,
                images_last_minute=self.images_last_minute(),
                task_started_at=self.task_started_at,
            ),
        )

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.beat()
            except Exception as exc:  # a database outage must not kill the pool process
                log.warning("heartbeat not recorded: %s: %s", type(exc).__name__, exc)
            self._wake.wait(self.every_s)
            self._wake.clear()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            forget(self.sessions, self.host, self.pid)
        except Exception as exc:  # shutting down: the row goes stale instead
            log.warning("heartbeat row not removed: %s", exc)


# Set in the Celery parent (``worker_init``) and inherited by the pool processes it forks.
IDENTITY = Identity()
_current: Heartbeat | None = None


def current() -> Heartbeat | None:
    return _current


def start(heartbeat: Heartbeat) -> None:
    global _current
    _current = heartbeat
    heartbeat.start()


def stop() -> None:
    global _current
    if _current is not None:
        _current.stop()
        _current = None
