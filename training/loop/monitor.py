"""Watching a GAN train: discriminator balance warnings and early stopping on the validation L1.

The trainer hands each logged interval to :meth:`TrainingMonitor.observe_train` and each
validation result to :meth:`TrainingMonitor.observe_validation`. The monitor adds the mean
discriminator accuracy, the G/D loss balance and the discriminator's state to the record, logs
a warning when the discriminator wins outright (accuracy above 0.95 on real and generated pairs
for several intervals in a row: the generator gets no useful gradient) or collapses (it calls
nearly everything real, or everything generated, or is worse than chance for several intervals),
and says when the validation L1 has stopped improving. It never touches the models, so it
costs nothing inside the step; it keeps its counters in a small state dict for resuming.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

OK, WINNING, COLLAPSED = "ok", "winning", "collapsed"


@dataclass(frozen=True)
class MonitorSettings:
    """Thresholds for the warnings and the early-stopping rule.

    - ``win_accuracy``: mean D accuracy above which D is winning outright.
    - ``collapse_accuracy``: D accuracy on real or on generated pairs below which D has
      collapsed onto one answer; ``chance_accuracy``: mean accuracy below which D does worse
      than guessing.
    - ``patience``: consecutive log intervals a condition must hold before it is reported.
    - ``early_stop_patience``: validations without val_l1 falling by more than
      ``early_stop_min_delta`` before training should stop (0 turns early stopping off).
    """

    win_accuracy: float = 0.95
    collapse_accuracy: float = 0.05
    chance_accuracy: float = 0.5
    patience: int = 5
    early_stop_patience: int = 0
    early_stop_min_delta: float = 0.0

    def __post_init__(self) -> None:
        if self.patience < 1:
            raise ValueError(f"patience must be at least 1, got {self.patience}")
        if self.early_stop_patience < 0 or self.early_stop_min_delta < 0:
            raise ValueError("early_stop_patience and early_stop_min_delta must be >= 0")


def discriminator_state(record: dict[str, Any], settings: MonitorSettings) -> str:
    """What one interval's D accuracies say: ``ok``, ``winning`` or ``collapsed``."""
    real, fake = float(record["D_acc_real"]), float(record["D_acc_fake"])
    mean = (real + fake) / 2.0
    if mean > settings.win_accuracy:
        return WINNING
    if min(real, fake) < settings.collapse_accuracy or mean < settings.chance_accuracy:
        return COLLAPSED
    return OK


class TrainingMonitor:
    """Reads the trainer's log records; warns about D balance and decides early stopping."""

    def __init__(self, settings: MonitorSettings | None = None, adversarial: bool = True):
        self.settings = settings or MonitorSettings()
        self.adversarial = adversarial
        self.state = OK
        self.streak = 0  # consecutive intervals in ``candidate``
        self.candidate = OK
        self.reported = OK  # the state last warned about, so a long episode warns once
        self.warnings: list[str] = []
        self.best: float | None = None
        self.best_step: int | None = None
        self.stale = 0  # validations since the best one
        self.stopped = False

    # -- training intervals ------------------------------------------------------------------

    def observe_train(self, record: dict[str, Any]) -> dict[str, Any]:
        """Fields to add to a ``kind: train`` record; logs a warning when D's state turns bad.

        Needs ``D_acc_real``, ``D_acc_fake``, ``G_GAN``, ``D_real`` and ``D_fake``. Without an
        adversarial term (``lambda_gan = 0``) there is no discriminator to watch.
        """
        if not self.adversarial:
            return {}
        settings = self.settings
        interval = discriminator_state(record, settings)
        if interval == self.candidate:
            self.streak += 1
        else:
            self.candidate, self.streak = interval, 1
        if self.streak >= settings.patience:
            self.state = self.candidate
        if self.state != self.reported:
            if self.state == OK:
                logger.info("step %s: the discriminator is back in balance", record.get("step"))
            else:
                message = self._message(record)
                self.warnings.append(message)
                logger.warning(message)
            self.reported = self.state
        accuracy = (float(record["D_acc_real"]) + float(record["D_acc_fake"])) / 2.0
        d_loss = (float(record["D_real"]) + float(record["D_fake"])) / 2.0
        balance = float(record["G_GAN"]) / d_loss if d_loss > 0 else math.inf
        return {
            "D_acc": round(accuracy, 6),
            "GD_balance": round(balance, 6) if math.isfinite(balance) else None,
            "D_state": self.state,
        }

    def _message(self, record: dict[str, Any]) -> str:
        settings = self.settings
        step = record.get("step", "?")
        real, fake = float(record["D_acc_real"]), float(record["D_acc_fake"])
        if self.state == WINNING:
            return (
                f"step {step}: the discriminator is winning outright (accuracy real {real:.2f}, "
                f"generated {fake:.2f}, above {settings.win_accuracy} for {self.streak} log "
                "intervals); the generator's adversarial gradient is vanishing. Consider "
                "train.gan_mode = 'lsgan', a smaller discriminator, or train.pool_size > 0"
            )
        return (
            f"step {step}: the discriminator has collapsed (accuracy real {real:.2f}, generated "
            f"{fake:.2f} for {self.streak} log intervals); it no longer tells real from "
            "generated, so the adversarial term is noise. Check the learning rates and "
            "lambda_gan, or resume from an earlier checkpoint"
        )

    # -- validation --------------------------------------------------------------------------

    def observe_validation(self, record: dict[str, Any]) -> bool:
        """Track val_l1 (lower is better); True once training should stop early."""
        settings = self.settings
        if self.stopped or "val_l1" not in record:
            return self.stopped
        value = float(record["val_l1"])
        if self.best is None or self.best - value > settings.early_stop_min_delta:
            self.best, self.best_step, self.stale = value, record.get("step"), 0
            return False
        self.stale += 1
        if settings.early_stop_patience and self.stale >= settings.early_stop_patience:
            logger.info(
                "early stop: val_l1 has not improved for %d validations (best %.6f at step %s)",
                self.stale,
                self.best,
                self.best_step,
            )
            self.stopped = True
        return self.stopped

    # -- resuming ----------------------------------------------------------------------------

    _STATE = ("state", "candidate", "streak", "reported", "best", "best_step", "stale", "stopped")

    def state_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self._STATE}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            if key not in self._STATE:
                raise KeyError(f"unknown monitor state {key!r}")
            setattr(self, key, value)
