"""The training loop: it learns, resumes exactly, stops on NaN, and writes a complete run."""

import itertools
import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from model import cpu_features
from model.checkpoint import latest_checkpoint, load_generator
from model.cpu_features import native_bf16
from model.translate import Translator
from tests.conftest import tiny_config, train_with_a_break, write_label_dataset
from training.data.datasets import PairedDataset
from training.errors import TrainingError
from training.loop import trainer as trainer_module
from training.loop.trainer import Trainer, load_run_config

LABELS = {"data.input_kind": "label_map"}


def val_records(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if '"val"' in line]


@pytest.mark.numeric
def test_tiny_model_halves_val_l1_within_200_steps(tmp_path):
    # Observed: 0.42 -> 0.07 in 200 steps (about 6x); the test asks for 2x.
    root = write_label_dataset(tmp_path / "data", counts=(16, 4, 4))
    config = tiny_config(
        root, tmp_path, **LABELS, **{"train.max_steps": "200", "train.sample_every": "50"}
    )
    trainer = Trainer(config, progress=False)
    initial = trainer.validate(save_grid=False)["val_l1"]
    summary = trainer.train()
    assert summary["val_l1"] <= 0.5 * initial, (initial, summary["val_l1"])
    curve = [record["val_l1"] for record in val_records(config.run_dir)]
    assert curve[-1] < curve[0]


def weights(folder):
    tensors = load_file(str(folder / "generator.safetensors")) | {
        f"D.{k}": v for k, v in load_file(str(folder / "discriminator.safetensors")).items()
    }
    raw = folder / "generator_raw.safetensors"  # beside the moving average, when kept
    if raw.is_file():
        tensors |= {f"raw.{k}": v for k, v in load_file(str(raw)).items()}
    return tensors


@pytest.mark.numeric
@pytest.mark.parametrize("ema_decay,recalibrate", [("0", "0"), ("0.9", "0"), ("0.9", "4")])
def test_resume_continues_exactly(label_dataset, tmp_path, ema_decay, recalibrate):
    # 6 pairs at batch 2 is 3 steps per epoch, so the break at step 4 falls mid-epoch.
    common = {**LABELS, "train.save_every": "2", "train.epochs": "2", "train.epochs_decay": "2"}
    common["train.ema_decay"] = ema_decay
    common["train.recalibrate_bn"] = recalibrate
    straight = tiny_config(label_dataset, tmp_path, name="straight", **common)
    Trainer(straight, progress=False).train()

    expected = weights(latest_checkpoint(straight.run_dir / "checkpoints"))
    last = train_with_a_break(label_dataset, tmp_path, 4, **common)
    assert last.name == "step_00000012"
    actual = weights(last)
    assert expected.keys() == actual.keys()
    assert any(name.startswith("raw.") for name in expected) == (ema_decay != "0")
    for name in expected:  # exact by design: same kernels, same order, restored RNG streams
        assert torch.equal(actual[name], expected[name]), name


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
    label_dataset, tmp_path, monkeypatch
):
    config = tiny_config(label_dataset, tmp_path, **LABELS, **{"train.save_every": "2"})
    original = PairedDataset.__getitem__
    calls = {"count": 0}

    def poisoned(self, index):
        item = original(self, index)
        calls["count"] += 1
        if self.train and calls["count"] > 10:  # from step 6 on (batch 2)
            item["B"] = torch.full_like(item["B"], float("nan"))
        return item

    monkeypatch.setattr(PairedDataset, "__getitem__", poisoned)
    trainer = Trainer(config, progress=False)
    with pytest.raises(TrainingError, match="NaN or inf before step 6"):
        trainer.train()
    latest = latest_checkpoint(config.run_dir / "checkpoints")
    assert latest.name == "step_00000004"
    generator, _ = load_generator(config.run_dir)
    assert all(torch.isfinite(p).all() for p in generator.parameters())


