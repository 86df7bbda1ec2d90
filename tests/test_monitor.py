"""The training monitor: discriminator balance warnings and early stopping."""

from __future__ import annotations

import logging

import pytest

from training.loop.monitor import (
    COLLAPSED,
    OK,
    WINNING,
    MonitorSettings,
    TrainingMonitor,
    discriminator_state,
)


def record(step: int, real: float, fake: float, g_gan: float = 1.0, d_loss: float = 0.5) -> dict:
    return {
        "kind": "train",
        "step": step,
        "G_GAN": g_gan,
        "D_real": d_loss,
        "D_fake": d_loss,
        "D_acc_real": real,
        "D_acc_fake": fake,
    }


def feed(monitor: TrainingMonitor, accuracies: list[tuple[float, float]], first_step: int = 50):
    return [
        monitor.observe_train(record(first_step + 50 * i, real, fake))
        for i, (real, fake) in enumerate(accuracies)
    ]


@pytest.mark.parametrize(
    ("real", "fake", "state"),
    [
        (0.97, 0.96, WINNING),
        (0.8, 0.7, OK),
        (1.0, 0.02, COLLAPSED),  # calls everything real
        (0.45, 0.4, COLLAPSED),  # worse than chance
    ],
)
def test_one_interval_is_classified_by_its_accuracies(real, fake, state):
    assert discriminator_state(record(1, real, fake), MonitorSettings()) == state


def test_the_record_gains_mean_accuracy_and_the_loss_balance():
    monitor = TrainingMonitor()
    fields = monitor.observe_train(record(50, 0.8, 0.6, g_gan=2.0, d_loss=0.5))
    assert fields == {"D_acc": pytest.approx(0.7), "GD_balance": pytest.approx(4.0), "D_state": OK}


def test_a_sustained_win_warns_once(caplog):
    monitor = TrainingMonitor(MonitorSettings(patience=3))
    with caplog.at_level(logging.WARNING, logger="training.loop.monitor"):
        states = [f["D_state"] for f in feed(monitor, [(0.99, 0.98)] * 6)]
    assert states == [OK, OK, WINNING, WINNING, WINNING, WINNING]
    assert len(monitor.warnings) == 1
    assert "winning outright" in monitor.warnings[0] and "step 150" in monitor.warnings[0]
    assert [r.levelname for r in caplog.records] == ["WARNING"]


def test_a_short_spike_does_not_warn():
    monitor = TrainingMonitor(MonitorSettings(patience=3))
    feed(monitor, [(0.99, 0.99), (0.99, 0.99), (0.8, 0.7), (0.99, 0.99), (0.99, 0.99)])
    assert monitor.warnings == []


def test_a_collapse_warns_and_a_new_episode_warns_again():
    monitor = TrainingMonitor(MonitorSettings(patience=2))
    states = feed(
        monitor,
        [(1.0, 0.01)] * 2 + [(0.8, 0.7)] * 2 + [(0.99, 0.99)] * 2,
    )
    assert [s["D_state"] for s in states] == [OK, COLLAPSED, COLLAPSED, OK, OK, WINNING]
    assert len(monitor.warnings) == 2
    assert "collapsed" in monitor.warnings[0] and "winning" in monitor.warnings[1]


def test_without_an_adversarial_term_there_is_nothing_to_watch():
    monitor = TrainingMonitor(adversarial=False)
    assert feed(monitor, [(0.0, 0.0)] * 10) == [{}] * 10
    assert monitor.warnings == []


def test_early_stop_after_patience_validations_without_improvement():
    monitor = TrainingMonitor(MonitorSettings(early_stop_patience=2, early_stop_min_delta=0.01))
    values = [0.30, 0.25, 0.245, 0.26, 0.242]  # 0.245 and 0.242 are within 0.01 of 0.25
    stops = [
        monitor.observe_validation({"step": 100 * i, "val_l1": v}) for i, v in enumerate(values)
    ]
    assert stops == [False, False, False, True, True]
    assert monitor.best == 0.25 and monitor.best_step == 100


def test_early_stopping_is_off_by_default_and_ignores_other_records():
    monitor = TrainingMonitor()
    assert not any(monitor.observe_validation({"step": i, "val_l1": 1.0}) for i in range(20))
    assert monitor.observe_validation({"step": 1, "other": 0.0}) is False


def test_state_survives_a_resume():
    settings = MonitorSettings(patience=2, early_stop_patience=2)
    monitor = TrainingMonitor(settings)
    feed(monitor, [(0.99, 0.99)] * 2)
    monitor.observe_validation({"step": 100, "val_l1": 0.2})
    monitor.observe_validation({"step": 200, "val_l1": 0.3})
    resumed = TrainingMonitor(settings)
    resumed.load_state_dict(monitor.state_dict())
    assert resumed.state == WINNING and resumed.best == 0.2
    assert resumed.observe_validation({"step": 300, "val_l1": 0.3}) is True
    # Still winning after the resume: no second warning for the same episode.
    feed(resumed, [(0.99, 0.99)])
    assert resumed.warnings == []


def test_settings_are_checked():
    with pytest.raises(ValueError, match="patience"):
        MonitorSettings(patience=0)
    with pytest.raises(ValueError, match="early_stop_patience"):
        MonitorSettings(early_stop_patience=-1)


def test_trainer_stops_early_and_records_the_discriminator_state(tmp_path):
    import json

    from tests.conftest import tiny_config, write_label_dataset
    from training.loop.trainer import Trainer

    root = write_label_dataset(tmp_path / "data")
    config = tiny_config(
        root,
        tmp_path,
        **{
            "data.input_kind": "label_map",
            "train.max_steps": "400",
            "train.sample_every": "5",
            "train.lr": "1e-7",  # val L1 cannot improve: the run must stop itself
            "train.early_stop_patience": "2",
            "train.early_stop_min_delta": "0.01",
        },
    )
    summary = Trainer(config, progress=False).train()
    assert summary["step"] < 400
    records = [
        json.loads(line) for line in (config.run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert any("D_state" in r for r in records if r["kind"] == "train")
