"""Tiny ImageNet (64x64 RGB) in its official ``tiny-imagenet-200/`` layout.

``data_dir`` may be that folder itself or its parent. The classes are the wnids listed in
``wnids.txt`` that have a ``train/<wnid>/`` folder, in sorted order, so a copy reduced to a few
classes gives a smaller classifier. As in the paper, the labelled ``val/`` split is the test set
(the official test images carry no labels); the validation set is held out from ``train/``.
"""

from __future__ import annotations

from pathlib import Path
from urllib.error import URLError

from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import Dataset
from torchvision.datasets.utils import download_and_extract_archive

from pruning_lightning.data.base import ImageDataModule, ImageList, check_image_headers
from pruning_lightning.errors import ConfigError

TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_IMAGENET_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
TINY_IMAGENET_FOLDER = "tiny-imagenet-200"
TINY_IMAGENET_MEAN = (0.4802, 0.4481, 0.3975)
TINY_IMAGENET_STD = (0.2770, 0.2691, 0.2821)
_IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


class TinyImageNetDataModule(ImageDataModule):
    """Tiny ImageNet: 500 train and 50 labelled val images per class, 64x64 RGB."""

    def __init__(
        self,
        data_dir: str = "data/tiny-imagenet-200",
        batch_size: int = 128,
        num_workers: int = 2,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        download: bool = False,
        augment: bool = True,
        train_subset: int | None = None,
    ) -> None:
        """Tiny ImageNet data module.

        Args:
            data_dir: The tiny-imagenet-200/ folder, or the folder that contains it.
            batch_size: Images per batch, for every split.
            num_workers: Loader worker processes (0 loads in the main process).
            val_fraction: Fraction of train/ held out for validation, in (0, 1).
            split_seed: Seed of the train/val split and of train_subset (not the global seed).
            download: Download the official archive into data_dir if no copy is found there.
            augment: Random crop (padding 4) and horizontal flip on the training split.
            train_subset: Use only this many training images (seeded choice, before the split).
        """
        super().__init__(batch_size, num_workers, val_fraction, split_seed, augment, train_subset)
        self.data_dir = data_dir
        self.download = download
        self._classes: list[str] | None = None

    @property
    def in_channels(self) -> int:
        return 3

    @property
    def image_size(self) -> int:
        return 64

    @property
    def mean(self) -> tuple[float, ...]:
        return TINY_IMAGENET_MEAN

    @property
    def std(self) -> tuple[float, ...]:
        return TINY_IMAGENET_STD

    @property
    def num_classes(self) -> int:
        """The wnids of wnids.txt that have a train folder (reads two listings, no images)."""
        return len(self.classes)

    @property
    def classes(self) -> list[str]:
        """Sorted wnids of wnids.txt that have a ``train/<wnid>/`` folder; label = position."""
        if self._classes is None:
            root = self._root()
            wnids = (root / "wnids.txt").read_text().split()
            classes = sorted({w for w in wnids if (root / "train" / w).is_dir()})
            if not classes:
                raise ConfigError(
                    f"None of the {len(wnids)} wnids in '{root / 'wnids.txt'}' has a folder "
                    f"'{root / 'train'}/<wnid>/images/'. Re-extract tiny-imagenet-200.zip there."
                )
            self._classes = classes
        return self._classes

    def prepare_data(self) -> None:
        """Download and extract the official archive (md5-checked) if asked to and none is here."""
        if not self.download or self._find_root() is not None:
            return
        d = Path(self.data_dir)
        target = d.parent if d.name == TINY_IMAGENET_FOLDER else d
        try:
            download_and_extract_archive(TINY_IMAGENET_URL, str(target), md5=TINY_IMAGENET_MD5)
        except (URLError, OSError, RuntimeError) as err:
            raise ConfigError(
                f"Could not download Tiny ImageNet into '{target}': {err}. Check the internet "
                f"connection, or fetch {TINY_IMAGENET_URL}, extract it there and pass "
                "--data.download false."
            ) from err

    def _find_root(self) -> Path | None:
        d = Path(self.data_dir)
        for candidate in (d, d / TINY_IMAGENET_FOLDER):
            if any((candidate / name).exists() for name in ("wnids.txt", "train", "val")):
                return candidate
        return None

    def _root(self) -> Path:
        """The dataset folder, checked for the two files that define the labels."""
        root = self._find_root()
        if root is None:
            d = self.data_dir
            raise ConfigError(
                f"No Tiny ImageNet found in '{d}'. Expected '{d}/{TINY_IMAGENET_FOLDER}/' (or "
                f"'{d}' itself) holding wnids.txt, train/<wnid>/images/ and "
                "val/val_annotations.txt. Pass --data.download true to download it, or point "
                "--data.data_dir at a copy."
            )
        for name, what in (
            ("wnids.txt", "the class ids, one per line"),
            ("val/val_annotations.txt", "the labels of val/images/"),
        ):
            if not (root / name).is_file():
                raise ConfigError(
                    f"Tiny ImageNet folder '{root}' has no {name} ({what}). Re-extract "
                    "tiny-imagenet-200.zip there, or point --data.data_dir at a complete copy."
                )
        return root

    def _load_train(self) -> Dataset:
        root = self._root()
        samples: list[tuple[str, int]] = []
        for label, wnid in enumerate(self.classes):
            folder = root / "train" / wnid / "images"
            files = (
                sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
                if folder.is_dir()
                else []
            )
            if not files:
                raise ConfigError(
                    f"'{folder}' holds no images. Re-extract tiny-imagenet-200.zip there, or "
                    f"remove '{folder.parent}' to drop the class."
                )
            samples += [(str(p), label) for p in files]
        check_image_headers(path for path, _ in samples)
        return ImageList(samples)

    def _load_test(self) -> Dataset:
        """The labelled val/ split; images of classes without a train folder are skipped."""
        root = self._root()
        annotations = root / "val" / "val_annotations.txt"
        index = {wnid: i for i, wnid in enumerate(self.classes)}
        samples: list[tuple[str, int]] = []
        skipped = 0
        for line_no, line in enumerate(annotations.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 2:
                raise ConfigError(
                    f"{annotations}:{line_no}: expected 'filename<TAB>wnid<TAB>bbox...', got "
                    f"{line!r}. Re-extract tiny-imagenet-200.zip."
                )
            filename, wnid = fields[0].strip(), fields[1].strip()
            if wnid not in index:
                skipped += 1
                continue
            samples.append((str(root / "val" / "images" / filename), index[wnid]))
        if not samples:
            raise ConfigError(
                f"'{annotations}' labels no image of the {len(index)} classes with a train "
                "folder. Re-extract tiny-imagenet-200.zip, or point --data.data_dir at a copy "
                "whose val/ matches its train/."
            )
        if skipped:
            rank_zero_warn(
                f"Tiny ImageNet: skipped {skipped} val images whose class has no train folder."
            )
        check_image_headers(path for path, _ in samples)
        return ImageList(samples)
