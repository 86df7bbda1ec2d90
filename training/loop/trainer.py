"""The pix2pix training loop: one explicit D step and G step per iteration, a self-describing run.

The trainer holds the networks, optimizers, scalers and the learning-rate schedule and runs the
iteration. The losses are named terms (``terms``); checkpoints (``checkpointing``), validation,
the run directory and the sampler live in modules of their own.
"""

from __future__ import annotations

import copy
import logging
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from model.checkpoint import CHECKPOINTS_DIR, latest_checkpoint
from training.config import Config, ConfigError
from training.data.datasets import PairedDataset, make_spec
from training.errors import DataError, TrainingError
from training.loop import checkpointing, distributed, optim, run_directory, tracking
from training.loop.devices import autocast_dtype, select_device
from training.loop.discriminator_augment import PairAugment
from training.loop.meter import IntervalMeter
from training.loop.monitor import MonitorSettings, TrainingMonitor
from training.loop.networks import build_networks, update_average
from training.loop.pool import HistoryPool
from training.loop.reporting import Reporter
from training.loop.run_directory import load_run_config
from training.loop.sampling import training_loader
from training.loop.terms import Losses, TermContext, build_objective
from training.loop.validation import Recalibration, Validator

logger = logging.getLogger(__name__)

__all__ = ["Trainer", "autocast_dtype", "load_run_config", "select_device", "train"]

# The Trainer's attributes whose state_dict a checkpoint's training state holds.
OPTIMIZATION_STATE = ("optimizer_g", "optimizer_d", "scheduler_g", "scheduler_d")
OPTIMIZATION_STATE += ("scaler_d", "scaler_g")


