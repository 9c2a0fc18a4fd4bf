"""CIFAR-10 and CIFAR-100, from torchvision's pickle batches or from an image-folder copy.

Two layouts are accepted in ``data_dir``:

- torchvision's: ``cifar-10-batches-py/`` (``data_batch_1..5``, ``test_batch``, ``batches.meta``)
  or ``cifar-100-python/`` (``train``, ``test``, ``meta``); this is what ``download: true`` fetches.
- an ImageFolder copy: ``train/<class>/*.png|jpg`` and ``test/<class>/*``. Labels follow the sorted
  class-folder names; CIFAR's own class lists are alphabetical, so with the official names they
  equal torchvision's label indices.

The pickle files are read by a restricted unpickler that admits only what the official archives
hold (dicts, lists, strings, ints and numpy arrays), so a tampered batch cannot run code; see
docs/SECURITY.md.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO, Literal
from urllib.error import URLError

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision import datasets
from torchvision.datasets.utils import download_and_extract_archive

from pruning_lightning.data.base import ImageDataModule, check_image_headers, load_rgb
from pruning_lightning.errors import ConfigError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

_RECONSTRUCT = np.zeros(0).__reduce__()[0]  # numpy's array reconstructor, whatever its module

#: The only globals a CIFAR pickle may name: what numpy needs to rebuild an array (under the
#: pre-2.0 module name the official archives use, and numpy 2's). Dicts, lists, str, bytes and
#: ints need no global at all.
CIFAR_PICKLE_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class ForbiddenGlobal(pickle.UnpicklingError):
    """A CIFAR pickle named a global outside :data:`CIFAR_PICKLE_GLOBALS` (``args[0]``)."""


class _CIFARUnpickler(pickle.Unpickler):
    """Resolves only :data:`CIFAR_PICKLE_GLOBALS`, from the table (nothing is imported): any other
    global, the only way a pickle reaches code, stops the load before it is called."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return CIFAR_PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise ForbiddenGlobal(f"{module}.{name}") from None


def load_cifar_pickle(file: BinaryIO) -> Any:
    """Unpickle one CIFAR batch or meta file (latin1, as the archives were written by Python 2)
    through :class:`_CIFARUnpickler`; raises :class:`ForbiddenGlobal` for anything else."""
    return _CIFARUnpickler(file, encoding="latin1").load()


class CIFARImages(Dataset):
    """CIFAR images as torchvision's CIFAR10 holds them (``data``: N x 32 x 32 x 3 uint8, HWC),
    their labels and class names; an item is ``(PIL image, label)``.

    torchvision's own classes are used only for their constants (file names, URL, md5): their
    constructor unpickles with plain ``pickle`` and checks the md5 of every batch file, which
    rejects the tests' tiny fixtures and any re-packed copy of the same arrays.
    """

    def __init__(self, data: np.ndarray, targets: Sequence[int], classes: Sequence[str]) -> None:
        self.data = data
        self.targets = list(targets)
        self.classes = list(classes)
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.data[index]), self.targets[index]


