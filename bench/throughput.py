"""``leukoscreen bench``: how many images a worker host scores per second, measured four ways.

1. model only      batched inference on prepared tensors, per batch size
2. preprocessing   decode + resize + scale, one core
3. end to end      N images through the real API (gunicorn), broker, worker and database
4. thesis' way     one HTTP request and one ``model.predict`` per image, as the thesis' page
5. priority lane   one image's upload-to-result (p50/p95) while a large batch is scoring,
                   with the priority lane on and off
6. heatmaps        what a Grad-CAM heatmap and its PNG cost per image (``model.explain``),
                   beside scoring the same batch: workers make them after scoring, on a
                   queue of their own, so this is not a cost of the bulk path

and what the gate costs (``gate``): preprocessing with and without the quality measures, the
model with and without the gate's features and distance, and a second end-to-end run with a
copy of the weights that has no gate.

Figures are printed (and written as JSON with --json); nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import requests

import model as _tensorflow_settings  # noqa: F401  (set before any keras import below)
from bench.cpu import CpuMeter, named, tree
from bench.processes import ProcessGroup, free_port, project_env, wait_healthy
from leukoscreen.imagetypes import has_image_suffix
from model.precision import FLOAT32, cpu_flags


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", type=int, default=2000, help="end-to-end batch size (images)")
    p.add_argument("--folder", help="real images to use (default: generated 224px JPEGs)")
    p.add_argument("--model", help="weights file (default: the shipped model)")
    p.add_argument("--batch-sizes", default="1,8,16,32,64")
    p.add_argument("--thesis-images", type=int, default=200)
    p.add_argument(
        "--thesis-model",
        help="also time the thesis' way with this network (e.g. the thesis' own LeNet-LLD, "
        "model/weights/lenet_lld_thesis.keras); the main figure keeps the benchmarked network",
    )
    p.add_argument(
        "--database-url",
        default=os.environ.get(
            "BENCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
        ),
    )
    p.add_argument(
        "--broker-url", default=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/13")
    )
    p.add_argument("--worker-concurrency", type=int, default=1)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the benchmarked API and worker, e.g. LEUKOSCREEN_BATCH_SIZE=64 "
        "(repeatable; the stack otherwise runs on the defaults)",
    )
    p.add_argument("--uploaders", type=int, default=2, help="concurrent upload clients")
    p.add_argument("--part-files", type=int, default=250)
    p.add_argument(
        "--skip",
        default="",
        help="comma list of parts to skip: model,preprocess,e2e,thesis,gate,priority,explain",
    )
    p.add_argument(
        "--priority-images",
        type=int,
        default=5000,
        help="priority lane: size of the bulk batch scoring while single images are sent",
    )
    p.add_argument(
        "--priority-singles", type=int, default=20, help="priority lane: single images sent"
    )
    p.add_argument("--json", help="write the figures here as JSON")


# ---------------------------------------------------------------- inputs


def load_inputs(folder: str | None, n: int) -> list[tuple[str, bytes]]:
    if folder:
        files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and has_image_suffix(p))
        if not files:
            raise SystemExit(f"no images under {folder}")
        out = []
        for i in range(n):
            f = files[i % len(files)]
            data = f.read_bytes()
            if i >= len(files):  # cycle the folder but keep every upload unique
                data += f"bench-{i}".encode()
            out.append((f"{i:06d}_{f.name}", data))
        return out
    from bench.images import synthetic_smear_jpeg

    return [(f"{i:06d}.jpg", synthetic_smear_jpeg(i)) for i in range(n)]


# ---------------------------------------------------------------- parts


def bench_model(
    model_path: Path, batch_sizes: list[int], seconds: float = 4.0, precision: str = FLOAT32
) -> dict[int, float]:
    from model.inference import load_model

    figures: dict[int, float] = {}
    rng = np.random.default_rng(0)
    for bs in batch_sizes:
        model = load_model(model_path, batch_size=bs, precision=precision)
        width, height = model.card.input_size
        x = rng.integers(0, 256, (bs, height, width, 3), dtype=np.uint8)
        model.score(x)  # trace and warm up
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            model.score(x)
            n += bs
        figures[bs] = n / (time.perf_counter() - start)
    return figures


def bench_preprocess(
    blobs: list[bytes],
    size: tuple[int, int],
    seconds: float = 3.0,
    hue_band: tuple[int, int] | None = None,
) -> float:
    """Images per second on one core at the network's input ``size``; with ``hue_band``, also
    the quality measures."""
    from model.preprocess import prepare, preprocess

    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        if hue_band is None:
            preprocess(blobs[n % len(blobs)], size)
        else:
            prepare(blobs[n % len(blobs)], hue_band, size)
        n += 1
    return n / (time.perf_counter() - start)


def _ms_per_image(run: Any, images: int, seconds: float) -> float:
    n, start = 0, time.perf_counter()
    while n == 0 or time.perf_counter() - start < seconds:
        run()
        n += images
    return (time.perf_counter() - start) / n * 1000


def bench_explain(
    model_path: Path,
    blobs: list[bytes],
    batch_size: int = 32,
    seconds: float = 3.0,
    precision: str = FLOAT32,
) -> dict[str, float]:
    """A heatmap's cost per image in ms (Grad-CAM on a batch, then the PNG), and scoring the
    same batch, as the explain task and the scoring task run them."""
    from model.explain import overlay_png
    from model.inference import load_model
    from model.preprocess import prepare

    model = load_model(model_path, batch_size=batch_size, precision=precision)
    x = np.stack(
        [
            prepare(blobs[i % len(blobs)], None, model.card.input_size, with_quality=False).pixels
            for i in range(batch_size)
        ]
    )
    model.assess(x)  # trace and warm up both graphs
    maps = model.heatmaps(x)
    score_ms = _ms_per_image(lambda: model.assess(x), batch_size, seconds)
    gradcam_ms = _ms_per_image(lambda: model.heatmaps(x), batch_size, seconds)
    pngs: list[bytes] = []
    png_ms = _ms_per_image(lambda: pngs.extend(overlay_png(m) for m in maps), batch_size, seconds)
    return {
        "explain_batch": batch_size,
        "explain_score_ms": score_ms,
        "explain_gradcam_ms": gradcam_ms,
        "explain_png_ms": png_ms,
        "explain_png_bytes": float(np.mean([len(p) for p in pngs[:batch_size]])),
        "explain_ratio": (gradcam_ms + png_ms) / score_ms,
    }


def without_gate(model_path: Path, folder: Path) -> Path:
    """A copy of the weights whose card has no gate: the same network, nothing gated."""
    import shutil

    from model.card import read_card_data, write_card

    copy = folder / model_path.name
    shutil.copy(model_path, copy)
    card = read_card_data(model_path)
    if card is not None:  # without a card the copy has none either: no gate
        card.pop("gate", None)
        write_card(copy, card)
    return copy


def bench_gate(
    args: argparse.Namespace, model_path: Path, inputs: list[tuple[str, bytes]], figures: dict
) -> dict[str, Any]:
    from model.inference import load_model

    loaded = load_model(model_path, batch_size=32)
    gate, size = loaded.gate, loaded.card.input_size
    if gate is None:
        return {"gate": "the model has no gate"}
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        plain = without_gate(model_path, Path(tmp))
        blobs = [d for _, d in inputs[:200]]
        out["preprocess_ips_no_quality"] = bench_preprocess(blobs, size)
        out["preprocess_ips_with_quality"] = bench_preprocess(blobs, size, hue_band=gate.hue_band)
        precision = figures["settings"]["precision"]
        out["model_ips_no_gate"] = bench_model(plain, [32], precision=precision)[32]
        out["model_ips_with_gate"] = bench_model(model_path, [32], precision=precision)[32]
        if "e2e" not in set(filter(None, args.skip.split(","))) and "end_to_end_ips" in figures:
            plain_e2e = bench_end_to_end(args, plain, inputs)
            out["end_to_end_ips_no_gate"] = plain_e2e["end_to_end_ips"]
            out["gate_cost_e2e"] = 1 - figures["end_to_end_ips"] / plain_e2e["end_to_end_ips"]
    return out


def bench_thesis(model_path: Path, inputs: list[tuple[str, bytes]]) -> float:
    """The thesis' page: a Flask route that runs ``model.predict`` on the one uploaded image."""
    import keras
    from flask import Flask, jsonify, request
    from werkzeug.serving import make_server

    from model.card import read_card, to_p_leukemia
    from model.preprocess import preprocess

    network = keras.saving.load_model(model_path, compile=False)
    card = read_card(model_path)
    app = Flask("thesis")

    @app.post("/predict")
    def predict():
        x = preprocess(request.files["file"].read(), card.input_size)[None]
        p = float(to_p_leukemia(network.predict(x, verbose=0), card.output)[0])
        return jsonify(result="leukemia" if p >= 0.5 else "normal", confidence=p)

    server = make_server("127.0.0.1", 0, app, threaded=False)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}/predict"
    http = requests.Session()
    http.post(url, files={"file": inputs[0]}).raise_for_status()  # warm up
    start = time.perf_counter()
    for name, data in inputs:
        http.post(url, files={"file": (name, data)}).raise_for_status()
    elapsed = time.perf_counter() - start
    server.shutdown()
    return len(inputs) / elapsed


