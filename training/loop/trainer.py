"""The pix2pix training loop: one explicit D step and G step per iteration, a self-describing run.

A run directory ``runs/<name>/`` holds ``config.toml``, ``spec.json``, ``metrics.jsonl``,
``samples/`` (A | G(A) | B grids from a fixed validation batch) and ``checkpoints/``. Each
checkpoint is a model folder (``generator.safetensors`` + ``spec.json``) plus the
discriminator and the full training state, so ``--resume`` continues exactly. With
``train.ema_decay`` the model folder's weights are the moving average of the generator's, and
the weights that training continues from sit beside them in ``generator_raw.safetensors``.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import pickle
import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from model.atomic_files import write_text_atomic
from model.checkpoint import (
    CHECKPOINTS_DIR,
    GENERATOR_WEIGHTS,
    CheckpointError,
    apply_inference_mode,
    latest_checkpoint,
    publish_latest,
    save_tensors_atomic,
    state_dict_for_saving,
    write_checkpoint_folder,
)
from model.color_bins import ab_bins
from model.cpu_features import native_bf16
from model.networks import (
    SemanticDiscriminator,
    build_discriminator,
    build_generator,
    init_weights,
    spectral_normalize,
    use_sample_statistics,
)
from model.processing import decode_output, input_preview, rgb_to_lab
from model.recalibration import RECALIBRATION_BATCH, recalibrate_batch_norm
from model.spec import SPEC_FILENAME, GeneratorSpec
from training.config import SEMANTIC_LEVELS, Config, ConfigError, config_from_dict
from training.data.datasets import PairedDataset, make_spec
from training.errors import DataError, TrainingError
from training.loop import distributed, optim
from training.loop.color_loss import ColorClassificationLoss, estimate_prior
from training.loop.losses import (
    GANLoss,
    HistoryPool,
    PairAugment,
    R1Penalty,
    SemanticLoss,
    feature_matching_loss,
)
from training.loop.meter import IntervalMeter
from training.loop.monitor import MonitorSettings, TrainingMonitor

logger = logging.getLogger(__name__)

DISCRIMINATOR_WEIGHTS = "discriminator.safetensors"
SEMANTIC_WEIGHTS = "semantic_discriminator.safetensors"  # with train.lambda_semantic only
RAW_GENERATOR_WEIGHTS = "generator_raw.safetensors"  # with train.ema_decay only
TRAINING_STATE = "training_state.pt"
CONFIG_FILENAME = "config.toml"
METRICS_FILENAME = "metrics.jsonl"


def select_device(name: str) -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an explicit name must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device = {name!r}, but CUDA is not available here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"train.device = {name!r}, but MPS is not available here")
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "fp32":
        return None
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("train.precision = 'fp16' needs a GPU; use 'bf16' on the CPU")
    if precision == "bf16" and device.type == "cpu" and not native_bf16():
        # Emulated bf16 ran 0.7x (AVX-512) to 0.06x (AVX2) the speed of fp32 in bench/train.py.
        logger.warning(
            "train.precision = 'bf16' asked for, but this CPU has no bf16 instructions "
            "(AVX512-BF16 or AMX), where bf16 is emulated and slower than fp32: training in fp32"
        )
        return None
    return torch.bfloat16 if precision == "bf16" else torch.float16


class EpochSampler(Sampler[tuple[int, int]]):
    """(epoch, index) pairs: a seeded permutation per epoch, epoch after epoch without end,
    starting from any position (for exact resume).

    Each epoch yields ``per_epoch`` indices (whole batches; the rest is dropped), so batches
    never straddle epochs and the loader's workers stream on across epoch boundaries. With
    several processes, every rank draws the same permutation and takes every
    ``world_size``-th index from ``rank`` on, like DistributedSampler, but it can resume
    mid-epoch; the ranks' batches of one step together hold exactly what one process at the
    global batch size would see.
    """

    def __init__(
        self,
        size: int,
        seed: int,
        per_epoch: int | None = None,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.size = size
        self.seed = seed
        self.per_epoch = size // world_size if per_epoch is None else per_epoch
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start = 0

    def set_position(self, epoch: int, start: int) -> None:
        self.epoch, self.start = epoch, start

    def epoch_order(self, epoch: int) -> list[int]:
        """This rank's indices for one epoch."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        shard = order[: self.size - self.size % self.world_size][self.rank :: self.world_size]
        return shard[: self.per_epoch]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, start = self.epoch, self.start
        while True:
            for index in self.epoch_order(epoch)[start:]:
                yield epoch, index
            epoch, start = epoch + 1, 0


