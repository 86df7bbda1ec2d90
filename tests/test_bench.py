"""The training benchmark and the GPU check run end to end in their tiny CPU modes.

Only the printed tables are checked, never the timings.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# One thread: on a busy two-core machine a second OpenMP thread mostly waits for its turn.
ENVIRONMENT = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}


def run(command: list[str]) -> str:
    result = subprocess.run(
        command, cwd=ROOT, env=ENVIRONMENT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


def test_train_bench_prints_baseline_and_trainer_rows_per_batch_and_precision():
    flags = "--tiny --threads 1 --batches 1 2 --steps 1 --rounds 1 --data-batch 2 --data-steps 2"
    flags += " --tracking-calls 10"
    output = run([sys.executable, "bench/train.py", *flags.split()])
    assert re.search(r"GFLOP per image per iteration at 32 px", output), output
    header = next(line for line in output.splitlines() if line.startswith("batch"))
    assert [cell.strip() for cell in header.split("|")] == [
        "batch",
        "step",
        "images/s",
        "ms/step",
        "GFLOP/s",
        "vs baseline",
        "best img/s",
        "best vs baseline",
    ]
    rows = [
        [cell.strip() for cell in line.split("|")]
        for line in output.splitlines()
        if re.match(r"\s*\d+ \|", line)
    ]
    assert [(row[0], row[1]) for row in rows] == [
        (batch, step)
        for batch in ("1", "2")
        for step in ("baseline (fp32, NCHW)", "trainer (fp32)", "trainer (bf16)")
    ]
    for row in rows:
        assert float(row[2]) > 0 and row[5].endswith("x")
    assert re.search(r"real loop, batch 2 bf16, 2 loader workers: [\d.]+ images/s, "
                     r"data wait [\d.]+% of step time", output), output  # fmt: skip
    assert "trackers at log_every 100, sample_every 1000, against a" in output, output
    assert re.search(r"none \|\s+[\d.]+ \|\s+[\d.]+ \|\s+\(baseline\)", output), output
    assert re.search(r"tensorboard \|\s+[\d.]+ \|\s+[\d.]+ \|\s+-?[\d.]+%", output), output


def test_gpu_check_runs_on_the_cpu():
    environment = {"STEPS": "2", "BATCH": "2", "WARMUP": "1", "TINY": "1", "WORKERS": "1"}
    ENVIRONMENT.update(environment)
    output = run(["bash", "bench/gpu_check.sh", "--threads", "1"])
    assert "no CUDA device" in output
    for label in ("images/s", "data wait", "model TFLOP/s", "MFU (dense bf16)", "peak memory"):
        assert re.search(rf"^{re.escape(label)}\s+\| \S", output, re.MULTILINE), (label, output)
    assert "bf16, channels_last=True, compile=False, batch 2" in output