class _CIFARDataModule(ImageDataModule):
    """CIFAR-10/100 logic; the public classes below only fix the constants and defaults."""

    dataset_name: str
    reader: type[datasets.CIFAR10]  # torchvision's class, for its constants only (never built)
    cifar_classes: int
    channel_mean: tuple[float, float, float]
    channel_std: tuple[float, float, float]

    def __init__(
        self,
        data_dir: str,
        batch_size: int,
        num_workers: int,
        val_fraction: float,
        split_seed: int,
        download: bool,
        augment: bool,
        train_subset: int | None,
    ) -> None:
        super().__init__(batch_size, num_workers, val_fraction, split_seed, augment, train_subset)
        self.data_dir = data_dir
        self.download = download

    @property
    def num_classes(self) -> int:
        return self.cifar_classes

    @property
    def in_channels(self) -> int:
        return 3

    @property
    def image_size(self) -> int:
        return 32

    @property
    def mean(self) -> tuple[float, ...]:
        return self.channel_mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.channel_std

    def prepare_data(self) -> None:
        """Download torchvision's archive (md5-checked) if asked to and no copy is present."""
        if not self.download or self._find_layout() is not None:
            return
        try:
            download_and_extract_archive(
                self.reader.url,
                self.data_dir,
                filename=self.reader.filename,
                md5=self.reader.tgz_md5,
            )
        except (URLError, OSError, RuntimeError) as err:
            raise ConfigError(
                f"Could not download {self.dataset_name} into '{self.data_dir}': {err}. "
                f"Check the internet connection, or fetch {self.reader.url}, extract it into "
                "that folder and pass --data.download false."
            ) from err

    def _find_layout(self) -> tuple[Literal["pickle", "folder"], Path] | None:
        """Which layout ``data_dir`` holds and the root to read it from; None if neither."""
        d = Path(self.data_dir)
        if (d / self.reader.base_folder).is_dir():
            return "pickle", d
        if d.name == self.reader.base_folder and d.is_dir():
            return "pickle", d.parent
        if (d / "train").is_dir() and (d / "test").is_dir():
            return "folder", d
        return None

    def _layout(self) -> tuple[Literal["pickle", "folder"], Path]:
        found = self._find_layout()
        if found is None:
            d = self.data_dir
            raise ConfigError(
                f"No {self.dataset_name} found in '{d}'. Expected '{d}/{self.reader.base_folder}'"
                f" (torchvision format) or '{d}/train/<class>/', '{d}/test/<class>/'. Pass "
                "--data.download true to download it, or point --data.data_dir at a copy."
            )
        return found

    def _load_train(self) -> Dataset:
        return self._load(train=True)

    def _load_test(self) -> Dataset:
        return self._load(train=False)

    def _load(self, train: bool) -> Dataset:
        layout, root = self._layout()
        if layout == "pickle":
            return self._load_pickle(root, train)
        return self._load_folder(root / ("train" if train else "test"))

    def _load_pickle(self, root: Path, train: bool) -> Dataset:
        folder = root / self.reader.base_folder
        files = [name for name, _ in self.reader.train_list + self.reader.test_list]
        missing = [f for f in [*files, self.reader.meta["filename"]] if not (folder / f).is_file()]
        if missing:
            raise ConfigError(
                f"{self.dataset_name} folder '{folder}' is incomplete: missing "
                f"{', '.join(missing)}. Delete it and pass --data.download true, or point "
                "--data.data_dir at a complete copy."
            )
        split = self.reader.train_list if train else self.reader.test_list
        batches = [self._read(folder / name) for name, _ in split]
        meta = self._read(folder / self.reader.meta["filename"])
        try:  # torchvision's CIFAR10.__init__, on the restricted unpickler's output
            data = np.vstack([b["data"] for b in batches]).reshape(-1, 3, 32, 32)
            targets = [t for b in batches for t in b["labels" if "labels" in b else "fine_labels"]]
            classes = list(meta[self.reader.meta["key"]])
        except (KeyError, ValueError, TypeError) as err:
            raise self._unreadable(folder, repr(err)) from err
        labels_ok = len(classes) == self.cifar_classes and all(
            isinstance(t, int) and 0 <= t < self.cifar_classes for t in targets
        )
        if not labels_ok or len(targets) != len(data) or data.dtype != np.uint8:
            raise ConfigError(
                f"'{folder}' does not hold {self.dataset_name}: expected {self.cifar_classes} "
                f"class names, uint8 images and one label in [0, {self.cifar_classes}) per image. "
                f"Point --data.data_dir at a {self.dataset_name} copy."
            )
        return CIFARImages(data.transpose(0, 2, 3, 1), targets, classes)

    def _read(self, path: Path) -> dict:
        """One batch or meta file, through the restricted unpickler; a dict, else a ConfigError."""
        try:
            with open(path, "rb") as f:
                entry = load_cifar_pickle(f)
        except ForbiddenGlobal as err:
            raise ConfigError(
                f"Refusing to load '{path}': its pickle names {err}, and the official "
                f"{self.dataset_name} batches hold only dicts, lists, strings, ints and numpy "
                "arrays, so the file is not genuine and could run code (nothing of it ran). "
                "Replace it from the official archive (delete the folder and pass "
                "--data.download true)."
            ) from None
        except Exception as err:  # whatever a damaged pickle raises: the file is unreadable
            raise self._unreadable(path.parent, f"{path.name}: {err!r}") from err
        if not isinstance(entry, dict):
            detail = f"{path.name} holds a {type(entry).__name__}, not a dict"
            raise self._unreadable(path.parent, detail)
        return entry

    def _unreadable(self, folder: Path, detail: str) -> ConfigError:
        return ConfigError(
            f"Cannot read the {self.dataset_name} batches in '{folder}': {detail}. Delete the "
            "folder and pass --data.download true, or point --data.data_dir at a good copy."
        )

    def _load_folder(self, folder: Path) -> Dataset:
        try:
            dataset = datasets.ImageFolder(str(folder), loader=load_rgb)
        except FileNotFoundError as err:
            raise ConfigError(
                f"Cannot use '{folder}' as a {self.dataset_name} split: {err}. It needs one "
                "folder of images per class, e.g. 'train/airplane/0001.png'."
            ) from err
        if len(dataset.classes) != self.cifar_classes:
            raise ConfigError(
                f"'{folder}' has {len(dataset.classes)} class folders; {self.dataset_name} has "
                f"{self.cifar_classes}. Point --data.data_dir at a complete {self.dataset_name} "
                "copy (or use the data module of the dataset it holds)."
            )
        other = folder.parent / ("test" if folder.name == "train" else "train")
        other_classes = sorted(entry.name for entry in os.scandir(other) if entry.is_dir())
        if other_classes != dataset.classes:
            differ = sorted(set(other_classes) ^ set(dataset.classes))
            raise ConfigError(
                f"'{folder}' and '{other}' have different class folders (not in both: "
                f"{', '.join(differ)}). Labels follow the sorted folder names, so both splits "
                "need the same classes: rename or remove the odd folders."
            )
        check_image_headers(path for path, _ in dataset.samples)
        return dataset


