"""What every data module shares: argument checks, the seeded train/val split, transforms, loaders.

A subclass says where its images come from (``_load_train``/``_load_test`` return datasets of
``(PIL image or uint8/float tensor, int label)`` without transforms) and what they look like
(``num_classes``, ``in_channels``, ``image_size``, ``mean``, ``std``); this class turns them into
the four splits. The train and val subsets share one underlying dataset and differ only in their
transform, so the held-out images never see augmentation.

Decoded images leave the loaders as uint8 batches: decode, crop and flip happen in the workers,
the float conversion and normalisation on the device, in the classifier's first step
(:class:`~pruning_lightning.data.normalize.Normalize`, built from this module's ``mean``/``std``
by :meth:`ImageDataModule.normalizer`). A subclass whose images are floats already (the digits)
normalises them in the loader instead (``normalize_in_loader``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.trainer.states import TrainerFn
from PIL import Image
from torch.utils.data import DataLoader, Dataset, default_collate
from torchvision.transforms import v2
from torchvision.transforms.v2.functional import pil_to_tensor

from pruning_lightning.data.normalize import Normalize
from pruning_lightning.errors import ConfigError

try:  # torchvision 0.29 deprecates its image decoders; without them, PIL decodes
    from torchvision.io import ImageReadMode, decode_image, read_file
except ImportError:  # pragma: no cover - a future torchvision
    decode_image = None


def split_indices(
    n: int, val_fraction: float, seed: int, subset: int | None = None
) -> tuple[list[int], list[int]]:
    """Seeded (train, val) index lists over ``range(n)``, disjoint, each sorted.

    One permutation from a private generator (so the split does not depend on the global seed)
    picks the first ``subset`` images (all if None); of those, ``round(val_fraction * m)`` go to
    val, clamped to [1, m - 1] so neither side is ever empty.
    """
    if subset is not None and subset > n:
        raise ConfigError(
            f"train_subset={subset} exceeds the {n} images of the training set. "
            f"Pass --data.train_subset {n} or less, or leave it unset to use them all."
        )
    m = n if subset is None else subset
    if m < 2:
        raise ConfigError(
            f"The training set has {m} image(s); a train/val split needs at least 2. "
            "Point --data.data_dir at a larger copy or raise --data.train_subset."
        )
    generator = torch.Generator().manual_seed(seed)
    pool = torch.randperm(n, generator=generator)[:m].tolist()
    n_val = min(max(math.floor(val_fraction * m + 0.5), 1), m - 1)
    return sorted(pool[n_val:]), sorted(pool[:n_val])


def check_image_headers(paths: Iterable[str | Path]) -> None:
    """Open every image's header (no pixel decoding) so a broken file fails before training."""
    for path in paths:
        try:
            with Image.open(path):
                pass
        except (OSError, SyntaxError, ValueError) as err:
            raise ConfigError(
                f"Cannot read image '{path}': {err}. Replace or delete the file "
                "(or re-extract the dataset)."
            ) from err


