"""ImageNet (ILSVRC-2012 classification) in the two layouts people have.

- **Folders** (what the common val-prep script and torchvision's parser produce):
  ``<data_dir>/train/<wnid>/*.JPEG`` and ``<data_dir>/val/<wnid>/*.JPEG``.
- **Official archives**: ``ILSVRC2012_devkit_t12.tar.gz``, ``ILSVRC2012_img_train.tar`` and
  ``ILSVRC2012_img_val.tar`` in ``data_dir``. ``prepare_data`` (once per node, local rank 0)
  hands them to ``torchvision.datasets.ImageNet``, which checks their md5, extracts them into the
  folder layout above (the val images sorted into class folders with the devkit's labels) and
  writes ``meta.bin``; later runs find the folders and parse nothing.

The classes are the sorted wnids of ``train/`` (or the first / the named ones of
``class_subset``); the labelled ``val/`` split is the test set, as in the papers, and the
validation set is a seeded hold-out of ``train/``. Augmentation is the standard one:
RandomResizedCrop + flip for training; resize + center crop for evaluation. Batches leave the
loader as uint8 and are normalised on the device (see ``pruning_lightning/data/base.py``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset
from torchvision.transforms import v2

from pruning_lightning.data.base import ImageDataModule, ImageList
from pruning_lightning.data.crop import RandomResizedCropFlip
from pruning_lightning.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_CLASSES = 1000
ARCHIVES = {
    "devkit": "ILSVRC2012_devkit_t12.tar.gz",
    "train": "ILSVRC2012_img_train.tar",
    "val": "ILSVRC2012_img_val.tar",
}
_FOLDER_HELP = "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG"


class ImageNetDataModule(ImageDataModule):
    """ImageNet-1k at ``crop_size`` (224 by default), from folders or the official archives."""

    def __init__(
        self,
        data_dir: str = "data/imagenet",
        batch_size: int = 256,
        num_workers: int = 8,
        val_fraction: float = 0.01,
        split_seed: int = 0,
        augment: bool = True,
        train_subset: int | None = None,
        class_subset: int | list[str] | None = None,
        crop_size: int = 224,
        resize_size: int = 256,
    ) -> None:
        """ImageNet data module.

        Args:
            data_dir: Folder holding train/ and val/ class folders, or the three official
                archives (extracted there on first use).
            batch_size: Images per batch and device (under DDP the global batch is this times
                the number of devices).
            num_workers: Loader worker processes per device.
            val_fraction: Fraction of train/ held out for validation, in (0, 1).
            split_seed: Seed of the train/val split and of train_subset (not the global seed).
            augment: RandomResizedCrop and horizontal flip on the training split; False uses the
                evaluation transform.
            train_subset: Use only this many training images (seeded choice, before the split).
            class_subset: Use only these classes: an int takes the first N wnids in sorted
                order, a list names them (e.g. ["n01440764", "n01443537"]). For smoke runs.
            crop_size: Side of the square training and evaluation crops (the network input).
            resize_size: Evaluation images are resized to this shorter side, then center-cropped.
        """
        super().__init__(batch_size, num_workers, val_fraction, split_seed, augment, train_subset)
        if crop_size < 1 or resize_size < crop_size:
            raise ConfigError(
                f"Need 1 <= crop_size <= resize_size, got crop_size={crop_size}, "
                f"resize_size={resize_size}. The standard pair is 224 and 256 (ratio 0.875)."
            )
        if isinstance(class_subset, int) and not isinstance(class_subset, bool):
            if class_subset < 2:
                raise ConfigError(
                    f"class_subset must be >= 2 classes, got {class_subset}. Pass e.g. 10, "
                    "or a list of wnids, or leave it unset for all classes."
                )
        elif class_subset is not None and (
            not isinstance(class_subset, list | tuple) or len(class_subset) < 2
        ):
            raise ConfigError(
                f"class_subset must be a number of classes or a list of at least 2 wnids, got "
                f"{class_subset!r}."
            )
        self.data_dir = data_dir
        self.class_subset = class_subset
        self.crop_size = crop_size
        self.resize_size = resize_size
        self._classes: list[str] | None = None

    # --- what the base class asks for ---------------------------------------------------------
    @property
    def in_channels(self) -> int:
        return 3

    @property
    def image_size(self) -> int:
        return self.crop_size

    @property
    def mean(self) -> tuple[float, ...]:
        return IMAGENET_MEAN

    @property
    def std(self) -> tuple[float, ...]:
        return IMAGENET_STD

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def train_transform(self) -> v2.Compose:
        """RandomResizedCrop(crop_size) + flip on the decoded uint8 tensor, fused
        (:class:`RandomResizedCropFlip`; torch's antialiased uint8 resize is within one grey level
        of PIL's, tested), uint8 out."""
        if not self.augment:
            return self.eval_transform()
        # its output is a plain tensor already: no ToPureTensor pass (~20 us an image)
        rest = [t for t in self._to_batch_tensor() if not isinstance(t, v2.ToPureTensor)]
        return v2.Compose([RandomResizedCropFlip(self.crop_size), *rest])

    def eval_transform(self) -> v2.Compose:
        """Resize(resize_size) + CenterCrop(crop_size) on the decoded uint8 tensor, uint8 out."""
        return v2.Compose(
            [
                v2.ToImage(),
                v2.Resize(self.resize_size, antialias=True),
                v2.CenterCrop(self.crop_size),
                *self._to_batch_tensor(),
            ]
        )

    # --- finding and checking the copy --------------------------------------------------------
    @property
    def root(self) -> Path:
        return Path(self.data_dir)

    def prepare_data(self) -> None:
        """Extract the official archives into train/ and val/ if those folders are missing."""
        missing = [s for s in ("train", "val") if not (self.root / s).is_dir()]
        if not missing or not any((self.root / a).is_file() for a in ARCHIVES.values()):
            return  # nothing to extract, or no archives: _folder() explains what is missing
        needed = [ARCHIVES[k] for k in ("devkit", *missing)]
        absent = [a for a in needed if not (self.root / a).is_file()]
        if absent:
            raise ConfigError(
                f"ImageNet in '{self.root}' lacks {', '.join(absent)}: extracting "
                f"{'/'.join(missing)}/ needs the devkit and the matching image archive. Put them "
                f"there, or point --data.data_dir at a copy with {_FOLDER_HELP}."
            )
        from torchvision.datasets import ImageNet

        for split in missing:
            rank_zero_info(f"Extracting {ARCHIVES[split]} into '{self.root / split}' (once) ...")
            try:  # md5 check, extraction, val sorted by the devkit's labels, meta.bin
                ImageNet(str(self.root), split=split)
            except RuntimeError as err:
                raise ConfigError(
                    f"Could not extract ImageNet's {split} split in '{self.root}': {err} "
                    "Replace the archive with an intact copy (its md5 is checked)."
                ) from err

    def _folder(self, split: str) -> Path:
        folder = self.root / split
        if folder.is_dir():
            return folder
        if not self.root.is_dir():
            raise ConfigError(
                f"No ImageNet found: '{self.root}' does not exist. Point --data.data_dir at a "
                f"folder with {_FOLDER_HELP}, or with the official archives "
                f"({', '.join(ARCHIVES.values())})."
            )
        archives = [a for a in ARCHIVES.values() if (self.root / a).is_file()]
        hint = (
            f" It holds {', '.join(archives)}: they are extracted by prepare_data on local rank "
            "0; run once on one device (e.g. with --trainer.fast_dev_run true) to extract them."
            if archives
            else f" Expected {_FOLDER_HELP}, or the archives {', '.join(ARCHIVES.values())}."
        )
        raise ConfigError(f"ImageNet in '{self.root}' has no {split}/ folder.{hint}")

    @staticmethod
    def _class_folders(folder: Path) -> list[str]:
        return sorted(e.name for e in os.scandir(folder) if e.is_dir())

    @property
    def classes(self) -> list[str]:
        """Sorted wnids of train/ (restricted to ``class_subset``); label = position.

        Before the archives are extracted (the CLI sizes the model before ``prepare_data``
        runs), the devkit's list of leaf synsets: the class folders the extraction will make.
        """
        if self._classes is None:
            train = self.root / "train"
            if not train.is_dir() and (self.root / ARCHIVES["train"]).is_file():
                found = self._devkit_wnids()
            else:
                found = self._train_folders()
            self._classes = self._select(found)
        return self._classes

    def _train_folders(self) -> list[str]:
        train = self._folder("train")
        found = self._class_folders(train)
        leftovers = sorted(p.name for p in train.glob("*.tar"))
        if leftovers:
            raise ConfigError(
                f"'{train}' still holds {len(leftovers)} per-class archives (e.g. "
                f"{leftovers[0]}) next to {len(found)} class folders: the extraction of "
                f"{ARCHIVES['train']} was interrupted. Delete '{train}' and run again with "
                "the archive in data_dir, or extract each <wnid>.tar into train/<wnid>/."
            )
        if not found:
            raise ConfigError(
                f"'{train}' has no class folders; expected {IMAGENET_CLASSES} folders "
                f"train/<wnid>/ of JPEG images ({_FOLDER_HELP})."
            )
        return found

    def _devkit_wnids(self) -> list[str]:
        """The leaf wnids of the devkit, parsed (md5-checked) by torchvision into a scratch
        folder: nothing is written next to the data before ``prepare_data``."""
        from torchvision.datasets.imagenet import load_meta_file, parse_devkit_archive

        devkit = self.root / ARCHIVES["devkit"]
        if not devkit.is_file():
            raise ConfigError(
                f"ImageNet in '{self.root}' has {ARCHIVES['train']} but no {ARCHIVES['devkit']}, "
                "which names the classes and labels the val images. Put it there, or point "
                f"--data.data_dir at a copy with {_FOLDER_HELP}."
            )
        with tempfile.TemporaryDirectory() as scratch:
            try:
                parse_devkit_archive(scratch, file=str(devkit.resolve()))
            except RuntimeError as err:
                raise ConfigError(
                    f"Could not read {devkit}: {err} Replace it with an intact copy."
                ) from err
            return sorted(load_meta_file(scratch)[0])

    def _select(self, found: list[str]) -> list[str]:
        subset = self.class_subset
        if subset is None:
            if len(found) != IMAGENET_CLASSES:
                rank_zero_warn(
                    f"ImageNet in '{self.root}' has {len(found)} class folders in train/, not "
                    f"{IMAGENET_CLASSES}: the classifier gets {len(found)} outputs. If the copy "
                    "is incomplete, re-extract it; for a subset, pass --data.class_subset."
                )
            return found
        if isinstance(subset, int):
            if subset > len(found):
                raise ConfigError(
                    f"class_subset={subset} exceeds the {len(found)} class folders of "
                    f"'{self.root / 'train'}'. Pass {len(found)} or less."
                )
            return found[:subset]
        unknown = sorted(set(subset) - set(found))
        if unknown:
            raise ConfigError(
                f"class_subset names {len(unknown)} wnid(s) with no folder in "
                f"'{self.root / 'train'}': {', '.join(unknown[:5])}. Check the spelling "
                "(e.g. n01440764)."
            )
        return sorted(set(subset))

    def _samples(self, split: str) -> list[tuple[str, int]]:
        """(path, label) of every image of ``split`` in the chosen classes, checked."""
        folder = self._folder(split)
        classes = self.classes
        present = set(self._class_folders(folder))
        missing = [c for c in classes if c not in present]
        if split == "val":
            flat = [p.name for p in folder.iterdir() if p.suffix.lower() in IMG_EXTENSIONS]
            if flat and not present:
                raise ConfigError(
                    f"'{folder}' holds {len(flat)} images but no class folders: it is the flat "
                    "official validation set. Sort it into val/<wnid>/ (the common val-prep "
                    f"script does), or delete '{folder}' and put {ARCHIVES['devkit']} and "
                    f"{ARCHIVES['val']} in data_dir to have it sorted with the devkit's labels."
                )
        if missing:
            raise ConfigError(
                f"'{folder}' has {len(classes) - len(missing)} of the {len(classes)} classes "
                f"of train/ (missing e.g. {missing[0]}): the copy is incomplete. Re-extract "
                f"{split}/, or restrict the classes with --data.class_subset."
            )
        index = {c: i for i, c in enumerate(classes)}
        samples = make_dataset(str(folder), index, extensions=IMG_EXTENSIONS, allow_empty=True)
        counts = [0] * len(classes)
        for _, label in samples:
            counts[label] += 1
        empty = [c for c, n in zip(classes, counts, strict=True) if n == 0]
        if empty:
            raise ConfigError(
                f"{len(empty)} class folder(s) of '{folder}' hold no image (e.g. "
                f"'{folder / empty[0]}'): the copy is half-extracted. Re-extract {split}/."
            )
        return samples

    def _load_train(self) -> Dataset:
        return ImageList(self._samples("train"))

    def _load_test(self) -> Dataset:
        return ImageList(self._samples("val"))