class Trainer:
    """Builds everything a run needs from its config and runs the loop."""

    def __init__(self, config: Config, resume: bool = False, progress: bool = True):
        self.config, self.progress, self.run_dir = config, progress, config.run_dir
        train = config.train
        # Joins the process group when launched by torchrun; a no-op otherwise.
        self.dist, device_name = distributed.setup(train.device)
        self.device = select_device(device_name)
        self._check_settings()
        # A tracker that is not installed stops the run here, before it trains.
        self.trackers = tracking.build_trackers(train.trackers, active=self.dist.is_main)
        self.amp_dtype = autocast_dtype(train.precision, self.device)
        random.seed(config.seed)
        np.random.seed(config.seed % 2**32)
        torch.manual_seed(config.seed)
        if train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.spec = make_spec(config)
        self._load_data()
        self._build_networks()
        self._build_optimizers()
        context = self._wrap_networks()
        self.pool = HistoryPool(train.pool_size, torch.Generator().manual_seed(config.seed))
        self.objective = build_objective(context, PairAugment(train.d_augment_policy))
        patience, min_delta = train.early_stop_patience, train.early_stop_min_delta
        settings = MonitorSettings(early_stop_patience=patience, early_stop_min_delta=min_delta)
        self.monitor = TrainingMonitor(settings, adversarial=self.objective.adversarial)
        self.step = 0
        self.sampler, self.loader = training_loader(
            self.train_set, config, self.steps_per_epoch, self.dist, self.device
        )
        self._start_run_dir(resume)

    # -- setup -----------------------------------------------------------------------------

    def _check_settings(self) -> None:
        train, generator = self.config.train, self.config.generator
        if train.sync_batchnorm and self.dist.enabled and self.device.type == "cpu":
            raise ConfigError("train.sync_batchnorm needs CUDA; use norm = 'instance' on the CPU")
        if generator.per_sample_statistics and train.batch_size > 1:
            logger.warning(
                "generator.inference_mode = %r normalizes each image by its own statistics at "
                "inference, but train.batch_size = %d normalizes over the batch in training; "
                "they agree at batch size 1",
                generator.inference_mode,
                train.batch_size,
            )

    def _load_data(self) -> None:
        config, train = self.config, self.config.train
        self.train_set = PairedDataset(
            config.data, "train", self.spec, train=True, seed=config.seed
        )
        self.val_set = PairedDataset(config.data, "val", self.spec, train=False, seed=config.seed)
        # batch_size is per process; one step consumes batch_size x world_size pairs.
        global_batch = train.batch_size * self.dist.world_size
        if len(self.train_set) < global_batch:
            raise DataError(
                f"{config.data.root}/train has {len(self.train_set)} pairs, fewer than "
                f"train.batch_size = {train.batch_size} x {self.dist.world_size} processes"
            )
        self.steps_per_epoch = len(self.train_set) // global_batch
        self.total_steps = (train.epochs + train.epochs_decay) * self.steps_per_epoch
        if train.max_steps:
            self.total_steps = min(self.total_steps or train.max_steps, train.max_steps)
        prepare = self._to_device
        self.validator = Validator(
            self.val_set, self.spec, train.batch_size, train.val_images, prepare, self.autocast
        )
        self.recalibration = None
        if train.recalibrate_bn:
            # Training pairs as they are served: whole, at the training size.
            pairs = PairedDataset(config.data, "train", self.spec, train=False, seed=config.seed)
            self.recalibration = Recalibration(pairs, train.recalibrate_bn, prepare)

    def _build_networks(self) -> None:
        config, train = self.config, self.config.train
        self.generator, self.discriminators = build_networks(config, self.spec)
        if train.sync_batchnorm:
            self.generator = distributed.sync_batchnorm(self.generator, self.dist)
            for name, module in self.discriminators.items():
                self.discriminators[name] = distributed.sync_batchnorm(module, self.dist)
        if self.dist.enabled:
            # Same initial weights everywhere (DDP also broadcasts them), but each rank draws
            # its own dropout masks.
            torch.manual_seed(config.seed + self.dist.rank)
        self.memory_format = torch.channels_last if train.channels_last else torch.preserve_format
        for network in (self.generator, *self.discriminators.values()):
            network.to(self.device, memory_format=self.memory_format)
        # The moving average of the generator's weights (train.ema_decay), which validation,
        # samples and the checkpoints' servable weights use; None when off. Every rank keeps
        # one: DDP leaves the same weights everywhere, so the averages agree too (batch-norm
        # statistics are each rank's own, as in the generator itself).
        self.generator_ema = None
        if train.ema_decay > 0:
            self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False)

    @property
    def discriminator(self) -> nn.Module:
        """The conditional PatchGAN (a multi-scale one with ``discriminator.num_scales``)."""
        return self.discriminators["discriminator"]

    def _build_optimizers(self) -> None:
        train = self.config.train
        # The fused kernel reads and writes each parameter's state once per step; on the CPU it
        # was 3x faster than foreach and 5x faster than per-parameter Adam (bench/train.py).
        # ``optim.Adam`` spares it the copies of channels-last weights.
        fused = self.device.type in ("cuda", "cpu")
        adam = {"lr": train.lr, "betas": (train.beta1, train.beta2)}
        adam.update({"fused": True} if fused else {"foreach": True})
        self.optimizer_g = optim.Adam(self.generator.parameters(), **adam)
        # Every discriminator joins D's optimizer; each term's loss touches only its own.
        weights = [w for network in self.discriminators.values() for w in network.parameters()]
        self.optimizer_d = optim.Adam(weights, **adam | {"lr": train.lr_d or train.lr})
        self.scheduler_g = torch.optim.lr_scheduler.LambdaLR(self.optimizer_g, self.lr_factor)
        self.scheduler_d = torch.optim.lr_scheduler.LambdaLR(self.optimizer_d, self.lr_factor)
        # One scaler per network: D's and G's losses differ in size, and a scaler steps each
        # optimizer once per update, so D's updates after each of its train.d_steps steps.
        scaling = train.precision == "fp16"
        self.scaler_d = torch.amp.GradScaler(self.device.type, enabled=scaling)
        self.scaler_g = torch.amp.GradScaler(self.device.type, enabled=scaling)

    def _wrap_networks(self) -> TermContext:
        """The modules the iteration runs: DDP-wrapped when distributed, compiled when asked.
        G's step reaches the discriminators through the bare modules when distributed: their
        weights are frozen there, so there is nothing for DDP to reduce."""
        compile_ = torch.compile if self.config.train.compile else (lambda module: module)
        self.generator_forward = compile_(distributed.wrap(self.generator, self.dist, self.device))
        eager = {
            name: distributed.wrap(module, self.dist, self.device)
            for name, module in self.discriminators.items()
        }
        trained = {name: compile_(module) for name, module in eager.items()}
        frozen = trained
        if self.dist.enabled:
            frozen = {name: compile_(module) for name, module in self.discriminators.items()}
        return TermContext(
            self.config, self.spec, self.device, self.train_set, trained, eager, frozen,
            self.autocast,
        )  # fmt: skip

    def lr_factor(self, step: int) -> float:
        """Constant for ``epochs``, then linear decay to zero over ``epochs_decay``."""
        constant = self.config.train.epochs * self.steps_per_epoch
        decay = self.config.train.epochs_decay * self.steps_per_epoch
        if step < constant or decay == 0:
            return 1.0
        return max(0.0, 1.0 - (step - constant) / decay)

    def _start_run_dir(self, resume: bool) -> None:
        run_directory.check_start(self.run_dir, resume)
        if resume:
            self.load_checkpoint(latest_checkpoint(self.run_dir / CHECKPOINTS_DIR))
            return
        # Every rank has checked before rank 0 creates the directory.
        self.dist.barrier()
        if self.dist.is_main:
            run_directory.create(self.run_dir, self.config, self.spec)

    # -- the iteration ---------------------------------------------------------------------

    def autocast(self) -> torch.autocast:
        enabled = self.amp_dtype is not None
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=enabled)

    def train_step(self, real_a: torch.Tensor, real_b: torch.Tensor) -> Losses:
        """One pix2pix iteration; returns its losses and statistics by name, on the device."""
        bin_logits = None
        with self.autocast():
            if self.config.train.color_loss == "classification":
                # D and L1 judge the bins decoded by the annealed mean, the ab the served
                # model returns.
                bin_logits = self.generator_forward(real_a, logits=True)
                fake_b = self.generator.decode(bin_logits)
            else:
                fake_b = self.generator_forward(real_a)
        stats = (
            self.discriminator_update(real_a, real_b, fake_b) if self.objective.adversarial else {}
        )
        stats |= self.generator_update(real_a, real_b, fake_b, bin_logits)
        self.scheduler_g.step()
        if self.objective.adversarial:
            self.scheduler_d.step()
        return stats

    def discriminator_update(self, real_a, real_b, fake_b) -> Losses:
        """``train.d_steps`` updates of the discriminators on real pairs and generated ones,
        ``detach``ed so that no update reaches into G; the statistics are their mean."""
        d_steps = self.config.train.d_steps
        for network in self.discriminators.values():
            network.requires_grad_(True)
        # Asked once per iteration: every D step sees the same pairs, and the pool stores each
        # generated pair once.
        pool_a, pool_fake = self.pool.query(real_a, fake_b.detach())
        sums = dict.fromkeys(self.objective.discriminator_names, 0.0)
        for d_step in range(d_steps):
            self.optimizer_d.zero_grad(set_to_none=True)
            number = self.step * d_steps + d_step
            losses = self.objective.discriminator_losses(real_a, real_b, pool_a, pool_fake, number)
            self.scaler_d.scale(self.objective.total(losses)).backward()
            self.scaler_d.step(self.optimizer_d)
            self.scaler_d.update()
            for name, value in losses.items():
                sums[name] = sums[name] + value.detach() / d_steps
        zero = torch.zeros((), device=self.device)
        return {name: value if torch.is_tensor(value) else zero for name, value in sums.items()}

    def generator_update(self, real_a, real_b, fake_b, bin_logits) -> Losses:
        """One update of G: fool the frozen discriminators and stay close to B."""
        self.optimizer_g.zero_grad(set_to_none=True)
        for network in self.discriminators.values():
            network.requires_grad_(False)
        self.objective.follow_schedule(self.lr_factor(self.step))
        losses = self.objective.generator_losses(real_a, real_b, fake_b, bin_logits)
        self.scaler_g.scale(self.objective.total(losses)).backward()
        self.scaler_g.step(self.optimizer_g)
        self.scaler_g.update()
        if self.generator_ema is not None:
            decay = self.config.train.ema_decay
            update_average(self.generator_ema, self.generator, self.step, decay)
        return {name: value.detach() for name, value in losses.items()}

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.device, non_blocking=True).contiguous(
            memory_format=self.memory_format
        )

    def batches(self) -> Iterator[tuple[int, dict]]:
        """(epoch, batch) from the current step on, across epochs, until total_steps."""
        epoch, position = divmod(self.step, self.steps_per_epoch)
        self.sampler.set_position(epoch, position * self.config.train.batch_size)
        loader = iter(self.loader)
        while self.step < self.total_steps:
            yield self.step // self.steps_per_epoch, next(loader)

    # -- the loop --------------------------------------------------------------------------

    def train(self) -> dict:
        """Run until ``total_steps``; returns a summary of the final state."""
        train = self.config.train
        self.generator.train()
        for network in self.discriminators.values():
            network.train()
        world = self.dist.world_size
        names = self.objective.names
        interval = IntervalMeter(names, self.device, train.batch_size * world, world)
        nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        self.last_logged: dict = {}
        precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]
        logger.info(
            "training %s on %s (%s): %d steps, %d per epoch, batch %d x %d processes",
            *(self.config.name, self.device, precision, self.total_steps, self.steps_per_epoch),
            *(train.batch_size, world),
        )
        self.reporter = Reporter(
            self.config, self.trackers, self.dist.is_main, self.step, self.total_steps,
            self.progress,
        )  # fmt: skip
        with self.reporter:
            for epoch, batch in interval.timed(self.batches()):
                real_a, real_b = self._to_device(batch["A"]), self._to_device(batch["B"])
                stats = self.train_step(real_a, real_b)
                values = torch.stack([stats[name] for name in names])
                nonfinite |= ~torch.isfinite(values).all()
                interval.add(values)
                self.step += 1
                self.reporter.advance()
                if self._after_step(epoch, interval, nonfinite):
                    break
        return {
            "step": self.step,
            "run_dir": str(self.run_dir),
            **self.validate(save_grid=False),
            "last": self.last_logged,
            "warnings": self.monitor.warnings,
        }

    def _after_step(self, epoch, interval, nonfinite) -> bool:
        """Log, validate and checkpoint where the step calls for it; True to stop early."""
        train, step, per_epoch = self.config.train, self.step, self.steps_per_epoch
        last = step == self.total_steps
        at_log = step % train.log_every == 0 or last
        at_sample = step % train.sample_every == 0 or last
        at_save = step % train.save_every == 0 or last
        at_epoch_end = step % per_epoch == 0
        keep_epoch = (
            at_epoch_end and train.save_epochs > 0 and (step // per_epoch) % train.save_epochs == 0
        )
        # Reading the flag syncs with the device, so only where it matters: before anything
        # is logged or saved.
        if (at_log or at_save or at_epoch_end) and self.dist.any(nonfinite):
            raise TrainingError(
                f"loss became NaN or inf before step {step}; stopped. The last good checkpoint "
                f"is kept in {self.run_dir / CHECKPOINTS_DIR}. Try a lower train.lr, "
                "train.precision = 'fp32', or check the data"
            )
        if at_log:
            self._log_interval(epoch, interval)
        stop_early = False
        if at_sample:
            validation = {"kind": "val", "step": step, **self.validate(save_grid=True)}
            self.reporter.validation_record(validation)
            stop = self.monitor.observe_validation(validation)
            stop_early = self.dist.any(torch.tensor(stop, device=self.device))
        if at_save or keep_epoch or stop_early:
            # What a kill after this checkpoint would lose is only what a resume logs again.
            self.reporter.flush()
        if at_save or keep_epoch:
            self.save_checkpoint(keep_as_epoch=keep_epoch)
        if stop_early:
            if not at_save:
                self.save_checkpoint()
            logger.info("stopped early at step %d: val L1 stopped improving", step)
            return True
        if at_log:
            # Validation and checkpoints count against neither images/s nor data wait.
            interval.restart()
        return False

    def _log_interval(self, epoch: int, interval: IntervalMeter) -> None:
        record = {"kind": "train", "step": self.step, "epoch": epoch}
        record.update(interval.means(self.dist.sum))
        record["lr"] = self.scheduler_g.get_last_lr()[0]
        if self.config.train.lr_d:
            record["lr_d"] = self.scheduler_d.get_last_lr()[0]
        record.update(interval.rates())
        record.update(self.monitor.observe_train(record))
        self.reporter.train_record(record)
        self.last_logged = record

    # -- validation and checkpoints ---------------------------------------------------------

    @property
    def servable_generator(self) -> nn.Module:
        """What validation, samples and checkpoints' model folders show: the average if kept."""
        return self.generator if self.generator_ema is None else self.generator_ema

    def recalibrate_batch_norm(self) -> None:
        """``train.recalibrate_bn``: the served generator's batch-norm statistics measured on
        itself (once per step)."""
        if self.recalibration is not None:
            self.recalibration(self.servable_generator, self.step)
            self.generator.train()

    def validate(self, save_grid: bool) -> dict:
        """Val L1 of the served generator and, with ``save_grid``, a sample grid. Every rank
        validates (SyncBatchNorm in train mode needs all of them); rank 0 writes."""
        self.recalibrate_batch_norm()
        grid = run_directory.sample_grid_path(self.run_dir, self.step)
        result = self.validator(
            self.servable_generator, grid if save_grid and self.dist.is_main else None
        )
        self.generator.train()
        return result

    def save_checkpoint(self, keep_as_epoch: bool = False) -> Path:
        checkpoints = self.run_dir / CHECKPOINTS_DIR
        epoch = self.step // self.steps_per_epoch
        name = f"epoch_{epoch:04d}" if keep_as_epoch else f"step_{self.step:08d}"
        self.recalibrate_batch_norm()
        # Each rank's RNG (its dropout stream), so that a resumed run continues every rank.
        rng_ranks = self.dist.gather(checkpointing.rng_state(self.device))
        if not self.dist.is_main:
            return checkpoints / name
        resumable = {key: getattr(self, key) for key in (*OPTIMIZATION_STATE, "monitor")}
        state = checkpointing.training_state(self.step, resumable, self.pool.random, self.device)
        if self.dist.enabled:
            state["rng_ranks"] = rng_ranks
        raw = self.generator if self.generator_ema is not None else None
        return checkpointing.write(
            checkpoints, name, self.step, self.servable_generator, raw, self.discriminators,
            self.spec, state,
        )  # fmt: skip

    def load_checkpoint(self, folder: Path) -> None:
        checkpoint = checkpointing.read(folder, tuple(self.discriminators), self.spec)
        checkpointing.load_generators(folder, checkpoint, self.generator, self.generator_ema)
        for name, weights in checkpoint.discriminators.items():
            self.discriminators[name].load_state_dict(weights)
        resumable = {key: getattr(self, key) for key in (*OPTIMIZATION_STATE, "monitor")}
        checkpointing.restore_training_state(checkpoint.state, resumable, self.pool.random)
        checkpointing.restore_rng(checkpoint.state, self.dist, self.device)
        self.step = int(checkpoint.state["step"])
        logger.info("resumed %s at step %d from %s", self.config.name, self.step, folder)


def train(config: Config, resume: bool = False, progress: bool = True) -> dict:
    try:
        trainer = Trainer(config, resume=resume, progress=progress)
        if trainer.step >= trainer.total_steps:
            logger.info("run %s is already complete at step %d", config.name, trainer.step)
        return trainer.train()
    finally:
        distributed.teardown()