def load_rgb(path: str) -> Image.Image:
    """PIL loader that converts to RGB (some Tiny ImageNet images are grayscale) and names the
    file when decoding fails, instead of a bare PIL error from inside a loader worker."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError) as err:
        raise ConfigError(
            f"Cannot decode image '{path}': {err}. Replace or delete the file "
            "(or re-extract the dataset)."
        ) from err


def decode_rgb(path: str) -> torch.Tensor:
    """An image file as a uint8 ``(3, H, W)`` RGB tensor.

    torchvision's decoder (libjpeg-turbo, grayscale and CMYK JPEGs and PNGs converted to RGB)
    gives PIL's pixels bit for bit (tested) but faster, and the tensor transforms after it skip
    a PIL image altogether: the ImageNet loader's worker then does about 1.25x the images/s. A
    format torchvision does not read (BMP, TIFF, ...) goes through PIL; a file neither reads
    stops with :func:`load_rgb`'s message, naming it. A torchvision without image decoders
    (they are deprecated since 0.29) leaves it all to PIL.
    """
    if decode_image is None:  # pragma: no cover - a future torchvision
        return pil_to_tensor(load_rgb(path))
    try:
        return decode_image(read_file(path), mode=ImageReadMode.RGB)
    except RuntimeError:
        return pil_to_tensor(load_rgb(path))


def collate_images(batch: Sequence[tuple[Any, ...]]) -> list[Any]:
    """``default_collate``, but uint8 images that lie height-width-channel in memory (what the
    JPEG decoder and the channels-last crop give) are stacked as they lie: a plain copy per image in
    the worker instead of a transposing one. The batch keeps its ``(N, C, H, W)`` shape;
    :class:`Normalize` makes it contiguous on the device, so the network sees the same tensor.
    """
    images = [sample[0] for sample in batch]
    if all(
        isinstance(x, torch.Tensor)
        and x.dtype == torch.uint8  # float batches reach the network as they are: contiguous
        and x.dim() == 3
        and x.permute(1, 2, 0).is_contiguous()
        and not x.is_contiguous()
        for x in images
    ):
        hwc = default_collate([(x.permute(1, 2, 0), *rest) for x, *rest in batch])
        return [hwc[0].permute(0, 3, 1, 2), *hwc[1:]]
    return default_collate(batch)


class ImageList(Dataset):
    """``(uint8 RGB tensor (3, H, W), label)`` decoded lazily (:func:`decode_rgb`) from
    ``(path, label)`` pairs.

    The paths are one numpy array rather than a list of str objects: loader workers read them
    without touching Python reference counts, so a 1.28M-image list is not copied page by page
    into every worker (copy-on-write).
    """

    def __init__(self, samples: Sequence[tuple[str, int]]) -> None:
        self.paths = np.array([path for path, _ in samples])
        self.labels = np.array([label for _, label in samples], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return decode_rgb(str(self.paths[i])), int(self.labels[i])


class TransformedSubset(Dataset):
    """``base[indices[i]]`` with ``transform`` applied to the image (all of ``base`` if None)."""

    def __init__(
        self, base: Dataset, indices: Sequence[int] | None, transform: Callable[[Any], Any]
    ) -> None:
        self.base = base
        self.indices = list(range(len(base))) if indices is None else list(indices)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[self.indices[i]]
        return self.transform(image), int(label)


class ImageDataModule(L.LightningDataModule):
    """Base class: validates the shared arguments and builds splits, transforms and loaders.

    Args:
        batch_size: Images per batch, for every split.
        num_workers: Loader worker processes (0 loads in the main process).
        val_fraction: Fraction of the training set held out for validation, in (0, 1).
        split_seed: Seed of the train/val split (and of train_subset), independent of the
            global seed.
        augment: Random crop and flip on the training split; False uses the eval transform.
        train_subset: Use only this many training images (seeded choice, before the split).
    """

    #: Zero padding of the training RandomCrop, and whether to flip horizontally.
    crop_padding: int = 4
    horizontal_flip: bool = True
    #: Normalise in the loader (float images, no decode) instead of on the device (uint8).
    normalize_in_loader: bool = False

    def __init__(
        self,
        batch_size: int = 128,
        num_workers: int = 2,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        augment: bool = True,
        train_subset: int | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}. Pass e.g. 128.")
        if num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0, got {num_workers}. Pass e.g. 2.")
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(
                f"val_fraction must lie strictly between 0 and 1, got {val_fraction}. "
                "Pass e.g. 0.1 to hold out 10% of the training set for validation."
            )
        if train_subset is not None and train_subset < 2:
            raise ConfigError(
                f"train_subset must be >= 2 (a train and a val image), got {train_subset}. "
                "Pass a larger number, or leave it unset to use the whole training set."
            )
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.augment = augment
        self.train_subset = train_subset
        self.train_dataset: TransformedSubset | None = None
        self.val_dataset: TransformedSubset | None = None
        self.test_dataset: TransformedSubset | None = None
        # Records every __init__ argument, the subclass's included, in checkpoints.
        self.save_hyperparameters()

    # --- what a subclass provides -------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """Number of classes (the classifier's output size)."""
        raise NotImplementedError

    @property
    def in_channels(self) -> int:
        """Channels of an input image."""
        raise NotImplementedError

    @property
    def image_size(self) -> int:
        """Side of a (square) input image, in pixels."""
        raise NotImplementedError

    @property
    def mean(self) -> tuple[float, ...]:
        """Per-channel mean used by Normalize."""
        raise NotImplementedError

    @property
    def std(self) -> tuple[float, ...]:
        """Per-channel standard deviation used by Normalize."""
        raise NotImplementedError

    def _load_train(self) -> Dataset:
        """The official training set, untransformed; raises ConfigError if it is missing."""
        raise NotImplementedError

    def _load_test(self) -> Dataset:
        """The official test split, untransformed; raises ConfigError if it is missing."""
        raise NotImplementedError

    # --- transforms ---------------------------------------------------------------------------
    def train_transform(self) -> v2.Compose:
        """RandomCrop(size, padding) + optional flip; uint8 out (see :meth:`_to_batch_tensor`)."""
        if not self.augment:
            return self.eval_transform()
        steps: list[Any] = [
            v2.ToImage(),
            v2.RandomCrop(self.image_size, padding=self.crop_padding),
        ]
        if self.horizontal_flip:
            steps.append(v2.RandomHorizontalFlip())
        return v2.Compose(steps + self._to_batch_tensor())

    def eval_transform(self) -> v2.Compose:
        """The image as a tensor, no randomness; uint8 out (see :meth:`_to_batch_tensor`)."""
        return v2.Compose([v2.ToImage(), *self._to_batch_tensor()])

    def _to_batch_tensor(self) -> list[Any]:
        """The last steps of every transform: a plain tensor, left uint8 for :meth:`normalizer`
        to scale and normalise on the device; scaled and normalised here when
        ``normalize_in_loader``."""
        if not self.normalize_in_loader:
            return [v2.ToPureTensor()]
        return [
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(self.mean, self.std),
            v2.ToPureTensor(),
        ]

    def normalizer(self) -> Normalize:
        """What turns this module's batches into the network's input, on whatever device they
        are: the classifier applies it first (float batches, e.g. the digits', pass unchanged)."""
        return Normalize(self.mean, self.std)

    # --- Lightning hooks ----------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        """Build train/val for fit/validate and the test split for test/predict (once each)."""
        if stage in (None, "fit", "validate") and self.train_dataset is None:
            full = self._load_train()
            train_idx, val_idx = split_indices(
                len(full), self.val_fraction, self.split_seed, self.train_subset
            )
            self.train_dataset = TransformedSubset(full, train_idx, self.train_transform())
            self.val_dataset = TransformedSubset(full, val_idx, self.eval_transform())
        if stage in (None, "test", "predict") and self.test_dataset is None:
            self.test_dataset = TransformedSubset(self._load_test(), None, self.eval_transform())

    def train_dataloader(self) -> DataLoader:
        return self._loader(self._require(self.train_dataset, "fit"), shuffle=True)

    def val_dataloader(self) -> DataLoader:
        # `validate` counts every image once; validation inside `fit` keeps Lightning's sampler,
        # which under DDP repeats up to (world size - 1) images to even out the ranks
        standalone = self.trainer is not None and self.trainer.state.fn == TrainerFn.VALIDATING
        dataset = self._require(self.val_dataset, "fit")
        return self._loader(dataset, shuffle=False, unrepeated=standalone)

    def test_dataloader(self) -> DataLoader:
        dataset = self._require(self.test_dataset, "test")
        return self._loader(dataset, shuffle=False, unrepeated=True)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self._require(self.test_dataset, "predict"), shuffle=False)

    @staticmethod
    def _require(dataset: TransformedSubset | None, stage: str) -> TransformedSubset:
        if dataset is None:
            raise RuntimeError(f"Call setup('{stage}') before asking for this dataloader.")
        return dataset

    def _loader(self, dataset: Dataset, shuffle: bool, unrepeated: bool = False) -> DataLoader:
        """``unrepeated``: under DDP, shard the images so that each is seen exactly once (ranks
        may get one image more or less); Lightning keeps a sampler it is given."""
        sampler = None
        if unrepeated and dist.is_available() and dist.is_initialized():
            if dist.get_world_size() > 1:
                sampler = UnrepeatedDistributedSampler(
                    dataset, dist.get_world_size(), dist.get_rank(), shuffle=False
                )
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle if sampler is None else None,
            sampler=sampler,
            drop_last=False,
            num_workers=self.num_workers,
            collate_fn=collate_images,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )
