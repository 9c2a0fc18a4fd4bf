"""Tiny datasets written in the real on-disk formats, for tests (never the real data).

Every image is one flat colour that encodes where it came from, so a test can check labels:
red = ``class_value(label, num_classes)`` (classes spread evenly over 0..255, so JPEG noise of a
few levels cannot turn one class into another when classes are few), green = the image's index
within its split (mod 256), blue = 128. ``decode_label`` inverts the red channel.

- ``make_cifar_pickle``: torchvision's ``cifar-10-batches-py/`` or ``cifar-100-python/``; image i
  of a split has label ``i % num_classes``.
- ``make_cifar_folder``: ``train/<class>/NNNN.png`` and ``test/<class>/NNNN.png`` (ImageFolder).
- ``make_tiny_imagenet``: the official ``tiny-imagenet-200/`` layout with JPEGs, one grayscale.
- ``make_imagenet``: ImageNet's class-folder layout, or its three official archives.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
TINY_WNIDS = ("n01443537", "n01629819", "n01641577")
BLUE = 128


def class_value(label: int, num_classes: int) -> int:
    """Red value that encodes ``label``."""
    return round(label * 255 / max(num_classes - 1, 1))


def decode_label(red: float, num_classes: int) -> int:
    """The label whose ``class_value`` is nearest to a (possibly JPEG-noisy) red value."""
    values = np.array([class_value(c, num_classes) for c in range(num_classes)])
    return int(np.abs(values - red).argmin())


def flat_image(label: int, index: int, num_classes: int, size: int = 32) -> np.ndarray:
    """(size, size, 3) uint8 image of one colour: (class_value, index % 256, BLUE)."""
    pixel = np.array([class_value(label, num_classes), index % 256, BLUE], dtype=np.uint8)
    return np.broadcast_to(pixel, (size, size, 3)).copy()


def cifar_class_names(num_classes: int) -> list[str]:
    """CIFAR-10's names, or sortable stand-ins ``class_000``.. for other class counts."""
    if num_classes == 10:
        return list(CIFAR10_CLASSES)
    return [f"class_{c:03d}" for c in range(num_classes)]


