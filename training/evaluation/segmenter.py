"""The project's own segmentation network, for the FCN-score of label-map -> photo models.

The pix2pix paper judges generated street scenes by segmenting them with an FCN trained on real
photos: if a generated photo is realistic, the segmenter finds the classes of the label map it
was made from. We train our own small segmenter (a U-Net from ``model.networks`` with one output
channel per palette class and no tanh) on a dataset's real training photos -> label maps, with
cross-entropy. It travels as a folder: ``segmenter.safetensors`` + ``segmenter.json`` (palette,
architecture, training size and a note of how it was trained).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as functional
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from model.atomic_files import write_text_atomic
from model.checkpoint import save_tensors_atomic
from model.networks import UNetGenerator, init_weights
from model.processing import class_positions, encode_target
from model.spec import GeneratorArchitecture, GeneratorSpec, LabelClass
from training.config import DataConfig
from training.data.datasets import PairedDataset, discover_pairs, load_palette
from training.errors import DataError

logger = logging.getLogger(__name__)

SEGMENTER_WEIGHTS = "segmenter.safetensors"
SEGMENTER_SPEC = "segmenter.json"
DEFAULT_FOLDER = "segmenter"  # inside the dataset root, where ``evaluate`` looks first


@dataclass(frozen=True)
class SegmenterSpec:
    """What a segmenter needs to be rebuilt and used: palette, U-Net shape, input size."""

    palette: tuple[LabelClass, ...]
    size: int
    num_downs: int = 5
    base_width: int = 16
    trained: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.palette)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # the palette's classes as {"id", "name", "color"}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SegmenterSpec:
        return cls(
            palette=tuple(LabelClass.from_dict(c) for c in data["palette"]),
            size=int(data["size"]),
            num_downs=int(data["num_downs"]),
            base_width=int(data["base_width"]),
            trained=dict(data.get("trained", {})),
        )


def build_network(spec: SegmenterSpec) -> nn.Module:
    """A U-Net with one logit per class: the generator's shape without its final tanh."""
    network = UNetGenerator(
        in_channels=3,
        out_channels=spec.num_classes,
        num_downs=spec.num_downs,
        base_width=spec.base_width,
        norm="batch",
        dropout=False,
    )
    network.output[-1] = nn.Identity()
    return network


def _photo_spec(palette: tuple[LabelClass, ...], size: int) -> GeneratorSpec:
    """A label-map spec that lets PairedDataset decode (label map, photo) pairs for us."""
    return GeneratorSpec(
        architecture=GeneratorArchitecture(),
        in_channels=len(palette),
        out_channels=3,
        input_kind="label_map",
        palette=palette,
        one_hot=True,
        train_size=size,
    )