def test_run_directory_is_self_describing(label_dataset, tmp_path):
    config = tiny_config(
        label_dataset,
        tmp_path,
        **LABELS,
        **{"train.max_steps": "9", "train.sample_every": "3", "train.save_epochs": "1"},
    )
    Trainer(config, progress=False).train()
    run = config.run_dir
    assert load_run_config(run) == config
    assert json.loads((run / "spec.json").read_text())["input_kind"] == "label_map"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["kind"] == "train"]
    assert {"G_GAN", "G_L1", "D_real", "D_fake", "D_acc_real", "D_acc_fake", "lr"} <= set(
        train_records[0]
    )
    assert train_records[0]["images_per_s"] > 0 and 0 <= train_records[0]["data_wait"] <= 1
    samples = sorted((run / "samples").glob("step_*.png"))
    assert [p.name for p in samples] == [f"step_0000000{n}.png" for n in (3, 6, 9)]
    grid = Image.open(samples[-1])
    assert grid.size == (3 * 32, 2 * 32)  # A | G(A) | B for both val pairs
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert checkpoints == ["epoch_0001", "epoch_0002", "epoch_0003", "latest"]
    for name in checkpoints[:-1]:
        assert {p.name for p in (run / "checkpoints" / name).iterdir()} == {
            "generator.safetensors",
            "discriminator.safetensors",
            "spec.json",
            "training_state.pt",
        }


def test_existing_run_is_not_overwritten_without_resume(label_dataset, tmp_path):
    config = tiny_config(label_dataset, tmp_path, **LABELS, **{"train.max_steps": "1"})
    Trainer(config, progress=False).train()
    with pytest.raises(TrainingError, match="already exists: pass --resume"):
        Trainer(config, progress=False)


def test_resume_reads_a_checkpoint_from_before_the_two_scalers(label_dataset, tmp_path):
    config = tiny_config(label_dataset, tmp_path, **LABELS, **{"train.max_steps": "1"})
    Trainer(config, progress=False).train()
    path = latest_checkpoint(config.run_dir / "checkpoints") / "training_state.pt"
    state = torch.load(path, weights_only=True)
    state["scaler"] = state.pop("scaler_d")  # one scaler for both networks, as saved then
    del state["scaler_g"]
    torch.save(state, path)
    resumed = Trainer(tiny_config(label_dataset, tmp_path, **LABELS), resume=True, progress=False)
    assert resumed.step == 1
    assert resumed.scaler_g.state_dict() == resumed.scaler_d.state_dict() == state["scaler"]


def test_resume_without_checkpoint_is_a_clear_error(label_dataset, tmp_path):
    config = tiny_config(label_dataset, tmp_path, **LABELS)
    with pytest.raises(TrainingError, match="nothing to resume"):
        Trainer(config, resume=True, progress=False)


def test_learning_rate_is_constant_then_decays_linearly_to_zero(label_dataset, tmp_path):
    config = tiny_config(
        label_dataset, tmp_path, **LABELS, **{"train.epochs": "2", "train.epochs_decay": "3"}
    )
    trainer = Trainer(config, progress=False)
    per_epoch = trainer.steps_per_epoch
    factors = [trainer.lr_factor(step) for step in range(5 * per_epoch + 1)]
    assert factors[: 2 * per_epoch] == [1.0] * (2 * per_epoch)
    decay = factors[2 * per_epoch :]
    assert all(a > b for a, b in itertools.pairwise(decay))
    assert decay[-1] == 0.0


@pytest.mark.parametrize("gan_mode", ["lsgan", "hinge"])
def test_other_gan_objectives_train(label_dataset, tmp_path, gan_mode):
    config = tiny_config(
        label_dataset,
        tmp_path,
        **LABELS,
        **{"train.max_steps": "4", "train.gan_mode": gan_mode, "train.pool_size": "3"},
    )
    summary = Trainer(config, progress=False).train()
    assert np.isfinite(summary["val_l1"])


def test_l1_only_training_skips_the_discriminator(label_dataset, tmp_path):
    config = tiny_config(
        label_dataset, tmp_path, **LABELS, **{"train.max_steps": "3", "train.lambda_gan": "0"}
    )
    trainer = Trainer(config, progress=False)
    before = [p.clone() for p in trainer.discriminator.parameters()]
    trainer.train()
    assert all(
        torch.equal(a, b) for a, b in zip(before, trainer.discriminator.parameters(), strict=False)
    )