def _rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants."""
    total = 0
    for proc in tree(pid)():
        with contextlib.suppress(psutil.NoSuchProcess):
            total += proc.memory_info().rss
    return total / 2**20


def _pending(database_url: str, batch_ids: list[str]) -> int:
    from sqlalchemy import func, select

    from db.models import Image
    from db.session import engine_for

    # Polled every 0.1 s: one pooled engine, not a new connection per poll.
    with engine_for(database_url).connect() as conn:
        n = conn.scalar(
            select(func.count())
            .select_from(Image)
            .where(Image.batch_id.in_(batch_ids), Image.state.in_(("queued", "scoring")))
        )
    return int(n or 0)


def _latencies(database_url: str, batch_ids: list[str]) -> list[float]:
    from sqlalchemy import select

    from db.models import Image, Result
    from db.session import engine_for

    with engine_for(database_url).connect() as conn:
        rows = conn.execute(
            select(Image.created_at, Result.scored_at)
            .join(Result, Result.image_id == Image.id)
            .where(Image.batch_id.in_(batch_ids))
        ).all()
    return [(scored - created).total_seconds() for created, scored in rows]


def _bench_token(database_url: str) -> str:
    """An uploader account and API token in the benchmark's throw-away schema."""
    import secrets

    from db.accounts import create_token, create_user
    from db.session import engine_for, session_factory

    with session_factory(engine_for(database_url)).begin() as session:
        user = create_user(session, "bench", "uploader", secrets.token_urlsafe(16))
        _, token = create_token(session, user, None, "bench")
    return token


