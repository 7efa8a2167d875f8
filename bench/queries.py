"""``leukoscreen bench-queries``: the read paths people wait on, timed at a million results.

Seeds a throw-away PostgreSQL schema with N images and results (spread over batches of
2,000), then times the batch-progress and results-page queries the API runs and prints their
plans, so anyone can see that they use indexes. Printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from db import migrate
from db.progress import batch_images, batch_progress, iter_batch_results
from db.reviews import QueueFilter, review_queue

BATCH = 2000


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--repeat", type=int, default=200)
    p.add_argument(
        "--database-url",
        default=os.environ.get(
            "BENCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
        ),
    )
    p.add_argument("--keep", action="store_true", help="keep the seeded schema")


SEED_SQL = [
    """INSERT INTO model_version (sha256, name, threshold, metrics, created_at)
       VALUES (repeat('b', 64), 'bench', 0.5, '{}', now())""",
    """INSERT INTO batch (id, name, submitted_by, created_at, state)
       SELECT 'b' || lpad(g::text, 35, '0'), 'batch ' || g, 'bench',
              now() - (g || ' minutes')::interval, 'complete'
       FROM generate_series(1, :batches) g""",
    """INSERT INTO image (batch_id, sha256, original_name, storage_key, size_bytes, width,
                          height, format, state, attempts, created_at, updated_at)
       SELECT 'b' || lpad((1 + (g - 1) / :per_batch)::text, 35, '0'), md5(g::text) || md5(g::text),
              'img_' || g || '.jpg', md5(g::text) || md5(g::text), 20000, 224, 224, 'JPEG',
              'scored', 1, now(), now()
       FROM generate_series(1, :rows) g""",
    """INSERT INTO result (image_id, batch_id, model_version_id, p_leukemia, flagged, threshold,
                           route, scored_at, worker)
       SELECT id, batch_id, 1, p, p >= 0.5, 0.5,
              CASE WHEN p >= 0.5 THEN 'flagged' ELSE 'cleared' END, now(), 'bench'
       FROM (SELECT id, batch_id, random() AS p FROM image) scored""",
    "ANALYZE",
]


def _timed(fn: Callable[[], Any], repeat: int) -> dict[str, float]:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return {"p50_ms": statistics.median(samples), "p95_ms": samples[int(0.95 * (repeat - 1))]}


def run(args: argparse.Namespace) -> int:
    schema = f"benchq_{os.getpid()}"
    admin = create_engine(args.database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    url = f"{args.database_url}?options=-csearch_path%3D{schema}"
    try:
        migrate.upgrade(url)
        engine = create_engine(url)
        batches = max(1, args.rows // BATCH)
        start = time.perf_counter()
        with engine.begin() as conn:
            for sql in SEED_SQL:
                conn.execute(text(sql), {"batches": batches, "rows": args.rows, "per_batch": BATCH})
        print(
            f"seeded {args.rows} images and results in {batches} batches "
            f"({time.perf_counter() - start:.1f} s)"
        )
        sessions = sessionmaker(bind=engine)
        ids = [f"b{n:035d}" for n in range(1, batches + 1)]
        rng = random.Random(0)

        def progress() -> None:
            with sessions() as s:
                batch_progress(s, rng.choice(ids))

        def results_page() -> None:
            with sessions() as s:
                list(iter_batch_results(s, rng.choice(ids), after_id=0, limit=100))

        def batch_list_page() -> None:
            # The batch page's list, flagged first: each page ranks the batch's 2,000 rows.
            with sessions() as s:
                batch_images(s, rng.choice(ids), None, 50)

        def batch_list_deep_page() -> None:
            with sessions() as s:
                batch_images(s, rng.choice(ids), (3, 10**12), 50)

        def queue_first_page() -> None:
            with sessions() as s:
                review_queue(s, QueueFilter(), None, 50)

        def queue_deep_page() -> None:
            # A page deep in the queue (cursor at a random score): keyset pagination must
            # cost what page one costs.
            with sessions() as s:
                review_queue(s, QueueFilter(), (rng.uniform(0.5, 1.0), 10**12), 50)

        def queue_one_batch() -> None:
            with sessions() as s:
                review_queue(s, QueueFilter(batch_id=rng.choice(ids)), None, 50)

        for name, fn in (
            ("batch progress", progress),
            ("results page (100 rows)", results_page),
            ("batch image list, page 1", batch_list_page),
            ("batch image list, deep", batch_list_deep_page),
            ("review queue, first page", queue_first_page),
            ("review queue, deep page", queue_deep_page),
            ("review queue, one batch", queue_one_batch),
        ):
            fn()
            t = _timed(fn, args.repeat)
            print(f"  {name:<26} p50 {t['p50_ms']:6.2f} ms   p95 {t['p95_ms']:6.2f} ms")
        with Session(engine) as s:
            plan = (
                s.execute(
                    text(
                        "EXPLAIN SELECT state, count(*) FROM image"
                        " WHERE batch_id = :b GROUP BY state"
                    ),
                    {"b": ids[0]},
                )
                .scalars()
                .all()
            )
        print("plan (batch progress):\n    " + "\n    ".join(plan))
        engine.dispose()
    finally:
        if not args.keep:
            with admin.connect() as conn:
                conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