@pytest.mark.numeric
def test_bf16_training_runs_on_cpu(label_dataset, tmp_path):
    config = tiny_config(
        label_dataset, tmp_path, **LABELS, **{"train.max_steps": "3", "train.precision": "bf16"}
    )
    assert np.isfinite(Trainer(config, progress=False).train()["val_l1"])


def test_translate_keeps_any_size(label_dataset, tmp_path):
    config = tiny_config(label_dataset, tmp_path, **LABELS, **{"train.max_steps": "2"})
    Trainer(config, progress=False).train()
    translator = Translator.load(config.run_dir)
    ids = np.random.default_rng(0).integers(0, 3, (333, 517)).astype(np.uint8)
    result = translator.translate(Image.fromarray(ids, "L"))
    assert result.size == (517, 333) and result.mode == "RGB"
    fitted = translator.translate(Image.fromarray(ids, "L"), resize="fit")
    assert fitted.size == (517, 333)


def test_colorization_run_translates_gray_to_color(synth_color, tmp_path):
    config = tiny_config(
        synth_color,
        tmp_path,
        **{"data.layout": "colorization", "data.input_kind": "grayscale", "train.max_steps": "2"},
    )
    Trainer(config, progress=False).train()
    translator = Translator.load(config.run_dir)
    gray = Image.fromarray(np.random.default_rng(0).integers(0, 256, (45, 71), dtype=np.uint8))
    result = np.asarray(translator.translate(gray))
    assert result.shape == (45, 71, 3)
    # Lab recombination keeps the input's lightness: luma follows the gray input closely.
    luma = np.asarray(Image.fromarray(result).convert("L"), dtype=int)
    assert np.corrcoef(luma.ravel(), np.asarray(gray, dtype=int).ravel())[0, 1] > 0.95


def test_several_discriminator_steps_under_fp16_each_update_their_scaler(
    label_dataset, tmp_path, monkeypatch
):
    # A real fp16 run needs a GPU; the CPU has fp16 autocast and a GradScaler as well.
    monkeypatch.setattr(trainer_module, "autocast_dtype", lambda precision, device: torch.float16)
    overrides = {"train.precision": "fp16", "train.d_steps": "3", "train.pool_size": "4"}
    trainer = Trainer(tiny_config(label_dataset, tmp_path, **LABELS, **overrides), progress=False)
    assert trainer.scaler_d.is_enabled() and trainer.scaler_g.is_enabled()
    _, batch = next(trainer.batches())

    stats = trainer.train_step(trainer._to_device(batch["A"]), trainer._to_device(batch["B"]))

    assert torch.isfinite(torch.stack(list(stats.values()))).all()
    # A scaler steps each optimizer once per update: three D steps need three updates.
    assert {int(state["step"]) for state in trainer.optimizer_d.state.values()} == {3}
    # The pool was asked once: it holds each generated pair of the batch of two once.
    assert len(trainer.pool.images) == 2


def test_sample_grids_show_validation_pairs_spread_over_the_split(tmp_path):
    # Sixteen flat-colored validation pairs, pair i in gray level 16 i: the grid's B column
    # tells which pairs it shows.
    root = tmp_path / "data"
    for split, count in (("train", 2), ("val", 16)):
        for index in range(count):
            pixels = np.full((32, 32, 3), 16 * index, dtype=np.uint8)
            for side in "AB":
                (root / split / side).mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(root / split / side / f"{index:02d}.png")
    trainer = Trainer(tiny_config(root, tmp_path, **{"train.val_images": "4"}), progress=False)

    trainer.validate(save_grid=True)

    grid = np.asarray(Image.open(trainer.run_dir / "samples" / "step_00000000.png"))
    targets = grid[:, 64:96].reshape(4, 32, 32, 3)  # rows of A | G(A) | B, 32 px each
    assert [int(target.mean()) // 16 for target in targets] == [0, 4, 8, 12]


@pytest.mark.numeric
def test_bf16_falls_back_to_fp32_with_a_warning_where_the_cpu_would_emulate_it(
    label_dataset, tmp_path, monkeypatch, caplog
):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    native_bf16.cache_clear()
    try:
        config = tiny_config(
            label_dataset, tmp_path, **LABELS, **{"train.max_steps": "1", "train.precision": "bf16"}
        )
        with caplog.at_level(logging.WARNING, logger="training.loop.trainer"):
            trainer = Trainer(config, progress=False)
    finally:
        monkeypatch.undo()
        native_bf16.cache_clear()
    assert trainer.amp_dtype is None
    assert "no bf16 instructions" in caplog.text and "training in fp32" in caplog.text


def test_native_bf16_follows_the_cpu_flags_and_the_onednn_cap(monkeypatch):
    monkeypatch.setattr(cpu_features, "_cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    for cap, expected in [
        ("", True),
        ("ALL", True),
        ("AVX512_CORE_AMX", True),
        ("AVX2", False),
        ("AVX512_CORE", False),
        ("avx512_core_bf16", True),
    ]:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
        native_bf16.cache_clear()
        assert native_bf16() is expected, cap
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "")
    monkeypatch.setattr(cpu_features, "_cpu_flags", lambda: {"avx2", "avx512f"})
    native_bf16.cache_clear()
    assert native_bf16() is False
    monkeypatch.setattr(cpu_features, "_cpu_flags", lambda: None)  # no /proc/cpuinfo
    native_bf16.cache_clear()
    assert native_bf16() is True
    native_bf16.cache_clear()


