"""Worker heartbeats and what they say about the service: who consumes which queue, and
whether queued work is being taken at all.

The API cannot see Celery's processes (they may run on other hosts), so each pool process
records itself in ``worker_heartbeat`` every few seconds (``worker/heartbeat.py``). Everything
here takes times and limits as arguments: ``db/`` reads no settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from db.models import Image, ImageState, WorkerHeartbeat

# A process silent this long is forgotten: long enough for an operator to see which died.
FORGET_AFTER = timedelta(days=1)


@dataclass(frozen=True)
class Beat:
    """What one pool process says about itself."""

    node: str
    host: str
    pid: int
    queues: list[str]
    concurrency: int
    model_name: str | None
    model_version: str | None
    started_at: datetime
    last_task_at: datetime | None
    images_last_minute: int
    task_started_at: datetime | None = None  # the task in progress; None when idle


def record_beat(sessions: sessionmaker[Session], beat: Beat, now: datetime | None = None) -> None:
    """Insert or refresh this process's row, and forget processes silent for a day."""
    now = now or datetime.now(UTC)
    values: dict[str, Any] = {
        "node": beat.node,
        "queues": list(beat.queues),
        "concurrency": beat.concurrency,
        "model_name": beat.model_name,
        "model_version": beat.model_version,
        "started_at": beat.started_at,
        "last_beat_at": now,
        "last_task_at": beat.last_task_at,
        "images_last_minute": beat.images_last_minute,
        "task_started_at": beat.task_started_at,
    }
    with sessions.begin() as session:
        # Only this process writes its row (host, pid), so update-then-insert cannot race.
        changed = session.execute(
            update(WorkerHeartbeat)
            .where(WorkerHeartbeat.host == beat.host, WorkerHeartbeat.pid == beat.pid)
            .values(**values)
        )
        if not cast(CursorResult[Any], changed).rowcount:
            session.add(WorkerHeartbeat(host=beat.host, pid=beat.pid, **values))
        session.execute(
            delete(WorkerHeartbeat).where(WorkerHeartbeat.last_beat_at < now - FORGET_AFTER)
        )


def forget(sessions: sessionmaker[Session], host: str, pid: int) -> None:
    """A process that shuts down cleanly removes its row: it is gone, not stale."""
    with sessions.begin() as session:
        session.execute(
            delete(WorkerHeartbeat).where(WorkerHeartbeat.host == host, WorkerHeartbeat.pid == pid)
        )


@dataclass(frozen=True, kw_only=True)
class WorkerView(Beat):
    """A recorded process as readers see it: its beat, when it came, and whether it is stale."""

    last_beat_at: datetime
    stale: bool

    def as_dict(self, now: datetime) -> dict[str, Any]:
        return {
            "node": self.node,
            "host": self.host,
            "pid": self.pid,
            "queues": self.queues,
            "concurrency": self.concurrency,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "started_at": self.started_at.isoformat(),
            "last_beat_at": self.last_beat_at.isoformat(),
            "last_beat_age_s": round((now - self.last_beat_at).total_seconds(), 1),
            "last_task_at": self.last_task_at.isoformat() if self.last_task_at else None,
            "images_last_minute": self.images_last_minute,
            "task_started_at": self.task_started_at.isoformat() if self.task_started_at else None,
            "stale": self.stale,
        }


def list_workers(session: Session, now: datetime, stale_after_s: float) -> list[WorkerView]:
    """Every remembered process, live ones first, then by host and pid."""
    rows = session.scalars(select(WorkerHeartbeat)).all()
    horizon = now - timedelta(seconds=stale_after_s)
    views = [
        WorkerView(
            node=r.node,
            host=r.host,
            pid=r.pid,
            queues=list(r.queues or []),
            concurrency=r.concurrency,
            model_name=r.model_name,
            model_version=r.model_version,
            started_at=r.started_at,
            last_beat_at=r.last_beat_at,
            last_task_at=r.last_task_at,
            images_last_minute=r.images_last_minute,
            task_started_at=r.task_started_at,
            stale=r.last_beat_at < horizon,
        )
        for r in rows
    ]
    return sorted(views, key=lambda v: (v.stale, v.host, v.pid))


@dataclass
class QueuePresence:
    """Live processes consuming one queue, and when any of them last finished a task."""

    processes: int = 0
    busy: int = 0  # live processes running a task now
    last_beat_at: datetime | None = None
    last_task_at: datetime | None = None
    hosts: set[str] = field(default_factory=set)


def queue_presence(
    workers: Sequence[WorkerView], queues: Sequence[str]
) -> dict[str, QueuePresence]:
    presence = {q: QueuePresence() for q in queues}
    for w in workers:
        for q in w.queues:
            p = presence.setdefault(q, QueuePresence())
            if w.stale:
                # Only for "last seen": a stale process consumes nothing.
                p.last_beat_at = max(filter(None, (p.last_beat_at, w.last_beat_at)))
                continue
            p.processes += 1
            p.busy += w.task_started_at is not None
            p.hosts.add(w.host)
            p.last_beat_at = max(filter(None, (p.last_beat_at, w.last_beat_at)))
            # A process that never finished a task has been idle since it started.
            done = w.last_task_at or w.started_at
            p.last_task_at = max(filter(None, (p.last_task_at, done)))
    return presence


def oldest_age_s(session: Session, state: ImageState, now: datetime) -> float | None:
    """Seconds since the longest-waiting image in ``state`` last changed (index: state,
    updated_at), or None when there is none."""
    oldest = session.scalar(select(func.min(Image.updated_at)).where(Image.state == state.value))
    if oldest is None:
        return None
    return round(max(0.0, (now - oldest).total_seconds()), 1)


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{int(seconds)} seconds"
    if seconds < 5400:
        return f"{round(seconds / 60)} minutes"
    return f"{seconds / 3600:.1f} hours"


def stall_message(
    presence: dict[str, QueuePresence],
    queues: Sequence[str],
    now: datetime,
    stall_after_s: float,
    oldest_queued_age_s: float | None,
) -> str | None:
    """Why queued work on ``queues`` is not moving, in a sentence for a technician; None when
    a live worker consumes them and is working or took work within ``stall_after_s``.

    Call it only when there is pending work: idle workers with nothing to do are not stalled.
    Live workers are only called stalled once work has waited ``stall_after_s`` too: a worker
    idle for hours needs a moment (loading its model) to take a batch that just arrived.
    """
    live = [presence[q] for q in queues if q in presence and presence[q].processes]
    if not live:
        seen = [p.last_beat_at for q in queues if (p := presence.get(q)) and p.last_beat_at]
        last = f" (last seen {_ago((now - max(seen)).total_seconds())} ago)" if seen else ""
        return (
            f"No worker is taking images from queue {' or '.join(queues)}{last}: scoring is "
            "stalled until one starts. Tell the operator; nothing is lost meanwhile."
        )
    if any(p.busy for p in live) or (oldest_queued_age_s or 0) <= stall_after_s:
        return None
    last_task = max(p.last_task_at for p in live if p.last_task_at)
    idle = (now - last_task).total_seconds()
    if idle > stall_after_s:
        return (
            f"Workers are running but none has taken an image for {_ago(idle)}: scoring looks "
            "stalled. Tell the operator; nothing is lost meanwhile."
        )
    return None