def _wait_done(
    database_url: str,
    batch_ids: list[str],
    worker: subprocess.Popen,
    workdir: Path,
    stall_s: float = 120,
) -> None:
    """Until every image is scored; fail loudly if the worker dies or nothing moves."""
    last, since = -1, time.monotonic()
    while (pending := _pending(database_url, batch_ids)) > 0:
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited; see {workdir}/worker.log")
        if pending != last:
            last, since = pending, time.monotonic()
        elif time.monotonic() - since > stall_s:
            raise RuntimeError(f"no progress for {stall_s:.0f} s; see {workdir}/worker.log")
        time.sleep(0.1)


def _upload(base: str, parts: list[list[tuple[str, bytes]]], headers: dict[str, str]) -> list[str]:
    http = requests.Session()
    ids = []
    for part in parts:
        r = http.post(
            f"{base}/api/v1/batches",
            headers=headers,
            files=[("images", (n, d, "image/jpeg")) for n, d in part],
            timeout=600,
        )
        r.raise_for_status()
        ids.append(r.json()["batch_id"])
    return ids


@dataclass
class Stack:
    base: str
    database_url: str
    headers: dict[str, str]
    api: subprocess.Popen
    worker: subprocess.Popen
    workdir: Path


@contextmanager
def running_stack(args: argparse.Namespace, model_path: Path, **settings: str) -> Iterator[Stack]:
    """gunicorn + one warmed worker on a throw-away PostgreSQL schema and the Redis broker."""
    import redis
    from sqlalchemy import create_engine, text

    from db import migrate
    from db.session import engine_for

    schema = f"bench_{os.getpid()}_{int(time.time() * 1000) % 100000}"
    admin = create_engine(args.database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    database_url = f"{args.database_url}?options=-csearch_path%3D{schema}"
    redis.Redis.from_url(args.broker_url).flushdb()
    workdir = Path(tempfile.mkdtemp(prefix="leukoscreen-bench-"))
    env = project_env(
        DATABASE_URL=database_url,
        BROKER_URL=args.broker_url,
        LEUKOSCREEN_VAR_DIR=str(workdir),
        LEUKOSCREEN_MODEL_PATH=str(model_path),
        **dict(item.split("=", 1) for item in args.set),
        **settings,
    )
    migrate.upgrade(database_url)
    procs = ProcessGroup(env, workdir)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {_bench_token(database_url)}"}
    try:
        api = procs.start("api", "--port", str(port), "--workers", "2", name="api")
        worker = procs.start("worker", "--concurrency", str(args.worker_concurrency), name="worker")
        if not wait_healthy(base, timeout=120):
            raise RuntimeError(f"API did not start; logs in {workdir}")
        yield Stack(base, database_url, headers, api, worker, workdir)
    finally:
        procs.stop_all()
        engine_for(database_url).dispose()
        with admin.connect() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def _warm(stack: Stack, inputs: list[tuple[str, bytes]]) -> None:
    """Model loaded and graph traced, as in a running service."""
    warm_ids = _upload(stack.base, [inputs[:64]], stack.headers)
    _wait_done(stack.database_url, warm_ids, stack.worker, stack.workdir)


def bench_end_to_end(
    args: argparse.Namespace, model_path: Path, inputs: list[tuple[str, bytes]]
) -> dict[str, Any]:
    with running_stack(args, model_path) as stack:
        _warm(stack, inputs)
        rss_start = _rss_mb(stack.worker.pid)

        parts = [inputs[i : i + args.part_files] for i in range(0, len(inputs), args.part_files)]
        per_client = [parts[i :: args.uploaders] for i in range(args.uploaders)]
        batch_ids: list[str] = []
        client_cpu: list[float] = []
        lock = threading.Lock()

        def client(my_parts: list[list[tuple[str, bytes]]]) -> None:
            cpu = time.thread_time()
            ids = _upload(stack.base, my_parts, stack.headers)
            with lock:
                batch_ids.extend(ids)
                client_cpu.append(time.thread_time() - cpu)

        meter = CpuMeter(
            {
                "api": tree(stack.api.pid),
                "worker": tree(stack.worker.pid),
                "postgresql": named("postgres"),
                "redis": named("redis-server"),
            }
        )
        meter.start()
        start = time.perf_counter()
        threads = [threading.Thread(target=client, args=(p,)) for p in per_client if p]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        upload_s = time.perf_counter() - start
        _wait_done(stack.database_url, batch_ids, stack.worker, stack.workdir)
        elapsed = time.perf_counter() - start
        cpu = {**meter.stop(), "upload_clients": sum(client_cpu)}
        rss_end = _rss_mb(stack.worker.pid)
        lat = sorted(_latencies(stack.database_url, batch_ids))
        return {
            "images": len(inputs),
            "seconds": round(elapsed, 2),
            "end_to_end_ips": len(inputs) / elapsed,
            "intake_ips": len(inputs) / upload_s,
            "latency_p50_s": statistics.median(lat),
            "latency_p95_s": _p95(lat),
            # Milliseconds of CPU per image, each part of the stack on the same cores.
            "cpu_ms_per_image": {k: round(1000 * v / len(inputs), 3) for k, v in cpu.items()},
            "rss_mb": {
                "after_start": round(rss_start, 1),
                "after_run": round(rss_end, 1),
                "growth_pct": round(100 * (rss_end - rss_start) / rss_start, 2),
            },
        }


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[int(0.95 * (len(ordered) - 1))]


def _single_to_result(stack: Stack, name: str, data: bytes, http: requests.Session) -> float:
    """Seconds from sending one image (as /single does) to its result, polled every 50 ms."""
    start = time.perf_counter()
    sent = http.post(
        f"{stack.base}/api/v1/batches",
        headers=stack.headers,
        files=[("images", (name, data, "image/jpeg"))],
        timeout=60,
    )
    sent.raise_for_status()
    url = f"{stack.base}/api/v1/batches/{sent.json()['batch_id']}"
    while http.get(url, headers=stack.headers, timeout=30).json()["pending"]:
        if time.perf_counter() - start > 600:
            raise RuntimeError(f"a single image took over 10 minutes; see {stack.workdir}")
        time.sleep(0.05)
    return time.perf_counter() - start


def bench_priority_lane(args: argparse.Namespace, model_path: Path, lane: bool) -> dict[str, Any]:
    """p50/p95 of one image's upload-to-result while a large batch is scoring, with the
    priority lane (LEUKOSCREEN_PRIORITY_MAX_IMAGES) on or off."""
    bulk = load_inputs(args.folder, args.priority_images)
    singles = [
        (f"single_{i}.jpg", data + f"single-{i}".encode())
        for i, (_, data) in enumerate(load_inputs(args.folder, args.priority_singles))
    ]
    limit = "16" if lane else "0"
    with running_stack(args, model_path, LEUKOSCREEN_PRIORITY_MAX_IMAGES=limit) as stack:
        _warm(stack, [(f"warm_{n}", d + b"warm") for n, d in bulk[:64]])
        parts = [bulk[i : i + args.part_files] for i in range(0, len(bulk), args.part_files)]
        # The whole bulk batch is queued before the first single image is sent.
        batch_ids = _upload(stack.base, parts, stack.headers)
        pending_at_start = _pending(stack.database_url, batch_ids)
        http = requests.Session()
        seconds = []
        for name, data in singles:
            if _pending(stack.database_url, batch_ids) == 0:
                break  # the bulk batch finished: later singles would measure an idle worker
            seconds.append(_single_to_result(stack, name, data, http))
            time.sleep(0.5)
        still_pending = _pending(stack.database_url, batch_ids)
        _wait_done(stack.database_url, batch_ids, stack.worker, stack.workdir)
    return {
        "bulk_images": len(bulk),
        "bulk_pending_at_first_single": pending_at_start,
        "bulk_pending_after_last_single": still_pending,
        "singles": len(seconds),
        "single_p50_s": statistics.median(seconds) if seconds else None,
        "single_p95_s": _p95(seconds) if seconds else None,
        "single_max_s": max(seconds) if seconds else None,
    }


# ---------------------------------------------------------------- report


def machine() -> dict[str, Any]:
    import celery
    import keras
    import PIL
    import sqlalchemy
    import tensorflow as tf

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    flags = cpu_flags()
    return {
        "cpu": cpu,
        # The network's speed depends on these more than on the model name: TensorFlow's
        # oneDNN kernels use AVX-512 where present (docs/performance.md).
        "vector_extensions": sorted(f for f in flags if f.startswith(("avx", "amx"))),
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "TensorFlow's default"),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "celery": celery.__version__,
        "sqlalchemy": sqlalchemy.__version__,
    }


