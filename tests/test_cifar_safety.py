"""CIFAR batches are unpickled by a restricted unpickler: a tampered batch runs no code.

The official python-version batches hold only dicts, lists, strings, ints and numpy arrays; a
pickle that asks for anything else (here, a ``__reduce__`` that writes a marker file) is refused
with one line that names the file, before any of its code runs.
"""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import make_cifar_pickle

from pruning_lightning.data import CIFAR10DataModule, CIFAR100DataModule
from pruning_lightning.errors import ConfigError


class WritesMarker:
    """Unpickling this object calls ``exec``, which writes the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",)


def tamper(path: Path, marker: Path, nested: bool) -> None:
    """Rewrite ``path`` with the marker object inside its dict (``nested``) or as the whole file."""
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    entry["data"] = WritesMarker(marker)
    path.write_bytes(pickle.dumps(entry if nested else WritesMarker(marker)))


class Python2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` (BINSTRING), like the cPickle that wrote the archives."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_bytes(self, obj: bytes) -> None:
        self.write(pickle.BINSTRING + struct.pack("<I", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


def write_like_the_official_archive(path: Path) -> None:
    """Re-write a fixture batch as the official files are: protocol 2, raw data as a Python 2
    string, and numpy's pre-2.0 module name ``numpy.core.multiarray``."""
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    buffer = io.BytesIO()
    Python2Pickler(buffer, protocol=2).dump(entry)
    data = buffer.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    assert b"_codecs" not in data
    assert ("data" not in entry) or b"cnumpy.core.multiarray\n_reconstruct\n" in data
    path.write_bytes(data)


CASES = [
    # (data module, file to tamper, stage that reads it, nested in the dict)
    (CIFAR10DataModule, "cifar-10-batches-py/data_batch_1", "fit", True),
    (CIFAR10DataModule, "cifar-10-batches-py/test_batch", "test", False),
    (CIFAR10DataModule, "cifar-10-batches-py/batches.meta", "test", True),
    (CIFAR100DataModule, "cifar-100-python/train", "fit", True),
    (CIFAR100DataModule, "cifar-100-python/meta", "fit", False),
]


@pytest.mark.parametrize("module, name, stage, nested", CASES)
def test_a_tampered_batch_is_refused_before_its_code_runs(tmp_path, module, name, stage, nested):
    classes = 100 if module is CIFAR100DataModule else 10
    root = make_cifar_pickle(tmp_path / "data", num_train=20, num_test=10, num_classes=classes)
    # genuine batches, one of them in the official archive's exact format, load
    write_like_the_official_archive(root / name)
    dm = module(data_dir=str(root), num_workers=0, val_fraction=0.2)
    dm.setup(stage)
    dataset = (dm.train_dataset if stage == "fit" else dm.test_dataset).base
    assert len(dataset.classes) == classes and len(dataset) == (20 if stage == "fit" else 10)
    image, label = dataset[3]
    assert np.asarray(image)[0, 0, 1] == 3 and label == 3 % classes  # green = index in the split

    marker = tmp_path / "marker"
    tamper(root / name, marker, nested)
    dm = module(data_dir=str(root), num_workers=0, val_fraction=0.2)
    with pytest.raises(ConfigError) as err:
        dm.setup(stage)
    assert not marker.exists()
    message = str(err.value)
    assert "\n" not in message and str(root / name) in message
    assert "builtins.exec" in message
