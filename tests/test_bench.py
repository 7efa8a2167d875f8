"""The benchmark must keep running; its figures are printed, never asserted as speeds."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

# It starts gunicorn and Celery workers against Redis.
pytestmark = [pytest.mark.e2e, pytest.mark.redis]


def test_bench_reports_every_figure_in_its_json(model_path, tmp_path, redis_url):
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "leukoscreen.cli",
            "bench",
            "--model",
            str(model_path),
            "--images",
            "40",
            "--thesis-images",
            "5",
            "--thesis-model",
            str(model_path),
            "--batch-sizes",
            "1,8",
            "--part-files",
            "20",
            "--priority-images",
            "100",
            "--priority-singles",
            "2",
            "--broker-url",
            redis_url,
            "--set",
            "LEUKOSCREEN_CHUNK_SIZE=16",
            "--json",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(out.read_text())
    for key in (
        "model_only_ips",
        "preprocess_ips",
        "end_to_end_ips",
        "thesis_ips",
        "thesis_network_ips",
        "ratio_e2e_to_thesis_network",
        "rss_mb",
        "preprocess_ips_with_quality",
        "model_ips_with_gate",
        "end_to_end_ips_no_gate",
        "gate_cost_e2e",
        "priority_lane",
        "priority_lane_off",
        "explain_gradcam_ms",
        "explain_ratio",
    ):
        assert key in figures, key
    assert figures["priority_lane"]["bulk_images"] == 100
    assert figures["images"] == 40
    assert set(figures["model_only_by_batch"]) == {"1", "8"}
    assert figures["rss_mb"]["after_start"] > 0
    assert figures["settings"]["overrides"] == ["LEUKOSCREEN_CHUNK_SIZE=16"]
    cpu = figures["cpu_ms_per_image"]
    assert set(cpu) == {"api", "worker", "postgresql", "redis", "upload_clients"}
    # The API parsed every upload and the worker scored every image: both spent CPU.
    assert cpu["api"] > 0 and cpu["worker"] > 0
    assert "CPU of worker" in done.stdout
    assert "gate: end-to-end cost" in done.stdout
    assert "heatmap / scoring" in done.stdout
    assert "end to end" in done.stdout and figures["machine"]["cores"] >= 1
    # Figures from different hosts compare only with the CPU's vector units and kernels named.
    assert isinstance(figures["machine"]["vector_extensions"], list)
    assert figures["machine"]["onednn"] == "1" and "oneDNN 1" in done.stdout
    # ... and the arithmetic the benchmarked worker resolved, which the model-only rows used.
    from model.card import read_card_data
    from model.precision import checked, resolve

    expected = resolve("auto", False, card_checked=checked(read_card_data(model_path)))
    assert figures["settings"]["precision"] == expected and f"network in {expected}" in done.stdout
