"""scikit-learn's handwritten digits (1797 8x8 grayscale images): the offline quickstart.

The images ship with scikit-learn, so nothing is downloaded and ``data_dir``/``download`` do not
exist here. The test split is a fixed 20% held out once (stratified by class, random_state 0,
360 images), independent of ``split_seed``, so every run is tested on the same images; the
remaining 1437 are split into train/val by ``val_fraction`` and ``split_seed``. Pixels (0..16) are
scaled to [0, 1] and normalised with the mean/std of the training split.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset

from pruning_lightning.data.base import ImageDataModule, split_indices
from pruning_lightning.errors import ConfigError

DIGITS_TEST_FRACTION = 0.2
DIGITS_TEST_SEED = 0


@cache
def digits_splits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dev_images, dev_labels, test_images, test_labels)``; images (N, 1, 8, 8) in [0, 1]."""
    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    dev, test = train_test_split(
        np.arange(len(labels)),
        test_size=DIGITS_TEST_FRACTION,
        random_state=DIGITS_TEST_SEED,
        stratify=bunch.target,
    )
    dev, test = torch.from_numpy(np.sort(dev)), torch.from_numpy(np.sort(test))
    return images[dev], labels[dev], images[test], labels[test]


class TensorImages(Dataset):
    """``(image tensor, int label)`` pairs held in memory."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])


class DigitsDataModule(ImageDataModule):
    """Handwritten digits, 8x8, 1 channel, 10 classes; in memory, so fast on a CPU."""

    crop_padding = 1
    horizontal_flip = False  # a mirrored digit is a different (or no) digit
    normalize_in_loader = True  # float pixels in memory: nothing to decode, nothing to save

    def __init__(
        self,
        batch_size: int = 128,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        augment: bool = True,
        train_subset: int | None = None,
        channels: int = 1,
    ) -> None:
        """Digits data module.

        Args:
            batch_size: Images per batch, for every split.
            num_workers: Loader worker processes; 0 (default) is fastest for in-memory data.
            val_fraction: Fraction of the 1437 non-test images held out for validation, in (0, 1).
            split_seed: Seed of the train/val split and of train_subset (not the global seed).
            augment: Random crop with padding 1 on the training split (no flips on digits).
            train_subset: Use only this many non-test images (seeded choice, before the split).
            channels: 1 (grayscale), or 3 to repeat the gray channel, for networks with an RGB
                stem such as torchvision's.
        """
        if channels not in (1, 3):
            raise ConfigError(f"--data.channels must be 1 or 3, got {channels!r}.")
        super().__init__(batch_size, num_workers, val_fraction, split_seed, augment, train_subset)
        self.channels = channels
        self._stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    @property
    def num_classes(self) -> int:
        return 10

    @property
    def in_channels(self) -> int:
        return self.channels

    @property
    def image_size(self) -> int:
        return 8

    @property
    def mean(self) -> tuple[float, ...]:
        return self._train_stats()[0]

    @property
    def std(self) -> tuple[float, ...]:
        return self._train_stats()[1]

    def _train_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Pixel mean/std of the training split (the same split setup builds: it is seeded)."""
        if self._stats is None:
            images = digits_splits()[0]
            train_idx, _ = split_indices(
                len(images), self.val_fraction, self.split_seed, self.train_subset
            )
            train = images[train_idx].double()
            mean, std = train.mean().item(), train.std().item()
            self._stats = ((mean,) * self.channels, (std,) * self.channels)
        return self._stats

    def _load_train(self) -> Dataset:
        images, labels, _, _ = digits_splits()
        return TensorImages(images.repeat(1, self.channels, 1, 1), labels)

    def _load_test(self) -> Dataset:
        _, _, images, labels = digits_splits()
        return TensorImages(images.repeat(1, self.channels, 1, 1), labels)