def _cifar_split(num: int, num_classes: int) -> tuple[np.ndarray, list[int]]:
    """Rows in CIFAR's planar order (1024 red, 1024 green, 1024 blue) and labels i % classes."""
    labels = [i % num_classes for i in range(num)]
    rows = [
        flat_image(y, i, num_classes).transpose(2, 0, 1).reshape(-1) for i, y in enumerate(labels)
    ]
    data = np.stack(rows) if rows else np.zeros((0, 3072), np.uint8)
    return data.astype(np.uint8), labels


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def make_cifar_pickle(
    root: str | Path, num_train: int = 50, num_test: int = 20, num_classes: int = 10
) -> Path:
    """Write torchvision's CIFAR-10 (num_classes=10) or CIFAR-100 (100) pickle folder in ``root``.

    CIFAR-10: ``cifar-10-batches-py/data_batch_1..5`` (the train images split over five files),
    ``test_batch``, ``batches.meta``; keys ``data`` (N x 3072 uint8), ``labels``, ``label_names``.
    CIFAR-100: ``cifar-100-python/train``, ``test``, ``meta``; keys ``data``, ``fine_labels``,
    ``coarse_labels``, ``fine_label_names``, ``coarse_label_names``. Returns ``root`` (the
    data_dir to pass).
    """
    if num_classes not in (10, 100):
        raise ValueError("num_classes picks the format: 10 (CIFAR-10) or 100 (CIFAR-100)")
    root = Path(root)
    names = cifar_class_names(num_classes)
    train, train_labels = _cifar_split(num_train, num_classes)
    test, test_labels = _cifar_split(num_test, num_classes)
    if num_classes == 10:
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True, exist_ok=True)
        bounds = np.array_split(np.arange(num_train), 5)
        for b, idx in enumerate(bounds, start=1):
            _dump(
                folder / f"data_batch_{b}",
                {
                    "batch_label": f"training batch {b} of 5",
                    "labels": [train_labels[i] for i in idx],
                    "data": train[idx],
                    "filenames": [f"img_{i}.png" for i in idx],
                },
            )
        _dump(
            folder / "test_batch",
            {"batch_label": "testing batch 1 of 1", "labels": test_labels, "data": test},
        )
        _dump(
            folder / "batches.meta",
            {"label_names": names, "num_cases_per_batch": 10000, "num_vis": 3072},
        )
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True, exist_ok=True)
        for split, data, labels in (("train", train, train_labels), ("test", test, test_labels)):
            _dump(
                folder / split,
                {
                    "batch_label": split,
                    "fine_labels": labels,
                    "coarse_labels": [y // 5 for y in labels],
                    "data": data,
                },
            )
        coarse = [f"superclass_{c:02d}" for c in range(20)]
        _dump(folder / "meta", {"fine_label_names": names, "coarse_label_names": coarse})
    return root


def make_cifar_folder(
    root: str | Path,
    num_classes: int = 10,
    train_per_class: int = 3,
    test_per_class: int = 2,
    ext: str = "png",
) -> Path:
    """Write ``root/train/<class>/NNNN.<ext>`` and ``root/test/<class>/NNNN.<ext>``.

    Class names are CIFAR-10's (alphabetical, so folder order = label order) for 10 classes,
    ``class_000``.. otherwise. Green = the image's index within its split, counting class by
    class. PNG (the default) is lossless, so pixel values survive exactly. Returns ``root``.
    """
    root = Path(root)
    names = cifar_class_names(num_classes)
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        index = 0
        for label, name in enumerate(names):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                image = Image.fromarray(flat_image(label, index, num_classes))
                image.save(folder / f"{k:04d}.{ext}")
                index += 1
    return root


def make_tiny_imagenet(
    root: str | Path,
    wnids: Sequence[str] = TINY_WNIDS,
    per_class: int = 4,
    val_per_class: int = 2,
    listed_without_train: Sequence[str] = (),
    nested: bool = True,
    grayscale: bool = True,
) -> Path:
    """Write the official Tiny ImageNet layout (64x64 JPEGs) and return its folder.

    ``wnids.txt`` lists ``wnids`` + ``listed_without_train`` (the latter get val images but no
    train folder, like a class-subset copy); ``train/<wnid>/images/<wnid>_<k>.JPEG`` and
    ``<wnid>_boxes.txt``; ``val/images/val_<n>.JPEG`` with ``val/val_annotations.txt``
    (filename, wnid, bbox, tab-separated). Labels are positions in ``sorted(wnids)``; the
    listed-only classes are encoded as labels after those. With ``grayscale`` the first train
    image of the first class and the first val image are stored as 1-channel ("L") JPEGs of
    their red value. With ``nested`` the folder is ``root/tiny-imagenet-200``, else ``root``.
    """
    folder = Path(root) / "tiny-imagenet-200" if nested else Path(root)
    ordered = sorted(wnids) + list(listed_without_train)
    n = len(ordered)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "wnids.txt").write_text("".join(f"{w}\n" for w in [*wnids, *listed_without_train]))
    (folder / "words.txt").write_text("".join(f"{w}\tclass {w}\n" for w in ordered))

    def save(path: Path, label: int, index: int, gray: bool) -> None:
        pixels = flat_image(label, index, n, size=64)
        image = Image.fromarray(pixels[..., 0]) if gray else Image.fromarray(pixels)
        image.save(path, format="JPEG", quality=95)

    for label, wnid in enumerate(sorted(wnids)):
        images = folder / "train" / wnid / "images"
        images.mkdir(parents=True, exist_ok=True)
        boxes = []
        for k in range(per_class):
            save(images / f"{wnid}_{k}.JPEG", label, k, grayscale and label == 0 and k == 0)
            boxes.append(f"{wnid}_{k}.JPEG\t0\t0\t63\t63\n")
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("".join(boxes))

    val_images = folder / "val" / "images"
    val_images.mkdir(parents=True, exist_ok=True)
    lines = []
    for _ in range(val_per_class):
        for label, wnid in enumerate(ordered):
            name = f"val_{len(lines)}.JPEG"
            save(val_images / name, label, len(lines), grayscale and not lines)
            lines.append(f"{name}\t{wnid}\t0\t0\t63\t63\n")
    (folder / "val" / "val_annotations.txt").write_text("".join(lines))
    return folder