@pytest.mark.numeric
def test_moving_average_is_what_validation_and_checkpoints_show(
    label_dataset, tmp_path, monkeypatch
):
    overrides = {"train.max_steps": "5", "train.ema_decay": "0.9"}
    config = tiny_config(label_dataset, tmp_path, **LABELS, **overrides)
    trainer = Trainer(config, progress=False)
    average = {name: p.detach().clone() for name, p in trainer.generator.named_parameters()}
    updates = []  # (step, the generator's parameters) at each update of the average
    update = trainer_module.update_average

    def recording(average, generator, step, decay):
        parameters = {name: p.detach().clone() for name, p in generator.named_parameters()}
        updates.append((step, parameters))
        update(average, generator, step, decay)

    monkeypatch.setattr(trainer_module, "update_average", recording)
    trainer.train()
    assert [step for step, _ in updates] == [0, 1, 2, 3, 4]  # once per step
    for step, parameters in updates:
        decay = min(0.9, (1 + step) / (10 + step))  # 0.1 at first: the warm-up
        average = {name: decay * average[name] + (1 - decay) * p for name, p in parameters.items()}

    folder = latest_checkpoint(config.run_dir / "checkpoints")
    served = load_file(str(folder / "generator.safetensors"))
    raw = load_file(str(folder / "generator_raw.safetensors"))
    for name, expected in average.items():
        # lerp rounds once per update where the formula above rounds three times.
        torch.testing.assert_close(served[name], expected, rtol=1e-5, atol=1e-7, msg=name)
        assert torch.equal(raw[name], updates[-1][1][name])
    assert any(not torch.equal(served[name], raw[name]) for name in average)
    statistics = [name for name in served if "running" in name]
    assert statistics and all(torch.equal(served[name], raw[name]) for name in statistics)
    served_generator, _ = load_generator(config.run_dir)
    assert all(
        torch.equal(tensor, served[name]) for name, tensor in served_generator.state_dict().items()
    )

    # Validation scores the average: the raw generator given the average's weights agrees.
    scored = trainer.validate(save_grid=False)["val_l1"]
    trainer.generator.load_state_dict(trainer.generator_ema.state_dict())
    trainer.generator_ema = None
    assert trainer.validate(save_grid=False)["val_l1"] == scored


def test_validation_reports_psnr_per_pair_in_the_networks_value_range(label_dataset, tmp_path):
    trainer = Trainer(tiny_config(label_dataset, tmp_path, **LABELS), progress=False)

    class Zeros(torch.nn.Module):
        def forward(self, inputs):
            return torch.zeros(len(inputs), 3, *inputs.shape[2:])

    scores = trainer.validator(Zeros(), grid_path=None)
    targets = [trainer.val_set[i]["B"] for i in range(len(trainer.val_set))]
    expected = np.mean([10 * np.log10(4.0 / float(b.square().mean())) for b in targets])
    assert scores["val_psnr"] == pytest.approx(expected, abs=1e-3)
    assert scores["val_l1"] == pytest.approx(float(torch.stack(targets).abs().mean()), abs=1e-5)
