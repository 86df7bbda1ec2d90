"""Experiment trackers: TensorBoard by default, MLflow and W&B on request, one curve per scalar
across a kill and a resume, and a clear stop when a tracker is not installed."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from conftest import tiny_config

from training.config import ConfigError, load_config
from training.loop.monitor import COLLAPSED, OK, WINNING
from training.loop.tracking import Tracker, record_scalars
from training.loop.trainer import Trainer

# Three steps an epoch on the 6-pair label set: 6 steps, each one logged, a checkpoint every 2,
# a validation (and sample grid) every 3.
EVERY_STEP = {
    "train.epochs": "1",
    "train.epochs_decay": "1",
    "train.log_every": "1",
    "train.save_every": "2",
    "train.sample_every": "3",
}
TRAIN_STEPS, VAL_STEPS = [1, 2, 3, 4, 5, 6], [3, 6]

needs_mlflow = pytest.mark.skipif(
    importlib.util.find_spec("mlflow") is None,
    reason="mlflow is not installed (the extra pix2pix[mlflow]; pip install -e '.[dev]')",
)
needs_wandb = pytest.mark.skipif(
    importlib.util.find_spec("wandb") is None,
    reason="wandb is not installed (the extra pix2pix[wandb]; pip install -e '.[dev]')",
)


class Killed(Exception):
    """Stands for the process dying where the test raises it."""


def events(run_dir: Path):
    """The run's TensorBoard events as TensorBoard's own reader sees them, nothing sampled."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    everything = {"scalars": 0, "images": 0, "tensors": 0}
    accumulator = EventAccumulator(str(run_dir / "tensorboard"), size_guidance=everything)
    accumulator.Reload()
    return accumulator


