"""Paired augmentation with albumentations: A and B always get the same geometric transform."""

from __future__ import annotations

import os

# albumentations otherwise asks the network for its latest version at every import.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as albu
import cv2

from training.config import DataConfig


def build_transform(config: DataConfig, train: bool, label_input: bool) -> albu.Compose:
    """Resize/crop/flip for training; a plain resize to the crop size for val and test.

    Call with ``image=B`` and ``mask=A`` when A is a label map (masks are resized with
    nearest-neighbour, so class ids never blend), otherwise with ``image=A`` and ``target=B``.
    """
    size = config.crop_size
    steps: list[albu.BasicTransform] = []
    if train:
        if config.preprocess == "resize_and_crop":
            steps.append(albu.Resize(config.load_size, config.load_size, cv2.INTER_CUBIC))
            steps.append(albu.RandomCrop(size, size))
        elif config.preprocess == "crop":
            steps.append(albu.PadIfNeeded(size, size, border_mode=cv2.BORDER_REFLECT_101))
            steps.append(albu.RandomCrop(size, size))
        else:
            steps.append(albu.Resize(size, size, cv2.INTER_CUBIC))
        if config.flip:
            steps.append(albu.HorizontalFlip(p=0.5))
    else:
        steps.append(albu.Resize(size, size, cv2.INTER_AREA))
    # Resize's mask_interpolation defaults to nearest-neighbour; label maps rely on it.
    targets = {} if label_input else {"target": "image"}
    return albu.Compose(steps, additional_targets=targets)