class EpochIndexed(Dataset):
    """Looks up EpochSampler's (epoch, index) pairs, setting the dataset's epoch first: the
    augmentation seed then follows the epoch even inside persistent worker processes."""

    def __init__(self, dataset: PairedDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        self.dataset.set_epoch(epoch)
        return self.dataset[index]


# Per-step scalars, kept on the device until a logging interval reads them.
STAT_NAMES = ("G_GAN", "G_L1", "D_real", "D_fake", "D_acc_real", "D_acc_fake")
# With train.color_loss = "classification", the rebalanced cross-entropy follows them.
CLASSIFICATION_STAT = "G_class"
# With train.lambda_feat, the feature-matching loss; with train.r1_gamma, the R1 term that D's
# loss gained, per D step (0 on the steps between its lazy updates).
FEATURE_MATCHING_STAT = "G_feat"
R1_STAT = "D_r1"
# With train.lambda_semantic: G's and D's cross-entropy under the segmenting discriminator, and
# the share of real pixels it labels with their map's class.
SEMANTIC_STATS = ("G_sem", "D_sem", "D_sem_acc")
# Training images the color prior of the classification loss is counted over.
PRIOR_IMAGES = 256
# The Trainer's attributes whose state_dict a checkpoint's training state holds.
OPTIMIZATION_STATE = (
    "optimizer_g",
    "optimizer_d",
    "scheduler_g",
    "scheduler_d",
    "scaler_d",
    "scaler_g",
)


def _append_record(metrics_file, record: dict) -> None:
    # Flushed at once: metrics.jsonl is what a person tails while the run goes on.
    metrics_file.write(json.dumps(record) + "\n")
    metrics_file.flush()


def spread(count: int, size: int) -> list[int]:
    """``count`` indices of ``range(size)`` (``count <= size``), evenly spaced from 0."""
    return [position * size // count for position in range(count)]


class Trainer:
    """Builds everything a run needs from its config and runs the loop."""

    def __init__(self, config: Config, resume: bool = False, progress: bool = True):
        self.config = config
        self.progress = progress
        self.run_dir = config.run_dir
        train = config.train
        # Joins the process group when launched by torchrun; a no-op otherwise.
        self.dist, device_name = distributed.setup(train.device)
        self.device = select_device(device_name)
        if train.sync_batchnorm and self.dist.enabled and self.device.type == "cpu":
            raise ConfigError("train.sync_batchnorm needs CUDA; use norm = 'instance' on the CPU")
        if config.generator.per_sample_statistics and train.batch_size > 1:
            logger.warning(
                "generator.inference_mode = %r normalizes each image by its own statistics at "
                "inference, but train.batch_size = %d normalizes over the batch in training; "
                "they agree at batch size 1",
                config.generator.inference_mode,
                train.batch_size,
            )
        self.amp_dtype = autocast_dtype(train.precision, self.device)
        random.seed(config.seed)
        np.random.seed(config.seed % 2**32)
        torch.manual_seed(config.seed)
        if train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)

        self.spec = make_spec(config)
        self.train_set = PairedDataset(
            config.data, "train", self.spec, train=True, seed=config.seed
        )
        self.val_set = PairedDataset(config.data, "val", self.spec, train=False, seed=config.seed)
        # train.recalibrate_bn: training pairs as they are served (whole, at the training size).
        self.recalibration_set = None
        if train.recalibrate_bn:
            self.recalibration_set = PairedDataset(
                config.data, "train", self.spec, train=False, seed=config.seed
            )
        self._recalibrated_at = -1
        batch_size = train.batch_size
        # batch_size is per process; one step consumes batch_size x world_size pairs.
        global_batch = batch_size * self.dist.world_size
        if len(self.train_set) < global_batch:
            raise DataError(
                f"{config.data.root}/train has {len(self.train_set)} pairs, fewer than "
                f"train.batch_size = {batch_size} x {self.dist.world_size} processes"
            )
        self.steps_per_epoch = len(self.train_set) // global_batch
        self.total_steps = (train.epochs + train.epochs_decay) * self.steps_per_epoch
        if train.max_steps:
            self.total_steps = min(self.total_steps or train.max_steps, train.max_steps)

        self.generator = build_generator(
            self.spec.architecture, self.spec.in_channels, self.spec.out_channels
        )
        self.discriminator = build_discriminator(
            in_channels=self.spec.in_channels + self.spec.out_channels,
            base_width=config.discriminator.base_width,
            n_layers=config.discriminator.n_layers,
            norm=config.discriminator.norm,
            num_scales=config.discriminator.num_scales,
        )
        init_weights(self.generator)
        init_weights(self.discriminator)
        if config.discriminator.spectral_norm:
            spectral_normalize(self.discriminator)  # after the init, which it would undo
        # OASIS's segmenting discriminator (train.lambda_semantic): the map's one-hot channels
        # are its classes. It joins D's optimizer; its loss touches only its own weights.
        self.semantic = None
        if train.lambda_semantic > 0:
            self.semantic = SemanticDiscriminator(
                self.spec.out_channels,
                num_classes=self.spec.in_channels,
                base_width=config.discriminator.semantic_width,
                levels=SEMANTIC_LEVELS,
            )
            init_weights(self.semantic)
            spectral_normalize(self.semantic)
        if train.sync_batchnorm:
            self.generator = distributed.sync_batchnorm(self.generator, self.dist)
            self.discriminator = distributed.sync_batchnorm(self.discriminator, self.dist)
        if self.dist.enabled:
            # Same initial weights everywhere (DDP also broadcasts them), but each rank draws
            # its own dropout masks.
            torch.manual_seed(config.seed + self.dist.rank)
        self.memory_format = torch.channels_last if train.channels_last else torch.preserve_format
        self.generator.to(self.device, memory_format=self.memory_format)
        self.discriminator.to(self.device, memory_format=self.memory_format)
        if self.semantic is not None:
            self.semantic.to(self.device, memory_format=self.memory_format)
        # The moving average of the generator's weights (train.ema_decay), which validation,
        # samples and the checkpoints' servable weights use; None when off. Every rank keeps
        # one: DDP leaves the same weights everywhere, so the averages agree too (batch-norm
        # statistics are each rank's own, as in the generator itself).
        self.generator_ema = None
        if train.ema_decay > 0:
            self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False)

        # The fused kernel reads and writes each parameter's state once per step; on the CPU it
        # was 3x faster than foreach and 5x faster than per-parameter Adam (bench/train.py).
        # ``optim.Adam`` spares it the copies of channels-last weights.
        fused = self.device.type in ("cuda", "cpu")
        adam = {"lr": train.lr, "betas": (train.beta1, train.beta2)}
        adam.update({"fused": True} if fused else {"foreach": True})
        self.optimizer_g = optim.Adam(self.generator.parameters(), **adam)
        discriminator_weights = list(self.discriminator.parameters())
        if self.semantic is not None:
            discriminator_weights += list(self.semantic.parameters())
        self.optimizer_d = optim.Adam(
            discriminator_weights, **adam | {"lr": train.lr_d or train.lr}
        )
        self.scheduler_g = torch.optim.lr_scheduler.LambdaLR(self.optimizer_g, self.lr_factor)
        self.scheduler_d = torch.optim.lr_scheduler.LambdaLR(self.optimizer_d, self.lr_factor)
        # One scaler per network: D's and G's losses differ in size, and a scaler steps each
        # optimizer once per update, so D's updates after each of its train.d_steps steps.
        scaling = train.precision == "fp16"
        self.scaler_d = torch.amp.GradScaler(self.device.type, enabled=scaling)
        self.scaler_g = torch.amp.GradScaler(self.device.type, enabled=scaling)
        self.gan_loss = GANLoss(train.gan_mode)
        self.color_classification = None
        self.stat_names = STAT_NAMES
        if train.color_loss == "classification":
            self.color_classification = self._color_classification_loss()
            self.stat_names += (CLASSIFICATION_STAT,)
        if train.lambda_feat > 0:
            self.stat_names += (FEATURE_MATCHING_STAT,)
        self.r1 = R1Penalty(train.r1_gamma, train.r1_every)
        if train.r1_gamma > 0:
            self.stat_names += (R1_STAT,)
        self.semantic_loss = SemanticLoss(self._semantic_ignore())
        if self.semantic is not None:
            self.stat_names += SEMANTIC_STATS
        self.augment = PairAugment(train.d_augment_policy)
        self.pool = HistoryPool(train.pool_size, torch.Generator().manual_seed(config.seed))
        self.monitor = TrainingMonitor(
            MonitorSettings(
                early_stop_patience=train.early_stop_patience,
                early_stop_min_delta=train.early_stop_min_delta,
            ),
            adversarial=train.lambda_gan > 0,
        )
        self.step = 0

        # The *_step modules run the iteration: DDP-wrapped when distributed, compiled when
        # asked. The generator step reaches D through the bare module: D's weights are frozen
        # there, so there is nothing for DDP to reduce.
        self.generator_step = distributed.wrap(self.generator, self.dist, self.device)
        self.discriminator_step = distributed.wrap(self.discriminator, self.dist, self.device)
        # R1 differentiates D's gradient, which compiled modules cannot: it stays eager.
        self.discriminator_r1 = self.discriminator_step
        if train.compile:
            self.generator_step = torch.compile(self.generator_step)
            self.discriminator_step = torch.compile(self.discriminator_step)
        self.discriminator_frozen = self.discriminator_step
        self.semantic_step = None
        if self.semantic is not None:
            self.semantic_step = distributed.wrap(self.semantic, self.dist, self.device)
            if train.compile:
                self.semantic_step = torch.compile(self.semantic_step)
        if self.dist.enabled:
            frozen = self.discriminator
            self.discriminator_frozen = torch.compile(frozen) if train.compile else frozen

        self.sampler = EpochSampler(
            len(self.train_set),
            config.seed,
            per_epoch=self.steps_per_epoch * batch_size,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        )
        # Workers persist and the sampler runs across epochs, so an epoch boundary costs no
        # worker start-up and no empty prefetch queue (with 400 images at batch 64 on a GPU
        # that was every 6 steps).
        self.loader = DataLoader(
            EpochIndexed(self.train_set),
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=config.data.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=config.data.num_workers > 0,
            prefetch_factor=4 if config.data.num_workers else None,
            # A private generator keeps the global torch RNG (dropout) independent of loading.
            generator=torch.Generator().manual_seed(config.seed),
        )
        self._prepare_run_dir(resume)

    # -- setup -----------------------------------------------------------------------------

    def _color_classification_loss(self) -> ColorClassificationLoss:
        """The rebalanced loss, its prior counted over training images spread evenly over the
        split, as augmented in the first epoch."""
        grid = self.spec.architecture.ab_grid
        centers = ab_bins(grid)
        indices = spread(min(PRIOR_IMAGES, len(self.train_set)), len(self.train_set))
        targets = (rgb_to_lab(self.train_set.arrays(index)[1])[..., 1:] for index in indices)
        prior = estimate_prior(targets, centers, grid)
        logger.info(
            "color classification: %d ab bins; prior over %d pixels of %d training images has "
            "entropy %.2f bits (uniform %.2f); rebalancing weights %.2f..%.2f",
            prior.num_bins,
            prior.pixels,
            prior.images,
            prior.entropy_bits,
            np.log2(prior.num_bins),
            prior.weights.min(),
            prior.weights.max(),
        )
        return ColorClassificationLoss(centers, prior.weights, grid, device=self.device)

    def _semantic_ignore(self) -> tuple[int, ...]:
        """The one-hot channels of train.semantic_ignore's class names."""
        names = [label.name for label in self.spec.palette]
        unknown = [n for n in self.config.train.semantic_ignore_names if n not in names]
        if unknown:
            raise ConfigError(
                f"train.semantic_ignore names {', '.join(map(repr, unknown))}, not a class of "
                f"the palette ({', '.join(names) or 'no palette'})"
            )
        return tuple(names.index(n) for n in self.config.train.semantic_ignore_names)

    def lr_factor(self, step: int) -> float:
        """Constant for ``epochs``, then linear decay to zero over ``epochs_decay``."""
        constant = self.config.train.epochs * self.steps_per_epoch
        decay = self.config.train.epochs_decay * self.steps_per_epoch
        if step < constant or decay == 0:
            return 1.0
        return max(0.0, 1.0 - (step - constant) / decay)

    def _prepare_run_dir(self, resume: bool) -> None:
        checkpoints = self.run_dir / CHECKPOINTS_DIR
        has_checkpoint = (checkpoints / "latest").is_file()
        if resume:
            if not has_checkpoint:
                raise TrainingError(
                    f"{self.run_dir}: nothing to resume (no checkpoints/latest); start it "
                    "again without --resume"
                )
            self.load_checkpoint(latest_checkpoint(checkpoints))
            return
        if has_checkpoint:
            raise TrainingError(
                f"{self.run_dir} already exists: pass --resume to continue it, or choose "
                "another --name"
            )
        if self.run_dir.exists() and any(self.run_dir.iterdir()):
            # A run stopped before its first checkpoint holds nothing worth keeping.
            logger.warning("%s has no checkpoint yet; starting it afresh", self.run_dir)
            if self.dist.is_main:
                (self.run_dir / METRICS_FILENAME).unlink(missing_ok=True)
                shutil.rmtree(self.run_dir / "samples", ignore_errors=True)
        # Every rank has checked before rank 0 creates the directory.
        self.dist.barrier()
        if not self.dist.is_main:
            return
        (self.run_dir / "samples").mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.run_dir / CONFIG_FILENAME, self.config.to_toml())
        self.spec.save(self.run_dir / SPEC_FILENAME)

    # -- the iteration ---------------------------------------------------------------------

    def autocast(self) -> torch.autocast:
        enabled = self.amp_dtype is not None
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=enabled)

    def train_step(self, real_a: torch.Tensor, real_b: torch.Tensor) -> torch.Tensor:
        """One pix2pix iteration; returns the step's scalars stacked, still on the device."""
        train = self.config.train
        adversarial = train.lambda_gan > 0
        zero = torch.zeros((), device=self.device)
        with self.autocast():
            if self.color_classification is None:
                fake_b = self.generator_step(real_a)
            else:
                # Bin logits for the classification loss; D and L1 judge them decoded by the
                # annealed mean, the ab that the served model returns.
                logits = self.generator_step(real_a, logits=True)
                fake_b = self.generator.decode(logits)

        # Discriminator: real pairs should score real, generated pairs fake. ``detach`` keeps
        # this update from reaching into the generator.
        loss_d_real = loss_d_fake = accuracy_real = accuracy_fake = loss_d_r1 = zero
        loss_d_semantic = accuracy_semantic = zero
        if adversarial:
            self.discriminator.requires_grad_(True)
            if self.semantic is not None:
                self.semantic.requires_grad_(True)
            # Asked once per iteration: every D step sees the same pairs, and the pool stores
            # each generated pair once.
            pool_a, pool_fake = self.pool.query(real_a, fake_b.detach())
            for d_step in range(train.d_steps):
                self.optimizer_d.zero_grad(set_to_none=True)
                judged_fake, judged_real = (pool_a, pool_fake), (real_a, real_b)
                if self.augment:
                    judged_fake = self.augment(*judged_fake, self.augment.draw(pool_fake))
                    judged_real = self.augment(*judged_real, self.augment.draw(real_b))
                with self.autocast():
                    logits_fake = self.discriminator_step(*judged_fake)
                    logits_real = self.discriminator_step(*judged_real)
                loss_d_fake = self.gan_loss.discriminator(logits_fake, real=False)
                loss_d_real = self.gan_loss.discriminator(logits_real, real=True)
                loss_d = 0.5 * (loss_d_fake + loss_d_real)
                if self.semantic is not None:
                    # Undisturbed by d_augment: the classes are read pixel by pixel from A.
                    with self.autocast():
                        semantic_fake = self.semantic_step(pool_fake)
                        semantic_real = self.semantic_step(real_b)
                    loss_d_semantic = 0.5 * (
                        self.semantic_loss.fake(semantic_fake, pool_a)
                        + self.semantic_loss.real(semantic_real, real_a)
                    )
                    loss_d = loss_d + loss_d_semantic
                # The lazy R1 penalty, on its own fp32 pass over the real pairs; D steps are
                # counted over the run, so a resumed run keeps the rhythm.
                if self.r1.due(self.step * train.d_steps + d_step):
                    penalty = self.r1(self.discriminator_r1, real_a, real_b)
                    loss_d = loss_d + penalty
                    loss_d_r1 = loss_d_r1 + penalty.detach() / train.d_steps
                self.scaler_d.scale(loss_d).backward()
                self.scaler_d.step(self.optimizer_d)
                self.scaler_d.update()
            accuracy_real = self.gan_loss.accuracy(logits_real, real=True)
            accuracy_fake = self.gan_loss.accuracy(logits_fake, real=False)
            if self.semantic is not None:
                accuracy_semantic = self.semantic_loss.accuracy(semantic_real, real_a)

        # Generator: fool the (frozen) discriminator and stay close to B in L1.
        # With feature matching, also match D's activations on the real pair (targets only).
        self.optimizer_g.zero_grad(set_to_none=True)
        feature_matching = train.lambda_feat > 0
        loss_g_gan = loss_g_feat = loss_g_semantic = zero
        if adversarial:
            self.discriminator.requires_grad_(False)
            if self.semantic is not None:
                self.semantic.requires_grad_(False)
                with self.autocast():
                    semantic_fooled = self.semantic(fake_b)
                loss_g_semantic = self.semantic_loss.real(semantic_fooled, real_a)
            judged_fake, judged_real = (real_a, fake_b), (real_a, real_b)
            if self.augment:
                # One draw for both pairs: feature matching compares them position by position.
                draws = self.augment.draw(fake_b)
                judged_fake = self.augment(*judged_fake, draws)
                judged_real = self.augment(*judged_real, draws)
            with self.autocast():
                if feature_matching:
                    with torch.no_grad():
                        _, features_real = self.discriminator_frozen(*judged_real, features=True)
                    logits_fooled, features_fake = self.discriminator_frozen(
                        *judged_fake, features=True
                    )
                else:
                    logits_fooled = self.discriminator_frozen(*judged_fake)
            loss_g_gan = self.gan_loss.generator(logits_fooled)
            if feature_matching:
                loss_g_feat = feature_matching_loss(features_fake, features_real)
        loss_g_l1 = torch.nn.functional.l1_loss(fake_b.float(), real_b)
        loss_g = train.lambda_gan * loss_g_gan + train.lambda_l1 * loss_g_l1
        if feature_matching:
            loss_g = loss_g + train.lambda_feat * loss_g_feat
        if self.semantic is not None:
            loss_g = loss_g + train.lambda_semantic * loss_g_semantic
        if self.color_classification is not None:
            loss_g_class = self.color_classification(logits, real_b)
            loss_g = loss_g + train.lambda_classification * loss_g_class
        self.scaler_g.scale(loss_g).backward()
        self.scaler_g.step(self.optimizer_g)
        self.scaler_g.update()
        if self.generator_ema is not None:
            self.update_ema()
        self.scheduler_g.step()
        if adversarial:
            self.scheduler_d.step()
        stats = [loss_g_gan, loss_g_l1, loss_d_real, loss_d_fake, accuracy_real, accuracy_fake]
        if self.color_classification is not None:
            stats.append(loss_g_class)
        if feature_matching:
            stats.append(loss_g_feat)
        if self.r1.gamma > 0:
            stats.append(loss_d_r1)
        if self.semantic is not None:
            stats += [loss_g_semantic, loss_d_semantic, accuracy_semantic]
        return torch.stack(stats).detach()

    @torch.no_grad()
    def update_ema(self) -> None:
        """Move the average a step towards the generator's new weights.

        The decay ramps up as (1 + step) / (10 + step) to ``train.ema_decay``: at a fixed
        0.999 the random initial weights would still make up 37% of the average after 1000
        steps.
        """
        step = self.step  # updates done before this one
        decay = min(self.config.train.ema_decay, (1 + step) / (10 + step))
        pairs = zip(self.generator_ema.parameters(), self.generator.parameters(), strict=True)
        for average, weight in pairs:
            average.lerp_(weight, 1.0 - decay)
        # Batch-norm running statistics are copied, not averaged: they are already a moving
        # average, of the activations of the generator that sees the training batches, and an
        # average of that average would lag a thousand steps behind. (The step counter in
        # num_batches_tracked cannot be averaged at all.)
        pairs = zip(self.generator_ema.buffers(), self.generator.buffers(), strict=True)
        for average, buffer in pairs:
            average.copy_(buffer)

    def recalibrate_batch_norm(self) -> None:
        """Set the served generator's batch-norm statistics to its own over training pairs as
        served (``train.recalibrate_bn``; see ``model.recalibration``). In fp32, as served;
        every rank runs it alike."""
        if self.recalibration_set is None or self._recalibrated_at == self.step:
            return
        pairs = self.recalibration_set
        indices = spread(min(self.config.train.recalibrate_bn, len(pairs)), len(pairs))

        def batches() -> Iterator[torch.Tensor]:
            for start in range(0, len(indices), RECALIBRATION_BATCH):
                chunk = indices[start : start + RECALIBRATION_BATCH]
                yield self._to_device(torch.stack([pairs[i]["A"] for i in chunk]))

        recalibrate_batch_norm(self.servable_generator, batches)
        self.generator.train()
        self._recalibrated_at = self.step
        logger.debug("batch-norm statistics re-estimated over %d training pairs", len(indices))

    @property
    def servable_generator(self) -> torch.nn.Module:
        """What validation, samples and checkpoints' model folders show: the average if kept."""
        return self.generator if self.generator_ema is None else self.generator_ema

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

    def train(self) -> dict:
        """Run until ``total_steps``; returns a summary of the final state."""
        train = self.config.train
        self.generator.train()
        self.discriminator.train()
        # Only rank 0 writes the log; the others run the same code into the void.
        metrics_path = self.run_dir / METRICS_FILENAME if self.dist.is_main else Path(os.devnull)
        world = self.dist.world_size
        interval = IntervalMeter(self.stat_names, self.device, train.batch_size * world, world)
        nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        last_logged: dict = {}
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            disable=not self.progress or not self.dist.is_main,
            desc=self.config.name,
            unit="step",
            dynamic_ncols=True,
        )
        logger.info(
            "training %s on %s (%s): %d steps, %d per epoch, batch %d x %d processes",
            self.config.name,
            self.device,
            {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype],
            self.total_steps,
            self.steps_per_epoch,
            train.batch_size,
            world,
        )
        with open(metrics_path, "a", encoding="utf-8") as metrics_file:
            for epoch, batch in interval.timed(self.batches()):
                real_a, real_b = self._to_device(batch["A"]), self._to_device(batch["B"])
                stats = self.train_step(real_a, real_b)
                nonfinite |= ~torch.isfinite(stats[:4]).all()
                interval.add(stats)
                self.step += 1
                bar.update(1)

                last = self.step == self.total_steps
                at_log = self.step % train.log_every == 0 or last
                at_sample = self.step % train.sample_every == 0 or last
                at_save = self.step % train.save_every == 0 or last
                at_epoch_end = self.step % self.steps_per_epoch == 0
                keep_epoch = (
                    at_epoch_end
                    and train.save_epochs > 0
                    and (self.step // self.steps_per_epoch) % train.save_epochs == 0
                )
                # Reading the flag syncs with the device, so only where it matters: before
                # anything is logged or saved.
                if (at_log or at_save or at_epoch_end) and self.dist.any(nonfinite):
                    raise TrainingError(
                        f"loss became NaN or inf before step {self.step}; stopped. The last "
                        f"good checkpoint is kept in {self.run_dir / CHECKPOINTS_DIR}. Try a "
                        "lower train.lr, train.precision = 'fp32', or check the data"
                    )
                if at_log:
                    record = {"kind": "train", "step": self.step, "epoch": epoch}
                    record.update(interval.means(self.dist.sum))
                    record["lr"] = self.scheduler_g.get_last_lr()[0]
                    if train.lr_d:
                        record["lr_d"] = self.scheduler_d.get_last_lr()[0]
                    record.update(interval.rates())
                    record.update(self.monitor.observe_train(record))
                    _append_record(metrics_file, record)
                    last_logged = record
                    bar.set_postfix(
                        G_GAN=f"{record['G_GAN']:.3f}",
                        G_L1=f"{record['G_L1']:.3f}",
                        D=f"{(record['D_real'] + record['D_fake']) / 2:.3f}",
                        img_s=f"{record['images_per_s']:.1f}",
                    )
                stop_early = False
                if at_sample:
                    validation = {"kind": "val", "step": self.step, **self.validate(save_grid=True)}
                    _append_record(metrics_file, validation)
                    stop = self.monitor.observe_validation(validation)
                    stop_early = self.dist.any(torch.tensor(stop, device=self.device))
                if at_save or keep_epoch:
                    self.save_checkpoint(keep_as_epoch=keep_epoch)
                if stop_early:
                    if not at_save:
                        self.save_checkpoint()
                    logger.info("stopped early at step %d: val L1 stopped improving", self.step)
                    break
                if at_log:
                    # Validation and checkpoints count against neither images/s nor data wait.
                    interval.restart()
        bar.close()
        return {
            "step": self.step,
            "run_dir": str(self.run_dir),
            **self.validate(save_grid=False),
            "last": last_logged,
            "warnings": self.monitor.warnings,
        }

    # -- validation and samples ------------------------------------------------------------

    @torch.no_grad()
    def validate(self, save_grid: bool) -> dict:
        """Val L1 over up to 64 validation pairs; optionally a grid of ``train.val_images``.

        Both are spread evenly over the split: on a dataset of video frames the first pairs
        would be near-identical frames of one scene. Every rank validates (SyncBatchNorm in
        train mode needs all of them); rank 0 writes.
        """
        save_grid = save_grid and self.dist.is_main
        self.recalibrate_batch_norm()
        generator = self.servable_generator
        apply_inference_mode(generator, self.spec.inference_mode)
        total, count, grid_rows = 0.0, 0, []
        indices = spread(min(len(self.val_set), 64), len(self.val_set))
        grid_size = min(self.config.train.val_images, len(indices))
        shown = {indices[i] for i in spread(grid_size, len(indices))} if save_grid else set()
        batch = max(1, min(self.config.train.batch_size, 16))
        for start in range(0, len(indices), batch):
            items = [self.val_set[i] for i in indices[start : start + batch]]
            real_a = self._to_device(torch.stack([item["A"] for item in items]))
            real_b = self._to_device(torch.stack([item["B"] for item in items]))
            with self.autocast():
                fake_b = generator(real_a)
            total += torch.nn.functional.l1_loss(fake_b.float(), real_b, reduction="sum").item()
            count += real_b.numel()
            for i, item in enumerate(items):
                if item["index"] in shown:
                    grid_rows.append(self._grid_row(item["index"], fake_b[i], real_b[i]))
        use_sample_statistics(generator, False)
        self.generator.train()
        if save_grid and grid_rows:
            grid = np.concatenate(grid_rows, axis=0)
            path = self.run_dir / "samples" / f"step_{self.step:08d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(grid).save(path)
        return {"val_l1": round(total / max(count, 1), 6)}

    def _grid_row(self, index: int, fake: torch.Tensor, real: torch.Tensor) -> np.ndarray:
        """A | G(A) | B for one validation pair, as the network saw it."""
        a_array, _ = self.val_set.arrays(index)
        out = decode_output(fake, self.spec, a_array)
        target = decode_output(real, self.spec, a_array)
        return np.concatenate([input_preview(a_array, self.spec), out, target], axis=1)

    # -- checkpoints -----------------------------------------------------------------------

    def save_checkpoint(self, keep_as_epoch: bool = False) -> Path:
        checkpoints = self.run_dir / CHECKPOINTS_DIR
        epoch = self.step // self.steps_per_epoch
        name = f"epoch_{epoch:04d}" if keep_as_epoch else f"step_{self.step:08d}"

        self.recalibrate_batch_norm()
        # Each rank's RNG (its dropout stream), so that a resumed run continues every rank.
        rng_ranks = self.dist.gather(self._rng_state())
        if not self.dist.is_main:
            return checkpoints / name

        def write(folder: Path) -> None:
            generator = state_dict_for_saving(self.servable_generator)
            save_tensors_atomic(generator, folder / GENERATOR_WEIGHTS)
            if self.generator_ema is not None:
                raw = state_dict_for_saving(self.generator)
                save_tensors_atomic(raw, folder / RAW_GENERATOR_WEIGHTS)
            save_tensors_atomic(
                state_dict_for_saving(self.discriminator), folder / DISCRIMINATOR_WEIGHTS
            )
            if self.semantic is not None:
                save_tensors_atomic(state_dict_for_saving(self.semantic), folder / SEMANTIC_WEIGHTS)
            self.spec.save(folder / SPEC_FILENAME)
            state = {
                "step": self.step,
                **{name: getattr(self, name).state_dict() for name in OPTIMIZATION_STATE},
                "rng": self._rng_state(),
                "pool_rng": self.pool.random.get_state() if self.pool.random is not None else None,
                "monitor": self.monitor.state_dict(),
            }
            if self.dist.enabled:
                state["rng_ranks"] = rng_ranks
            torch.save(state, folder / TRAINING_STATE)

        try:
            folder = write_checkpoint_folder(checkpoints, name, write)
            publish_latest(checkpoints, name)
        except OSError as error:
            pointer = checkpoints / "latest"
            kept = pointer.read_text(encoding="utf-8").strip() if pointer.is_file() else None
            raise CheckpointError(
                f"{checkpoints / name}: cannot write the checkpoint ({error}); stopped at step "
                f"{self.step}. "
                + (f"The previous checkpoint {kept} is kept." if kept else "No checkpoint yet.")
            ) from error
        for old in checkpoints.glob("step_*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)
        logger.debug("checkpoint %s written", folder)
        return folder

    def _rng_state(self) -> dict:
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return rng

    def load_checkpoint(self, folder: Path) -> None:
        semantic_path = folder / SEMANTIC_WEIGHTS
        if semantic_path.is_file() != (self.semantic is not None):
            raise TrainingError(
                f"{folder}: the checkpoint was trained "
                + ("with" if semantic_path.is_file() else "without")
                + " a semantic discriminator (train.lambda_semantic); resume with the "
                "run's own config.toml"
            )
        try:
            generator = load_file(str(folder / GENERATOR_WEIGHTS))
            raw_path = folder / RAW_GENERATOR_WEIGHTS
            raw = load_file(str(raw_path)) if raw_path.is_file() else None
            discriminator = load_file(str(folder / DISCRIMINATOR_WEIGHTS))
            semantic = load_file(str(semantic_path)) if self.semantic is not None else None
            state = torch.load(folder / TRAINING_STATE, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, SafetensorError, pickle.UnpicklingError) as error:
            raise CheckpointError(f"{folder}: cannot read checkpoint ({error})") from error
        saved_spec = GeneratorSpec.load(folder / SPEC_FILENAME)
        if saved_spec.to_dict() != self.spec.to_dict():
            raise TrainingError(
                f"{folder}: the checkpoint's spec differs from this config's; resume with the "
                "run's own config.toml"
            )
        # A checkpoint with an average holds the raw weights beside it; one without has only
        # the raw weights, from which a newly switched-on average starts.
        self.generator.load_state_dict(generator if raw is None else raw)
        if self.generator_ema is not None:
            self.generator_ema.load_state_dict(generator)
            if raw is None:
                logger.warning("%s has no moving average; it starts from these weights", folder)
        elif raw is not None:
            logger.warning("train.ema_decay is 0: the moving average in %s is dropped", folder)
        self.discriminator.load_state_dict(discriminator)
        if semantic is not None:
            self.semantic.load_state_dict(semantic)
        for name in OPTIMIZATION_STATE:
            # Checkpoints from before the split into two scalers hold one for both networks.
            saved = "scaler" if name.startswith("scaler") and name not in state else name
            getattr(self, name).load_state_dict(state[saved])
        rng = state["rng"]
        rng_ranks = state.get("rng_ranks") or [rng]
        if len(rng_ranks) == self.dist.world_size:
            rng = rng_ranks[self.dist.rank]
        else:
            logger.warning(
                "the checkpoint was written by %d processes, this run has %d: the dropout "
                "streams do not continue exactly",
                len(rng_ranks),
                self.dist.world_size,
            )
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        if state.get("pool_rng") is not None and self.pool.random is not None:
            self.pool.random.set_state(state["pool_rng"])
        self.step = int(state["step"])
        if "monitor" in state:
            self.monitor.load_state_dict(state["monitor"])
        logger.info("resumed %s at step %d from %s", self.config.name, self.step, folder)


def load_run_config(run_dir: str | Path) -> Config:
    """The resolved config a run saved, for resuming it without its original command."""
    import tomllib

    path = Path(run_dir) / CONFIG_FILENAME
    if not path.is_file():
        raise ConfigError(f"{path}: not found; is {run_dir} a run directory?")
    return config_from_dict(tomllib.loads(path.read_text(encoding="utf-8")))


def train(config: Config, resume: bool = False, progress: bool = True) -> dict:
    try:
        trainer = Trainer(config, resume=resume, progress=progress)
        if trainer.step >= trainer.total_steps:
            logger.info("run %s is already complete at step %d", config.name, trainer.step)
        return trainer.train()
    finally:
        distributed.teardown()
