"""The benchmark's CPU accounting counts a process tree's time, children included."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from bench.cpu import CpuMeter, named, tree

# A parent whose child burns 0.6 s of CPU and ends; the parent waits for it, then idles.
BUSY_CHILD_THEN_IDLE = (
    "import subprocess, sys, time\n"
    "subprocess.run([sys.executable, '-c', "
    "'import time\\nt = time.process_time()\\nwhile time.process_time() - t < 0.6: pass'])\n"
    "time.sleep(60)\n"
)


def test_cpu_meter_counts_a_finished_child_through_its_parent():
    parent = subprocess.Popen([sys.executable, "-c", BUSY_CHILD_THEN_IDLE])
    try:
        meter = CpuMeter({"tree": tree(parent.pid), "nobody": named("no-such-process-name")})
        meter.start()
        deadline = time.monotonic() + 20
        spent = meter.stop()
        while spent["tree"] < 0.5 and time.monotonic() < deadline:
            time.sleep(0.1)
            spent = meter.stop()
        assert spent["tree"] >= 0.5
        assert spent["nobody"] == 0.0
    finally:
        parent.kill()
        parent.wait()


def test_tree_of_an_ended_process_is_empty():
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert tree(gone.pid)() == []


def test_model_package_turns_on_onednn_unless_the_operator_chose():
    code = "import os, model; print(os.environ['TF_ENABLE_ONEDNN_OPTS'])"
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}

    def seen(extra: dict[str, str]) -> str:
        done = subprocess.run(
            [sys.executable, "-c", code], env={**env, **extra}, capture_output=True, text=True
        )
        return done.stdout.strip()

    assert seen({}) == "1"
    assert seen({"TF_ENABLE_ONEDNN_OPTS": "0"}) == "0"