def worker_precision(overrides: list[str], model_path: Path, onednn: bool) -> str:
    """The precision the benchmark's worker resolves: its environment holds only ``--set``'s
    LeukoScreen settings (``bench.processes.project_env``), so "auto" unless set there; it
    inherits TF_ENABLE_ONEDNN_OPTS (``onednn``) from this process."""
    import tensorflow as tf

    from model.precision import for_model

    setting = dict(item.split("=", 1) for item in overrides).get("LEUKOSCREEN_PRECISION", "auto")
    gpu = bool(tf.config.list_physical_devices("GPU"))
    return for_model(setting.strip().lower(), model_path, gpu, onednn)


def run(args: argparse.Namespace) -> int:
    from leukoscreen.config import load_settings

    settings = load_settings()
    model_path = Path(args.model) if args.model else settings.model_path
    if not model_path.is_file():
        raise SystemExit(f"no model weights at {model_path} (give --model)")
    skip = set(filter(None, args.skip.split(",")))
    inputs = load_inputs(args.folder, args.images)
    precision = worker_precision(args.set, model_path, settings.onednn)
    figures: dict[str, Any] = {
        "machine": machine(),
        "settings": {
            "images": args.images,
            "chunk_size": settings.chunk_size,
            "batch_size": settings.batch_size,
            "worker_concurrency": args.worker_concurrency,
            # The benchmarked worker's (``model.precision``), and the model-only figures'.
            "precision": precision,
            "overrides": args.set,
            "uploaders": args.uploaders,
            "model": str(model_path),
            "inputs": args.folder or "generated 224x224 JPEG",
        },
    }
    if "model" not in skip:
        per_bs = bench_model(
            model_path, [int(b) for b in args.batch_sizes.split(",")], precision=precision
        )
        figures["model_only_by_batch"] = {str(k): round(v, 1) for k, v in per_bs.items()}
        figures["model_only_ips"] = max(per_bs.values())
    if "preprocess" not in skip:
        from model.card import read_card

        figures["preprocess_ips"] = bench_preprocess(
            [d for _, d in inputs[:200]], read_card(model_path).input_size
        )
    if "thesis" not in skip:
        figures["thesis_ips"] = bench_thesis(model_path, inputs[: args.thesis_images])
        if args.thesis_model:
            figures["thesis_network_ips"] = bench_thesis(
                Path(args.thesis_model), inputs[: args.thesis_images]
            )
    if "e2e" not in skip:
        e2e = bench_end_to_end(args, model_path, inputs)
        figures.update(e2e)
    if "gate" not in skip:
        figures.update(bench_gate(args, model_path, inputs, figures))
    if "priority" not in skip:
        figures["priority_lane"] = bench_priority_lane(args, model_path, lane=True)
        figures["priority_lane_off"] = bench_priority_lane(args, model_path, lane=False)
    if "explain" not in skip:
        figures.update(bench_explain(model_path, [d for _, d in inputs[:200]], precision=precision))
    if "end_to_end_ips" in figures and "model_only_ips" in figures:
        figures["ratio_e2e_to_model"] = figures["end_to_end_ips"] / figures["model_only_ips"]
    if "end_to_end_ips" in figures and "thesis_ips" in figures:
        figures["ratio_e2e_to_thesis"] = figures["end_to_end_ips"] / figures["thesis_ips"]
    if "end_to_end_ips" in figures and "thesis_network_ips" in figures:
        figures["ratio_e2e_to_thesis_network"] = (
            figures["end_to_end_ips"] / figures["thesis_network_ips"]
        )
    print_table(figures)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, default=float))
    return 0