class Segmenter:
    """A trained segmenter: RGB photos in, class-id maps out."""

    def __init__(self, network: nn.Module, spec: SegmenterSpec, device: str | torch.device = "cpu"):
        self.network = network.to(device).eval().requires_grad_(False)
        self.spec = spec
        self.device = torch.device(device)
        self.ids = torch.tensor([c.id for c in spec.palette], dtype=torch.uint8)

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> Segmenter:
        folder = Path(folder)
        spec_path, weights = folder / SEGMENTER_SPEC, folder / SEGMENTER_WEIGHTS
        if not spec_path.is_file() or not weights.is_file():
            raise DataError(
                f"{folder}: not a segmenter folder (needs {SEGMENTER_SPEC} and "
                f"{SEGMENTER_WEIGHTS}); make one with `pix2pix segmenter train --data DIR`"
            )
        try:
            spec = SegmenterSpec.from_dict(json.loads(spec_path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise DataError(f"{spec_path}: invalid segmenter description ({error})") from error
        network = build_network(spec)
        try:
            network.load_state_dict(load_file(str(weights)))
        except (SafetensorError, OSError, RuntimeError) as error:
            raise DataError(f"{weights}: cannot load segmenter weights ({error})") from error
        return cls(network, spec, device)

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)  # made by the first write, as every atomic write makes its folder
        save_tensors_atomic(dict(self.network.state_dict()), folder / SEGMENTER_WEIGHTS)
        write_text_atomic(folder / SEGMENTER_SPEC, json.dumps(self.spec.to_dict(), indent=2) + "\n")
        return folder

    def check_palette(self, palette: tuple[LabelClass, ...], where: str) -> None:
        """The segmenter must know exactly the classes of the label maps it is scored on."""
        mine = [(c.id, c.color) for c in self.spec.palette]
        theirs = [(c.id, c.color) for c in palette]
        if mine != theirs:
            raise DataError(
                f"{where}: the segmenter's palette ({len(mine)} classes) differs from the "
                f"model's ({len(theirs)} classes); train a segmenter on this dataset"
            )

    @torch.inference_mode()
    def predict(self, photos: np.ndarray, batch_size: int = 16) -> np.ndarray:
        """uint8 RGB (N, H, W, 3) -> uint8 class ids (N, H, W).

        Photos are resized to the segmenter's training size (it learned objects at that
        scale), and the predicted map is resized back with nearest-neighbour.
        """
        height, width = photos.shape[1:3]
        size = (self.spec.size, self.spec.size)
        results = []
        for start in range(0, len(photos), batch_size):
            batch = torch.from_numpy(np.array(photos[start : start + batch_size]))
            batch = batch.permute(0, 3, 1, 2).float() / 127.5 - 1.0
            if (height, width) != size:
                batch = functional.interpolate(batch, size=size, mode="bilinear", antialias=True)
            # The training size is a multiple of 2**num_downs, so no padding is needed.
            logits = self.network(batch.to(self.device)).float().cpu()
            positions = logits.argmax(dim=1, keepdim=True).float()
            if (height, width) != size:
                positions = functional.interpolate(positions, size=(height, width), mode="nearest")
            results.append(self.ids[positions[:, 0].long()])
        return torch.cat(results).numpy()


class _SegmentationPairs(Dataset):
    """(photo tensor in [-1, 1], class-position map) pairs from a label-map dataset split."""

    def __init__(self, pairs: PairedDataset):
        self.pairs = pairs
        self.positions = class_positions(pairs.spec.palette)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        label_ids, photo = self.pairs.arrays(index)
        photo_tensor = torch.as_tensor(encode_target(photo, self.pairs.spec))
        return photo_tensor, torch.from_numpy(self.positions[label_ids])


def segmentation_data_config(
    root: str | Path,
    size: int,
    layout: str = "folders",
    direction: str = "AtoB",
    palette: str = "palette.json",
    tolerance: int = 0,
) -> DataConfig:
    """Label maps as A, photos as B, at ``size`` (train crops come from a 1.125x resize)."""
    config = DataConfig(
        root=str(root),
        layout=layout,
        direction=direction,
        input_kind="label_map",
        palette=palette,
        one_hot=True,
        palette_tolerance=tolerance,
        load_size=math.ceil(size * 1.125),
        crop_size=size,
        num_workers=0,
    )
    config.validate()
    return config


def first_image_size(config: DataConfig) -> int:
    """The height of the first training pair's photo: the default segmenter size."""
    pair = discover_pairs(config, "train")[0]
    with Image.open(pair.b_path or pair.a_path) as image:
        return image.height


def train_segmenter(
    data: DataConfig,
    out: str | Path,
    steps: int = 1500,
    batch_size: int = 8,
    base_width: int = 16,
    num_downs: int = 5,
    lr: float = 2e-3,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Train on ``data``'s train split (augmented like the generator) and save to ``out``.

    Adam with a cosine decay to zero; returns a summary with the real val-split scores.
    """
    if data.crop_size % 2**num_downs:
        raise DataError(
            f"segmenter size {data.crop_size} must be a multiple of 2**num_downs ({2**num_downs})"
        )
    torch.manual_seed(seed)
    palette = load_palette(data)
    photo_spec = _photo_spec(palette, data.crop_size)
    train_set = PairedDataset(data, "train", photo_spec, train=True, seed=seed)
    spec = SegmenterSpec(palette, data.crop_size, num_downs, base_width)
    network = build_network(spec)
    init_weights(network)
    network.to(device).train()
    optimizer = torch.optim.Adam(network.parameters(), lr=lr, betas=(0.9, 0.999))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step / steps, 1.0)))
    )
    loader = DataLoader(
        _SegmentationPairs(train_set),
        batch_size=batch_size,
        shuffle=True,
        drop_last=len(train_set) >= batch_size,
        num_workers=data.num_workers,
        generator=torch.Generator().manual_seed(seed),
    )
    started = time.perf_counter()
    running = _optimize(network, loader, train_set, optimizer, schedule, steps, device, progress)
    seconds = time.perf_counter() - started
    segmenter = Segmenter(network, spec, device)
    val_scores = score_real_photos(segmenter, data, "val")
    trained = {
        "data": str(data.root),
        "steps": steps,
        "batch_size": batch_size,
        "seconds": round(seconds, 1),
        "final_loss": round(running, 4),
        "val_pixel_accuracy": round(val_scores.pixel_accuracy, 4),
        "val_mean_iou": round(val_scores.mean_iou, 4),
    }
    segmenter.spec = replace(spec, trained=trained)
    segmenter.save(out)
    logger.info(
        "segmenter trained in %.0fs: val pixel accuracy %.3f, mean IoU %.3f -> %s",
        seconds,
        val_scores.pixel_accuracy,
        val_scores.mean_iou,
        out,
    )
    return {"out": str(out), **trained}


def _optimize(network, loader, train_set, optimizer, schedule, steps, device, progress) -> float:
    """``steps`` steps of cross-entropy over the loader, epoch after epoch; returns the
    smoothed final loss."""
    step, epoch, running = 0, 0, 0.0
    bar = tqdm(total=steps, disable=not progress, desc="segmenter", unit="step")
    while step < steps:
        train_set.set_epoch(epoch)
        epoch += 1
        for photos, positions in loader:
            logits = network(photos.to(device))
            loss = functional.cross_entropy(logits, positions.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            running = 0.98 * running + 0.02 * loss.item() if step > 1 else loss.item()
            bar.update(1)
            bar.set_postfix(loss=f"{running:.3f}")
            if step >= steps:
                break
    bar.close()
    return running


def score_real_photos(segmenter: Segmenter, data: DataConfig, split: str):
    """The segmenter's scores on a split's real photos (the FCN-score's upper bound)."""
    from training.evaluation.metrics import confusion_matrix, segmentation_scores

    pairs = PairedDataset(data, split, _photo_spec(segmenter.spec.palette, data.crop_size), False)
    lookup = class_positions(segmenter.spec.palette)
    confusion = np.zeros((segmenter.spec.num_classes,) * 2, dtype=np.int64)
    for index in range(len(pairs)):
        label_ids, photo = pairs.arrays(index)
        predicted = segmenter.predict(photo[None])[0]
        confusion += confusion_matrix(
            lookup[label_ids], lookup[predicted], segmenter.spec.num_classes
        )
    return segmentation_scores(confusion)