class CIFAR10DataModule(_CIFARDataModule):
    """CIFAR-10: 50,000 train / 10,000 test images, 32x32 RGB, 10 classes."""

    dataset_name = "CIFAR-10"
    reader = datasets.CIFAR10
    cifar_classes = 10
    channel_mean = CIFAR10_MEAN
    channel_std = CIFAR10_STD

    def __init__(
        self,
        data_dir: str = "data/cifar10",
        batch_size: int = 128,
        num_workers: int = 2,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        download: bool = False,
        augment: bool = True,
        train_subset: int | None = None,
    ) -> None:
        """CIFAR-10 data module.

        Args:
            data_dir: Folder holding cifar-10-batches-py/ or train/<class>/ and test/<class>/.
            batch_size: Images per batch, for every split.
            num_workers: Loader worker processes (0 loads in the main process).
            val_fraction: Fraction of the training set held out for validation, in (0, 1).
            split_seed: Seed of the train/val split and of train_subset (not the global seed).
            download: Download torchvision's copy into data_dir if no copy is found there.
            augment: Random crop (padding 4) and horizontal flip on the training split.
            train_subset: Use only this many training images (seeded choice, before the split).
        """
        super().__init__(
            data_dir, batch_size, num_workers, val_fraction, split_seed, download, augment,
            train_subset,
        )  # fmt: skip


class CIFAR100DataModule(_CIFARDataModule):
    """CIFAR-100: 50,000 train / 10,000 test images, 32x32 RGB, 100 (fine) classes."""

    dataset_name = "CIFAR-100"
    reader = datasets.CIFAR100
    cifar_classes = 100
    channel_mean = CIFAR100_MEAN
    channel_std = CIFAR100_STD

    def __init__(
        self,
        data_dir: str = "data/cifar100",
        batch_size: int = 128,
        num_workers: int = 2,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        download: bool = False,
        augment: bool = True,
        train_subset: int | None = None,
    ) -> None:
        """CIFAR-100 data module.

        Args:
            data_dir: Folder holding cifar-100-python/ or train/<class>/ and test/<class>/.
            batch_size: Images per batch, for every split.
            num_workers: Loader worker processes (0 loads in the main process).
            val_fraction: Fraction of the training set held out for validation, in (0, 1).
            split_seed: Seed of the train/val split and of train_subset (not the global seed).
            download: Download torchvision's copy into data_dir if no copy is found there.
            augment: Random crop (padding 4) and horizontal flip on the training split.
            train_subset: Use only this many training images (seeded choice, before the split).
        """
        super().__init__(
            data_dir, batch_size, num_workers, val_fraction, split_seed, download, augment,
            train_subset,
        )  # fmt: skip