def print_table(f: dict[str, Any]) -> None:
    m = f["machine"]
    wide = any(flag.startswith("avx512") for flag in m.get("vector_extensions", []))
    avx512 = "AVX-512" if wide else "no AVX-512"
    print(
        f"\nLeukoScreen throughput  ({m['cpu']}, {m['cores']} cores, {avx512}, "
        f"TF {m['tensorflow']}, oneDNN {m.get('onednn', '?')}, "
        f"network in {f.get('settings', {}).get('precision', FLOAT32)})"
    )
    rows = []
    for bs, ips in f.get("model_only_by_batch", {}).items():
        rows.append((f"model only, batch {bs}", f"{ips:8.1f} img/s"))
    for key, label in (
        ("preprocess_ips", "preprocessing (1 core)"),
        ("end_to_end_ips", "end to end (API+Redis+worker+PostgreSQL)"),
        ("intake_ips", "intake (upload accepted)"),
        ("thesis_ips", "thesis' way (HTTP + predict per image)"),
        ("thesis_network_ips", "thesis' way with --thesis-model"),
        ("preprocess_ips_no_quality", "gate: preprocessing without quality measures"),
        ("preprocess_ips_with_quality", "gate: preprocessing with quality measures"),
        ("model_ips_no_gate", "gate: model, batch 32, without gate features"),
        ("model_ips_with_gate", "gate: model, batch 32, with features + distance"),
        ("end_to_end_ips_no_gate", "gate: end to end with an ungated copy of the weights"),
    ):
        if key in f:
            rows.append((label, f"{f[key]:8.1f} img/s"))
    for key, label in (
        ("latency_p50_s", "upload-to-result latency p50"),
        ("latency_p95_s", "upload-to-result latency p95"),
    ):
        if key in f:
            rows.append((label, f"{f[key]:8.2f} s"))
    for key, label in (
        ("ratio_e2e_to_model", "end to end / model only"),
        ("ratio_e2e_to_thesis", "end to end / thesis"),
        ("ratio_e2e_to_thesis_network", "end to end / thesis' way with --thesis-model"),
    ):
        if key in f:
            rows.append((label, f"{f[key]:8.2f} x"))
    if "explain_gradcam_ms" in f:
        batch = f["explain_batch"]
        for key, label in (
            ("explain_score_ms", f"heatmap: scoring the same batch of {batch}"),
            ("explain_gradcam_ms", f"heatmap: Grad-CAM, batch of {batch}"),
            ("explain_png_ms", "heatmap: PNG overlay"),
        ):
            rows.append((label, f"{f[key]:8.2f} ms/img"))
        rows.append(
            (
                "heatmap / scoring (own queue, after scoring)",
                f"{f['explain_ratio']:8.2f} x ({f['explain_png_bytes'] / 1024:.1f} KB PNG)",
            )
        )
    if "gate_cost_e2e" in f:
        rows.append(("gate: end-to-end cost", f"{f['gate_cost_e2e']:8.1%}"))
    for key, label in (("priority_lane", "lane on"), ("priority_lane_off", "lane off")):
        if (lane := f.get(key)) and lane["singles"]:
            rows.append(
                (
                    f"/single to result during a {lane['bulk_images']}-image batch, {label}",
                    f"p50 {lane['single_p50_s']:.2f} s, p95 {lane['single_p95_s']:.2f} s "
                    f"({lane['singles']} images)",
                )
            )
    for part, ms in f.get("cpu_ms_per_image", {}).items():
        rows.append((f"end to end: CPU of {part.replace('_', ' ')}", f"{ms:8.2f} ms/img"))
    if "rss_mb" in f:
        r = f["rss_mb"]
        rows.append(
            (
                "worker RSS start -> end",
                f"{r['after_start']} -> {r['after_run']} MB ({r['growth_pct']:+.2f}%)",
            )
        )
    width = max(len(r[0]) for r in rows)
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