def scalar_steps(accumulator) -> dict[str, list[int]]:
    return {
        tag: [event.step for event in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }


def train_killed_and_resumed(label_dataset: Path, tmp_path: Path, trackers: str) -> Path:
    """Train to step 6, die before writing checkpoint 6 (so steps 5 and 6 are logged and lost),
    resume from checkpoint 4 to the end. Returns the run directory."""
    config = tiny_config(
        label_dataset, tmp_path / "runs", **EVERY_STEP, **{"train.trackers": trackers}
    )
    first = Trainer(config, progress=False)
    save = first.save_checkpoint
    on_disk_at_save: dict[int, list[int]] = {}

    def save_or_die(keep_as_epoch: bool = False):
        if "tensorboard" in trackers:
            on_disk_at_save[first.step] = scalar_steps(events(config.run_dir))["train/G_L1"]
        if first.step == 6:
            raise Killed
        return save(keep_as_epoch)

    first.save_checkpoint = save_or_die
    with pytest.raises(Killed):
        first.train()
    if "tensorboard" in trackers:
        # Each checkpoint's step is on disk before the checkpoint: a kill loses nothing a
        # resume does not log again.
        for step, steps in on_disk_at_save.items():
            assert steps == list(range(1, step + 1)), (step, steps)
    resumed = Trainer(config, resume=True, progress=False)
    assert resumed.step == 4
    resumed.train()
    return config.run_dir


def test_a_default_run_writes_every_logged_value_and_the_sample_grids_to_tensorboard(
    label_dataset, tmp_path
):
    config = tiny_config(
        label_dataset,
        tmp_path / "runs",
        **{"train.max_steps": "4", "train.log_every": "2", "train.sample_every": "2"},
    )
    assert config.train.trackers == ["tensorboard"]
    trainer = Trainer(config, progress=False)
    trainer.train()
    accumulator = events(config.run_dir)
    steps = scalar_steps(accumulator)
    records = [json.loads(line) for line in (config.run_dir / "metrics.jsonl").open()]
    for record in records:
        kind, step = record["kind"], record["step"]
        for key, value in record_scalars(record).items():
            logged = {event.step: event.value for event in accumulator.Scalars(key)}
            assert logged[step] == pytest.approx(value, rel=1e-6), (kind, key)
    expected = {f"train/{name}" for name in trainer.objective.names}
    expected |= {f"train/{key}" for key in ("D_acc", "GD_balance", "D_state", "lr", "epoch")}
    expected |= {"train/images_per_s", "train/data_wait", "val/val_l1"}
    assert expected <= set(steps)
    assert {"train/D_real", "train/D_fake", "train/D_acc_real", "train/D_acc_fake"} <= expected
    assert steps["train/G_L1"] == [2, 4] and steps["val/val_l1"] == [2, 4]
    # The grids as written to samples/, byte for byte.
    images = accumulator.Images("samples")
    assert [image.step for image in images] == [2, 4]
    grid = config.run_dir / "samples" / "step_00000004.png"
    assert images[-1].encoded_image_string == grid.read_bytes()
    # The resolved config as text and as hyperparameters.
    text = accumulator.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert 'name = "tiny"' in text and "trackers = [" in text
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    content = accumulator.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hyperparameters = HParamsPluginData.FromString(content).session_start_info.hparams
    assert hyperparameters["train.lr"].number_value == pytest.approx(config.train.lr)
    assert hyperparameters["generator.norm"].string_value == "batch"


def test_a_resumed_run_continues_the_same_curves_with_each_step_once(label_dataset, tmp_path):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.compat.proto.event_pb2 import SessionLog

    run_dir = train_killed_and_resumed(label_dataset, tmp_path, "tensorboard")
    accumulator = events(run_dir)
    for tag, steps in scalar_steps(accumulator).items():
        assert steps == (VAL_STEPS if tag.startswith("val/") else TRAIN_STEPS), tag
    assert [image.step for image in accumulator.Images("samples")] == VAL_STEPS
    assert len(accumulator.Tensors("config/text_summary")) == 1
    # The resumed run's file opens by purging what followed the checkpoint, for readers that
    # would otherwise show steps 5 and 6 twice.
    files = sorted((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 2
    opening = list(EventFileLoader(str(files[1])).Load())[:4]
    starts = [event.step for event in opening if event.session_log.status == SessionLog.START]
    assert starts == [5]


def test_no_trackers_write_nothing_beside_the_run(label_dataset, tmp_path):
    config = tiny_config(
        label_dataset, tmp_path / "runs", **{"train.max_steps": "2", "train.trackers": ""}
    )
    Trainer(config, progress=False).train()
    assert not (config.run_dir / "tensorboard").exists()
    assert not (config.run_dir / "trackers.json").exists()


def test_tensorboard_checksums_are_tensorboards_own_from_c_code_or_its_own_code(monkeypatch):
    import os

    from tensorboard.compat.tensorflow_stub import pywrap_tensorflow
    from tensorboard.summary.writer import record_writer

    from training.loop.tracking import use_fast_checksums

    monkeypatch.setattr(record_writer, "masked_crc32c", pywrap_tensorflow.masked_crc32c)
    assert use_fast_checksums()
    assert record_writer.masked_crc32c is not pywrap_tensorflow.masked_crc32c
    for size in (0, 1, 7, 4096):
        data = os.urandom(size)
        assert record_writer.masked_crc32c(data) == pywrap_tensorflow.masked_crc32c(data)
    # Without google-crc32c, TensorBoard's own function stays.
    monkeypatch.setattr(record_writer, "masked_crc32c", pywrap_tensorflow.masked_crc32c)
    monkeypatch.setitem(sys.modules, "google_crc32c", None)
    assert not use_fast_checksums()
    assert record_writer.masked_crc32c is pywrap_tensorflow.masked_crc32c


class BrokenTracker(Tracker):
    """Starts, then fails as a tracker whose server went away would."""

    def __init__(self):
        self.closed_as: bool | None = None

    def start(self, config, step):
        pass

    def scalars(self, step, values):
        raise OSError("connection refused")

    def image(self, step, name, path):
        pass

    def flush(self):
        pass

    def close(self, succeeded):
        self.closed_as = succeeded


def test_a_tracker_that_fails_is_dropped_with_a_warning_and_the_run_goes_on(
    label_dataset, tmp_path, caplog
):
    config = tiny_config(
        label_dataset, tmp_path / "runs", **{"train.max_steps": "4", "train.log_every": "1"}
    )
    trainer = Trainer(config, progress=False)
    broken = BrokenTracker()
    trainer.trackers = [broken, *trainer.trackers]
    assert trainer.train()["step"] == 4
    assert "BrokenTracker tracker failed (OSError: connection refused)" in caplog.text
    assert broken.closed_as is False
    assert scalar_steps(events(config.run_dir))["train/G_L1"] == [1, 2, 3, 4]
    records = (config.run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in records] == [1, 2, 3, 4, 4]


@pytest.mark.parametrize("name", ["mlflow", "wandb"])
def test_a_tracker_that_is_not_installed_stops_the_run_before_it_starts(
    label_dataset, tmp_path, monkeypatch, name
):
    # A None entry in sys.modules is how Python marks a module as not importable.
    monkeypatch.setitem(sys.modules, name, None)
    config = tiny_config(
        label_dataset, tmp_path / "runs", **{"train.trackers": f"tensorboard,{name}"}
    )
    with pytest.raises(ConfigError, match=rf"{name}, which is not installed.*pix2pix\[{name}\]"):
        Trainer(config, progress=False)
    assert not config.run_dir.exists()


def test_trackers_are_a_list_on_the_command_line_and_in_toml(tmp_path):
    assert load_config(None, {"train.trackers": "tensorboard, mlflow"}).train.trackers == [
        "tensorboard",
        "mlflow",
    ]
    assert load_config(None, {"trackers": ""}).train.trackers == []
    preset = tmp_path / "preset.toml"
    preset.write_text('[train]\ntrackers = ["wandb"]\n')
    assert load_config(preset).train.trackers == ["wandb"]
    with pytest.raises(ConfigError, match=r"unknown tracker 'neptune'; known: tensorboard"):
        load_config(None, {"train.trackers": "tensorboard,neptune"})
    with pytest.raises(ConfigError, match="names a tracker twice"):
        load_config(None, {"train.trackers": "mlflow,mlflow"})
    preset.write_text("[train]\ntrackers = [1]\n")
    with pytest.raises(ConfigError, match=r"train.trackers\[0\] expects str"):
        load_config(preset)


def test_a_record_becomes_scalars_by_kind_and_key_with_d_state_as_a_number():
    record = {"kind": "train", "step": 5, "epoch": 1, "G_L1": 0.25, "GD_balance": None}
    assert record_scalars(record | {"D_state": OK}) == {
        "train/epoch": 1.0,
        "train/G_L1": 0.25,
        "train/D_state": 0.0,
    }
    assert record_scalars(record | {"D_state": WINNING})["train/D_state"] == 1.0
    assert record_scalars(record | {"D_state": COLLAPSED})["train/D_state"] == -1.0
    assert record_scalars({"kind": "val", "step": 5, "val_l1": 0.5}) == {"val/val_l1": 0.5}


@needs_mlflow
def test_mlflow_holds_the_same_metrics_images_and_config_across_a_resume(
    label_dataset, tmp_path, monkeypatch
):
    from mlflow.tracking import MlflowClient

    store = tmp_path / "mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    # MLflow 3 keeps its file store only for those who ask for it.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "tracking-test")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")  # nothing leaves the machine
    run_dir = train_killed_and_resumed(label_dataset, tmp_path, "tensorboard,mlflow")
    run_id = json.loads((run_dir / "trackers.json").read_text())["mlflow"]
    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "tracking-test"
    assert run.data.tags["run_dir"] == str(run_dir.resolve())
    assert run.data.params["train.trackers"] == "tensorboard,mlflow"
    assert float(run.data.params["train.lr"]) == pytest.approx(2e-4)
    accumulator = events(run_dir)
    assert set(run.data.metrics) == set(accumulator.Tags()["scalars"])
    for key in run.data.metrics:
        history = client.get_metric_history(run_id, key)
        assert [metric.step for metric in history] == (
            VAL_STEPS if key.startswith("val/") else TRAIN_STEPS
        ), key
    # Steps 5 and 6 are kept as the killed run logged them, equal to TensorBoard's up to the
    # interval's timing.
    tensorboard = {event.step: event.value for event in accumulator.Scalars("train/G_L1")}
    for metric in client.get_metric_history(run_id, "train/G_L1"):
        assert metric.value == pytest.approx(tensorboard[metric.step], rel=1e-5)
    artifacts = [item.path for item in client.list_artifacts(run_id)]
    assert "config.toml" in artifacts
    grids = [item.path for item in client.list_artifacts(run_id, "samples")]
    assert grids == ["samples/step_00000003.png", "samples/step_00000006.png"]
    store_copy = Path(client.download_artifacts(run_id, "samples/step_00000006.png", tmp_path))
    assert store_copy.read_bytes() == (run_dir / "samples" / "step_00000006.png").read_bytes()


def wandb_history(run_file: Path) -> dict[int, set[str]]:
    """The keys each step logged in an offline W&B run, read with W&B's record protobuf from
    its file (a header, then LevelDB-style log records in 32 KiB blocks)."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, block = run_file.read_bytes(), 32768
    assert data[:4] == b":W&B", run_file
    history: dict[int, set[str]] = {}
    position, payload = 7, b""
    while position + 7 <= len(data):
        left = block - position % block
        length = int.from_bytes(data[position + 4 : position + 6], "little")
        kind = data[position + 6]
        if left < 7 or kind == 0:  # the padding at a block's end
            position += left
            continue
        payload += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = Record.FromString(payload)
            payload = b""
            if record.WhichOneof("record_type") == "history":
                keys = {item.key or item.nested_key[0] for item in record.history.item}
                history.setdefault(record.history.step.num, set()).update(keys)
    return history


@needs_wandb
def test_wandb_offline_run_holds_the_same_scalars_and_sample_grids(
    label_dataset, tmp_path, monkeypatch
):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-files"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wandb-files").mkdir()
    config = tiny_config(
        label_dataset,
        tmp_path / "runs",
        **{"train.max_steps": "4", "train.log_every": "2", "train.sample_every": "2"},
        **{"train.trackers": "tensorboard,wandb"},
    )
    Trainer(config, progress=False).train()
    run_id = json.loads((config.run_dir / "trackers.json").read_text())["wandb"]
    (run_folder,) = (tmp_path / "wandb-files" / "wandb").glob(f"offline-run-*-{run_id}")
    history = wandb_history(run_folder / f"run-{run_id}.wandb")
    scalars = scalar_steps(events(config.run_dir))
    for step in (2, 4):
        logged = {key for key in history[step] if not key.startswith("_")}
        assert logged == {tag for tag, steps in scalars.items() if step in steps} | {"samples"}
    grids = sorted(path.name.split("_")[1] for path in run_folder.glob("files/media/images/*.png"))
    assert grids == ["2", "4"]
