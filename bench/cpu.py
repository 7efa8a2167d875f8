"""Where a benchmark's CPU time goes: the API, the worker, PostgreSQL, Redis.

On one host every part of the stack shares the same cores, so an end-to-end rate says little
about what to make cheaper until each part's CPU seconds per image are known. Times of
processes that ended during the run are counted through their parent (``children_*``), which
waited for them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import psutil

Finder = Callable[[], list[psutil.Process]]


def _seconds(procs: Iterable[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


def tree(pid: int) -> Finder:
    """A process and all its descendants (gunicorn and its workers, celery and its pool)."""

    def find() -> list[psutil.Process]:
        try:
            root = psutil.Process(pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    return find


def named(name: str) -> Finder:
    """Every process of that name whose parent is not one too (a server's root process), with
    all its descendants: PostgreSQL's postmaster and backends, redis-server."""

    def find() -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["name"]):
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                parent = proc.parent()
                if proc.info["name"] == name and (parent is None or parent.name() != name):
                    found += [proc, *proc.children(recursive=True)]
        return found

    return find


class CpuMeter:
    """CPU seconds per named part between ``start`` and ``stop``."""

    def __init__(self, parts: dict[str, Finder]) -> None:
        self.parts = parts
        self.before: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        return {name: _seconds(find()) for name, find in self.parts.items()}

    def start(self) -> None:
        self.before = self._now()

    def stop(self) -> dict[str, float]:
        after = self._now()
        return {name: after[name] - self.before[name] for name in self.parts}
