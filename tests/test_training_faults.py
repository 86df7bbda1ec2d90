"""Training under faults: SIGKILL at any moment and failing disk writes never corrupt ``latest``.

A run killed with SIGKILL (at random moments and inside each phase of a checkpoint write) and
resumed each time ends with exactly the weights of an uninterrupted run with the same seed. A
disk write that fails while checkpointing keeps the previous checkpoint and stops the run with
an error that names the problem.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from model.checkpoint import latest_checkpoint, load_generator
from model.errors import CheckpointError
from tests.conftest import tiny_config, write_label_dataset
from training.loop.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
MARKED_TRAIN = ROOT / "reliability" / "marked_train.py"
# 6 pairs at batch 2 is 3 steps per epoch, with a checkpoint every 3 steps.
SOAK = {
    "data.input_kind": "label_map",
    "train.deterministic": "true",
    "train.save_every": "3",
    "train.save_epochs": "4",
}
PHASES = ("tensors-written", "folder-renamed", "latest-published")


def run_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    folder = latest_checkpoint(run_dir / "checkpoints")
    return load_file(str(folder / "generator.safetensors")) | {
        f"D.{k}": v for k, v in load_file(str(folder / "discriminator.safetensors")).items()
    }


def assert_latest_is_complete(run_dir: Path) -> int:
    """``latest`` names a checkpoint whose every file loads; returns its step."""
    folder = latest_checkpoint(run_dir / "checkpoints")
    load_generator(folder)
    load_file(str(folder / "discriminator.safetensors"))
    state = torch.load(folder / "training_state.pt", map_location="cpu", weights_only=True)
    return int(state["step"])


def child_env(pause: float) -> dict[str, str]:
    return {
        **os.environ,
        "PIX2PIX_PHASE_PAUSE_S": str(pause),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
    }


def train_command(config_file: Path, run_dir: Path, resume: bool) -> list[str]:
    command = [sys.executable, str(MARKED_TRAIN), "train", "--quiet"]
    return command + (["--resume-run", str(run_dir)] if resume else ["--config", str(config_file)])


def start_training(config_file: Path, run_dir: Path, resume: bool) -> subprocess.Popen:
    return subprocess.Popen(
        train_command(config_file, run_dir, resume),
        env=child_env(0),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def finish(process: subprocess.Popen) -> None:
    _, errors = process.communicate(timeout=600)
    assert process.returncode == 0, errors[-3000:]


def kill_at(command: list[str], target: str, occurrence: int, delay: float) -> bool:
    """Start ``command`` and SIGKILL it at the ``occurrence``-th ``PHASE target`` line, or
    ``delay`` seconds after start when ``target`` is "random". False if it finished first."""
    process = subprocess.Popen(
        command,
        env=child_env(0.25),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    killed = False
    try:
        if target == "random":
            try:
                process.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGKILL)
                killed = True
        else:
            seen = 0
            assert process.stdout is not None
            for line in process.stdout:
                if line.startswith(f"PHASE {target} "):
                    seen += 1
                    if seen == occurrence:
                        process.send_signal(signal.SIGKILL)
                        killed = True
                        break
    finally:
        if process.poll() is None and not killed:
            process.kill()
        process.wait(timeout=60)
        if process.stdout is not None:
            process.stdout.close()
    return killed


def soak(tmp_path: Path, plan: list[tuple[str, int, float]], epochs: int) -> dict:
    """Kill a run per ``plan``, check ``latest`` after each kill, resume, and compare the
    final weights with those of an uninterrupted run. Returns what happened."""
    data = write_label_dataset(tmp_path / "data")
    runs = tmp_path / "runs"
    files = {}
    overrides = {**SOAK, "train.epochs": str(epochs), "train.epochs_decay": str(epochs)}
    for name in ("straight", "killed"):
        config = tiny_config(data, runs, name=name, **overrides)
        files[name] = tmp_path / f"{name}.toml"
        files[name].write_text(config.to_toml())
    straight_dir, killed_dir = runs / "straight", runs / "killed"
    # The uninterrupted run goes on beside the killed one.
    straight = start_training(files["straight"], straight_dir, resume=False)

    kills, restarts_from_scratch, steps_at_kill = 0, 0, []
    for target, occurrence, delay in plan:
        resume = (killed_dir / "checkpoints" / "latest").is_file()
        if not resume and killed_dir.exists():
            # Killed before its first checkpoint: nothing to resume, so start over.
            shutil.rmtree(killed_dir)
            restarts_from_scratch += 1
        command = train_command(files["killed"], killed_dir, resume)
        if not kill_at(command, target, occurrence, delay):
            break
        kills += 1
        if (killed_dir / "checkpoints" / "latest").is_file():
            steps_at_kill.append((target, assert_latest_is_complete(killed_dir)))
        else:
            steps_at_kill.append((target, None))
    resume = (killed_dir / "checkpoints" / "latest").is_file()
    if not resume and killed_dir.exists():
        shutil.rmtree(killed_dir)
    finish(start_training(files["killed"], killed_dir, resume=resume))
    finish(straight)
    assert assert_latest_is_complete(killed_dir) == 2 * epochs * 3

    expected, actual = run_weights(straight_dir), run_weights(killed_dir)
    assert expected.keys() == actual.keys()
    for name in expected:  # exact by design: same kernels, same order, restored RNG streams
        assert torch.equal(actual[name], expected[name]), name
    leftovers = sorted(p.name for p in (killed_dir / "checkpoints").iterdir())
    # Temp folders of kills mid-write are swept by the next checkpoint write.
    assert not [name for name in leftovers if name.endswith(".tmp")], leftovers
    return {
        "kills": kills,
        "steps_at_kill": steps_at_kill,
        "restarts_from_scratch": restarts_from_scratch,
        "checkpoints_at_end": leftovers,
    }


@pytest.mark.numeric
def test_a_run_killed_during_a_checkpoint_write_resumes_to_the_same_weights(tmp_path):
    report = soak(tmp_path, [("tensors-written", 5, 0.0)], epochs=2)
    assert report["kills"] == 1
    # Killed while writing the 3rd checkpoint (two weights files each): the 2nd stays latest.
    assert report["steps_at_kill"] == [("tensors-written", 6)]


@pytest.mark.reliability
def test_soak_random_sigkills_never_corrupt_latest_and_resume_exactly(tmp_path):
    rng = random.Random(int(os.environ.get("PIX2PIX_SOAK_SEED", "8")))
    plan = [(phase, rng.randint(1, 4), 0.0) for phase in PHASES]
    plan += [("tensors-written", rng.randint(1, 6), 0.0)]
    # Random moments: after start-up (a few seconds on 2 busy cores), anywhere in the loop.
    plan += [("random", 0, rng.uniform(5.0, 15.0)) for _ in range(4)]
    rng.shuffle(plan)
    start = time.perf_counter()
    report = soak(tmp_path, plan, epochs=8)  # 48 steps
    report["seconds"] = round(time.perf_counter() - start, 1)
    print(f"\nsoak: {report}")
    assert report["kills"] >= 5, report


# -- failing disk writes ---------------------------------------------------------------------


def test_a_failing_disk_write_keeps_the_previous_checkpoint_and_stops_clearly(
    label_dataset, tmp_path, monkeypatch
):
    import model.weights

    config = tiny_config(
        label_dataset, tmp_path, **{"data.input_kind": "label_map", "train.save_every": "2"}
    )
    trainer = Trainer(config, progress=False)
    real_save_file = model.weights.save_file
    writes = {"count": 0}

    def full_disk(tensors, filename, metadata=None):
        writes["count"] += 1
        if writes["count"] == 4:  # the discriminator of the 2nd checkpoint (step 4)
            with open(filename, "wb") as handle:
                handle.write(b"\0" * 100)  # a partial file, as a full disk leaves it
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
        real_save_file(tensors, filename, metadata=metadata)

    monkeypatch.setattr(model.weights, "save_file", full_disk)
    with pytest.raises(CheckpointError) as caught:
        trainer.train()
    message = str(caught.value)
    assert "No space left on device" in message and "step_00000004" in message
    assert "step_00000002" in message  # says which checkpoint is kept
    assert trainer.step == 4
    checkpoints = config.run_dir / "checkpoints"
    assert latest_checkpoint(checkpoints).name == "step_00000002"
    assert assert_latest_is_complete(config.run_dir) == 2
    # No half-written folder or temp file is left behind.
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step_00000002"]

    # The run continues from the kept checkpoint once the disk has room.
    monkeypatch.setattr(model.weights, "save_file", real_save_file)
    resumed = Trainer(config, resume=True, progress=False)
    assert resumed.step == 2


def test_a_failing_latest_pointer_write_keeps_the_previous_latest(
    label_dataset, tmp_path, monkeypatch
):
    import model.atomic_files

    config = tiny_config(
        label_dataset, tmp_path, **{"data.input_kind": "label_map", "train.save_every": "2"}
    )
    trainer = Trainer(config, progress=False)
    real_fsync = os.fsync
    calls = {"latest": 0}

    def failing_fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").split("/")[-1].startswith(".latest."):
            calls["latest"] += 1
            if calls["latest"] == 2:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(fd)

    monkeypatch.setattr(model.atomic_files.os, "fsync", failing_fsync)
    with pytest.raises(CheckpointError, match="Input/output error"):
        trainer.train()
    monkeypatch.setattr(model.atomic_files.os, "fsync", real_fsync)
    checkpoints = config.run_dir / "checkpoints"
    assert latest_checkpoint(checkpoints).name == "step_00000002"
    assert assert_latest_is_complete(config.run_dir) == 2
    assert not [p for p in checkpoints.iterdir() if p.name.endswith(".tmp")]