IMAGENET_WNIDS = ("n01440764", "n01443537", "n01484850")


def make_imagenet(
    root: str | Path,
    layout: str = "folders",
    wnids: Sequence[str] = IMAGENET_WNIDS,
    per_class: int = 4,
    val_per_class: int = 2,
    size: tuple[int, int] = (40, 32),
) -> Path:
    """Write a miniature ImageNet (JPEGs of ``size`` = (width, height)) and return ``root``.

    ``layout="folders"``: ``train/<wnid>/<wnid>_<k>.JPEG`` and
    ``val/<wnid>/ILSVRC2012_val_<n>.JPEG`` (what the val-prep script makes).
    ``layout="archives"``: the three official archives, built as ImageNet ships them:
    ``ILSVRC2012_devkit_t12.tar.gz`` (``data/meta.mat`` with one leaf synset per wnid plus one
    parent synset, and ``data/ILSVRC2012_validation_ground_truth.txt``),
    ``ILSVRC2012_img_train.tar`` holding one ``<wnid>.tar`` per class, and a flat
    ``ILSVRC2012_img_val.tar``. Their md5s are not the official ones: patch torchvision's check.
    Labels are positions in ``sorted(wnids)``; val images cycle through the classes.
    """
    import io
    import tarfile

    from scipy.io import savemat

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    ordered = sorted(wnids)
    n = len(ordered)

    def jpeg(label: int, index: int) -> bytes:
        pixels = flat_image(label, index, n, size=max(size))[: size[1], : size[0]]
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
        return buffer.getvalue()

    train = {
        w: {f"{w}_{k}.JPEG": jpeg(c, k) for k in range(per_class)} for c, w in enumerate(ordered)
    }
    val_labels = [i % n for i in range(val_per_class * n)]
    val = {f"ILSVRC2012_val_{i + 1:08d}.JPEG": jpeg(y, i) for i, y in enumerate(val_labels)}
    if layout == "folders":
        for wnid, files in train.items():
            (root / "train" / wnid).mkdir(parents=True)
            for name, data in files.items():
                (root / "train" / wnid / name).write_bytes(data)
        for (name, data), label in zip(val.items(), val_labels, strict=True):
            (root / "val" / ordered[label]).mkdir(parents=True, exist_ok=True)
            (root / "val" / ordered[label] / name).write_bytes(data)
        return root
    if layout != "archives":
        raise ValueError(f"layout must be 'folders' or 'archives', got {layout!r}")

    def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    def tar_bytes(files: dict[str, bytes]) -> bytes:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for name, data in files.items():
                add(tar, name, data)
        return buffer.getvalue()

    # devkit: synsets (ILSVRC2012_ID, WNID, words, gloss, num_children, ...), leaves 1..n
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children"]
    synsets = np.zeros((n + 1,), dtype=[(f, object) for f in fields])
    for i, wnid in enumerate(ordered):
        synsets[i] = (i + 1, wnid, f"class {wnid}, stand-in", "a test class", 0)
    synsets[n] = (n + 1, "n00000001", "parent", "an inner node of the hierarchy", n)
    mat = io.BytesIO()
    savemat(mat, {"synsets": synsets})
    truth = "".join(f"{y + 1}\n" for y in val_labels).encode()
    with tarfile.open(root / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tar:
        add(tar, "ILSVRC2012_devkit_t12/data/meta.mat", mat.getvalue())
        add(tar, "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", truth)
    (root / "ILSVRC2012_img_train.tar").write_bytes(
        tar_bytes({f"{w}.tar": tar_bytes(files) for w, files in train.items()})
    )
    (root / "ILSVRC2012_img_val.tar").write_bytes(tar_bytes(val))
    return root


def presence_only_imagenet_archives() -> None:
    """Make torchvision's ImageNet parser accept the fixture archives (it checks official md5s)."""
    import os

    import torchvision.datasets.imagenet as tv_imagenet

    def verify(root: str, file: str, md5: str) -> None:
        if not os.path.isfile(os.path.join(root, file)):
            raise RuntimeError(f"The archive {file} is not present in the root directory.")

    tv_imagenet._verify_archive = verify
