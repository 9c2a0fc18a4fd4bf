"""Data modules: formats, labels, splits, transforms, loaders and every bad-input message."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from data_fixtures import (
    BLUE,
    CIFAR10_CLASSES,
    class_value,
    decode_label,
    flat_image,
    make_cifar_folder,
    make_cifar_pickle,
    make_tiny_imagenet,
)
from PIL import Image
from sklearn.datasets import load_digits
from torch.utils.data import RandomSampler, SequentialSampler
from torchvision import datasets
from torchvision.transforms import v2

from pruning_lightning.data import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    DigitsDataModule,
    TinyImageNetDataModule,
)
from pruning_lightning.data import cifar as cifar_module
from pruning_lightning.data import tiny_imagenet as tiny_module
from pruning_lightning.data.base import split_indices
from pruning_lightning.data.cifar import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD
from pruning_lightning.data.digits import digits_splits
from pruning_lightning.data.tiny_imagenet import TINY_IMAGENET_MEAN, TINY_IMAGENET_STD
from pruning_lightning.errors import ConfigError


def unnormalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Back to 0..255 pixel values (a uint8 image, as the image loaders hand them, is those)."""
    if x.dtype == torch.uint8:
        return x.float()
    m = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return (x * s + m) * 255


def centre_rgb(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Pixel values at the image centre (never padding, even after a padded random crop)."""
    h = x.shape[-1] // 2
    return unnormalise(x, mean, std)[:, h, h]


def assert_split_labels(dataset, num_classes: int, mean, std, index_encodes_label: bool) -> None:
    """Each item's label equals the class in its pixels (and, for CIFAR pickle fixtures, the
    index in its green channel mod num_classes): images and labels were not mixed up."""
    for i in range(len(dataset)):
        x, y = dataset[i]
        red, green, blue = centre_rgb(x, mean, std).tolist()
        assert decode_label(red, num_classes) == y
        assert abs(blue - BLUE) < 3 or abs(blue - red) < 3  # the latter: a grayscale file
        if index_encodes_label:
            assert round(green) % num_classes == y


# --- the split ------------------------------------------------------------------------------


def test_split_indices_disjoint_sized_and_seeded():
    train, val = split_indices(50, 0.1, seed=3)
    assert len(val) == 5 and len(train) == 45
    assert set(train).isdisjoint(val) and sorted(train + val) == list(range(50))
    torch.manual_seed(123)  # the global seed must not matter
    assert split_indices(50, 0.1, seed=3) == (train, val)
    assert split_indices(50, 0.1, seed=4) != (train, val)


def test_split_indices_subset_and_clamping():
    train, val = split_indices(100, 0.25, seed=0, subset=20)
    assert (len(train), len(val)) == (15, 5)
    assert set(train).isdisjoint(val) and set(train + val) <= set(range(100))
    assert split_indices(100, 0.25, seed=0, subset=20) == (train, val)
    # Neither side may be empty: 0.1 * 3 rounds to 0 -> 1 val image; 0.99 * 3 -> 2 val images.
    assert [len(s) for s in split_indices(3, 0.1, seed=0)] == [2, 1]
    assert [len(s) for s in split_indices(3, 0.99, seed=0)] == [1, 2]
    with pytest.raises(ConfigError, match=r"train_subset=101 exceeds the 100 images"):
        split_indices(100, 0.1, seed=0, subset=101)


# --- CIFAR ----------------------------------------------------------------------------------


def test_cifar10_pickle_loads_with_correct_labels(tmp_path):
    root = make_cifar_pickle(tmp_path, num_train=50, num_test=20)
    # torchvision's own class rejects the fixture (md5 of each batch): why we subclass it.
    with pytest.raises(RuntimeError, match="corrupted"):
        datasets.CIFAR10(str(root), train=True)
    dm = CIFAR10DataModule(data_dir=str(root), num_workers=0, batch_size=8)
    assert (dm.num_classes, dm.in_channels, dm.image_size) == (10, 3, 32)
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (45, 5, 20)
    assert dm.train_dataset.base.classes == list(CIFAR10_CLASSES)
    for split in (dm.train_dataset, dm.val_dataset, dm.test_dataset):
        assert_split_labels(split, 10, CIFAR10_MEAN, CIFAR10_STD, index_encodes_label=True)
    # The val subset holds the training images the split says, with their own labels.
    for i, idx in enumerate(dm.val_dataset.indices):
        assert dm.val_dataset[i][1] == idx % 10


def test_cifar10_eval_transform_normalises_exactly(tmp_path):
    dm = CIFAR10DataModule(data_dir=str(make_cifar_pickle(tmp_path, 10, 7)), num_workers=0)
    dm.setup("test")
    pixels, y = dm.test_dataset[6]
    raw = torch.from_numpy(flat_image(6 % 10, 6, 10)).permute(2, 0, 1)
    # the loader hands the pixels themselves; the normaliser (on the device) does the rest
    assert y == 6 and pixels.dtype == torch.uint8 and type(pixels) is torch.Tensor
    assert torch.equal(pixels, raw)
    x = dm.normalizer()(pixels)
    expected = (raw.float() / 255 - torch.tensor(CIFAR10_MEAN).view(3, 1, 1)) / torch.tensor(
        CIFAR10_STD
    ).view(3, 1, 1)
    assert x.dtype == torch.float32
    torch.testing.assert_close(x, expected, atol=1e-6, rtol=0)
    # One known pixel by hand: red = class_value(6, 10) = 170.
    assert x[0, 0, 0].item() == pytest.approx((170 / 255 - 0.4914) / 0.2470, abs=1e-6)


def test_cifar100_pickle_uses_fine_labels_and_its_constants(tmp_path):
    root = make_cifar_pickle(tmp_path, num_train=30, num_test=12, num_classes=100)
    dm = CIFAR100DataModule(data_dir=str(root), num_workers=0, val_fraction=0.2)
    assert dm.num_classes == 100
    dm.setup(None)
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (24, 6, 12)
    assert len(dm.train_dataset.base.classes) == 100
    for split in (dm.val_dataset, dm.test_dataset):
        assert_split_labels(split, 100, CIFAR100_MEAN, CIFAR100_STD, index_encodes_label=True)


def test_cifar_data_dir_may_be_the_batches_folder_itself(tmp_path):
    root = make_cifar_pickle(tmp_path, num_train=10, num_test=4)
    dm = CIFAR10DataModule(data_dir=str(root / "cifar-10-batches-py"), num_workers=0)
    dm.setup("test")
    assert len(dm.test_dataset) == 4


def test_cifar10_folder_layout_labels_follow_class_folders(tmp_path):
    root = make_cifar_folder(tmp_path, num_classes=10, train_per_class=3, test_per_class=2)
    dm = CIFAR10DataModule(data_dir=str(root), num_workers=0, val_fraction=0.2)
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (24, 6, 20)
    assert dm.test_dataset.base.classes == list(CIFAR10_CLASSES)
    for split in (dm.train_dataset, dm.val_dataset, dm.test_dataset):
        assert_split_labels(split, 10, CIFAR10_MEAN, CIFAR10_STD, index_encodes_label=False)
    # PNG is lossless: the eval tensor is exactly the pixel, and normalised, exactly its value.
    pixels, y = dm.test_dataset[0]
    assert y == 0 and pixels[0, 5, 5].item() == 0
    x = dm.normalizer()(pixels)
    assert x[0, 5, 5].item() == pytest.approx((0 / 255 - 0.4914) / 0.2470, abs=1e-6)


def test_cifar100_folder_layout(tmp_path):
    root = make_cifar_folder(tmp_path, num_classes=100, train_per_class=1, test_per_class=1)
    dm = CIFAR100DataModule(data_dir=str(root), num_workers=0)
    dm.setup(None)
    assert len(dm.test_dataset) == 100 and len(dm.train_dataset) + len(dm.val_dataset) == 100
    assert_split_labels(dm.test_dataset, 100, CIFAR100_MEAN, CIFAR100_STD, False)


def test_split_is_seeded_disjoint_and_global_seed_independent(tmp_path):
    root = str(make_cifar_pickle(tmp_path, num_train=60, num_test=2))

    def split(seed: int) -> tuple[list[int], list[int]]:
        dm = CIFAR10DataModule(data_dir=root, num_workers=0, split_seed=seed, val_fraction=0.2)
        dm.setup("fit")
        return dm.train_dataset.indices, dm.val_dataset.indices

    torch.manual_seed(0)
    train, val = split(1)
    torch.manual_seed(99)
    assert split(1) == (train, val)
    assert split(2) != (train, val)
    assert set(train).isdisjoint(val) and sorted(train + val) == list(range(60))
    assert len(val) == 12


def test_train_subset_picks_seeded_images_before_the_split(tmp_path):
    root = str(make_cifar_pickle(tmp_path, num_train=50, num_test=2))
    dm = CIFAR10DataModule(data_dir=root, num_workers=0, train_subset=20)
    dm.setup("fit")
    train, val = dm.train_dataset.indices, dm.val_dataset.indices
    assert (len(train), len(val)) == (18, 2) and set(train).isdisjoint(val)
    assert len(set(train + val)) == 20 and max(train + val) < 50
    again = CIFAR10DataModule(data_dir=root, num_workers=0, train_subset=20)
    again.setup("fit")
    assert (again.train_dataset.indices, again.val_dataset.indices) == (train, val)
    too_many = CIFAR10DataModule(data_dir=root, num_workers=0, train_subset=51)
    with pytest.raises(ConfigError, match=r"train_subset=51 exceeds the 50 images"):
        too_many.setup("fit")


def test_val_uses_eval_transform_and_train_augments(tmp_path):
    root = str(make_cifar_pickle(tmp_path, num_train=20, num_test=2))
    dm = CIFAR10DataModule(data_dir=root, num_workers=0)
    dm.setup("fit")
    train_ops = [type(t) for t in dm.train_dataset.transform.transforms]
    assert v2.RandomCrop in train_ops and v2.RandomHorizontalFlip in train_ops
    crop = dm.train_dataset.transform.transforms[train_ops.index(v2.RandomCrop)]
    assert crop.padding == [4, 4, 4, 4] and list(crop.size) == [32, 32]
    val_ops = [type(t) for t in dm.val_dataset.transform.transforms]
    assert v2.RandomCrop not in val_ops and v2.RandomHorizontalFlip not in val_ops
    # A padded crop shows the zero padding in some draws (uint8 zeros, normalised on the
    # device); the eval view never does.
    pad = torch.zeros(3, dtype=torch.uint8)
    torch.manual_seed(0)
    draws = [dm.train_dataset[0][0] for _ in range(20)]
    assert any(torch.equal(d[:, 0, 0], pad) for d in draws)
    assert not torch.equal(dm.val_dataset[0][0][:, 0, 0], pad)
    # augment=False: the train split is transformed exactly like val.
    plain = CIFAR10DataModule(data_dir=root, num_workers=0, augment=False)
    plain.setup("fit")
    x_train, _ = plain.train_dataset[0]
    base_index = plain.train_dataset.indices[0]
    expected = plain.eval_transform()(plain.train_dataset.base[base_index][0])
    torch.testing.assert_close(x_train, expected)


def test_dataloaders(tmp_path):
    root = str(make_cifar_pickle(tmp_path, num_train=30, num_test=10))
    dm = CIFAR10DataModule(data_dir=root, num_workers=0, batch_size=4)
    dm.setup("fit")
    dm.setup("test")
    train = dm.train_dataloader()
    assert isinstance(train.sampler, RandomSampler) and train.drop_last is False
    for loader in (dm.val_dataloader(), dm.test_dataloader(), dm.predict_dataloader()):
        assert isinstance(loader.sampler, SequentialSampler) and loader.drop_last is False
    assert len(dm.predict_dataloader().dataset) == len(dm.test_dataset) == 10
    assert train.pin_memory == torch.cuda.is_available() and not train.persistent_workers
    x, y = next(iter(train))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert sum(len(b[1]) for b in dm.val_dataloader()) == 3  # the last partial batch is kept
    workers = CIFAR10DataModule(data_dir=root, num_workers=2)
    workers.setup("fit")
    assert workers.train_dataloader().persistent_workers  # built, never iterated: no processes
    assert workers.train_dataloader().num_workers == 2


def test_datamodule_hparams_record_the_config(tmp_path):
    dm = CIFAR10DataModule(data_dir=str(tmp_path), batch_size=7, train_subset=30)
    assert dm.hparams["data_dir"] == str(tmp_path)
    assert dm.hparams["batch_size"] == 7 and dm.hparams["train_subset"] == 30


def test_cifar_download_goes_through_the_md5_checked_archive(tmp_path, monkeypatch):
    calls = []

    def fake_download(url, download_root, filename=None, md5=None):
        calls.append((url, md5))
        make_cifar_pickle(download_root, num_train=10, num_test=4)

    monkeypatch.setattr(cifar_module, "download_and_extract_archive", fake_download)
    dm = CIFAR10DataModule(data_dir=str(tmp_path / "c10"), num_workers=0, download=True)
    dm.prepare_data()
    dm.prepare_data()  # already there: no second download
    assert calls == [(datasets.CIFAR10.url, datasets.CIFAR10.tgz_md5)]
    dm.setup("test")
    assert len(dm.test_dataset) == 4


def test_cifar_download_failure_is_a_config_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(cifar_module, "download_and_extract_archive", offline)
    dm = CIFAR100DataModule(data_dir=str(tmp_path), download=True)
    with pytest.raises(ConfigError, match=r"Could not download CIFAR-100 .*--data.download false"):
        dm.prepare_data()


# --- Tiny ImageNet --------------------------------------------------------------------------


def test_tiny_imagenet_loads_grayscale_as_rgb_and_labels_right(tmp_path):
    folder = make_tiny_imagenet(tmp_path, per_class=10, val_per_class=3)
    for data_dir in (tmp_path, folder):  # the parent or the folder itself
        dm = TinyImageNetDataModule(data_dir=str(data_dir), num_workers=0, batch_size=4)
        assert (dm.num_classes, dm.in_channels, dm.image_size) == (3, 3, 64)
        dm.setup("fit")
        dm.setup("test")
        assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (27, 3, 9)
        for split in (dm.train_dataset, dm.val_dataset, dm.test_dataset):
            assert_split_labels(split, 3, TINY_IMAGENET_MEAN, TINY_IMAGENET_STD, False)
    # The grayscale files really are 1-channel on disk and come out as 3 equal channels.
    gray = folder / "train" / "n01443537" / "images" / "n01443537_0.JPEG"
    assert Image.open(gray).mode == "L"
    assert Image.open(folder / "val" / "images" / "val_0.JPEG").mode == "L"
    x, y = dm.test_dataset[0]
    rgb = centre_rgb(x, TINY_IMAGENET_MEAN, TINY_IMAGENET_STD)
    assert x.shape == (3, 64, 64) and y == 0
    assert torch.allclose(rgb, rgb[0].expand(3), atol=1e-3)


def test_tiny_imagenet_eval_normalisation(tmp_path):
    make_tiny_imagenet(tmp_path, per_class=2, val_per_class=1, grayscale=False)
    dm = TinyImageNetDataModule(data_dir=str(tmp_path), num_workers=0)
    dm.setup("test")
    pixels, y = dm.test_dataset[2]
    x = dm.normalizer()(pixels)
    path = str(dm.test_dataset.base.paths[2])
    raw = torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()).permute(2, 0, 1)
    assert torch.equal(pixels, raw)
    mean, std = torch.tensor(TINY_IMAGENET_MEAN), torch.tensor(TINY_IMAGENET_STD)
    expected = (raw.float() / 255 - mean.view(3, 1, 1)) / std.view(3, 1, 1)
    torch.testing.assert_close(x, expected, atol=1e-6, rtol=0)
    assert y == 2 and abs(unnormalise(x, mean, std)[0, 9, 9] - class_value(2, 3)) < 3


def test_tiny_imagenet_classes_are_listed_wnids_with_a_train_folder(tmp_path):
    extra = ("n09999991", "n09999992")
    wnids = ("n01641577", "n01443537", "n01629819", "n01644373")
    make_tiny_imagenet(
        tmp_path, wnids=wnids, per_class=2, val_per_class=2, listed_without_train=extra
    )
    dm = TinyImageNetDataModule(data_dir=str(tmp_path), num_workers=0)
    assert dm.num_classes == 4
    assert dm.classes == sorted(wnids)
    with pytest.warns(UserWarning, match="skipped 4 val images"):
        dm.setup("test")
    assert len(dm.test_dataset) == 8  # the 4 val images of the two extra classes are dropped
    assert_split_labels(dm.test_dataset, 6, TINY_IMAGENET_MEAN, TINY_IMAGENET_STD, False)


def test_tiny_imagenet_download(tmp_path, monkeypatch):
    calls = []

    def fake_download(url, download_root, md5=None, **kwargs):
        calls.append((url, Path(download_root), md5))
        make_tiny_imagenet(download_root, per_class=2, val_per_class=1)

    monkeypatch.setattr(tiny_module, "download_and_extract_archive", fake_download)
    # data_dir names the dataset folder itself: the archive is extracted into its parent.
    dm = TinyImageNetDataModule(data_dir=str(tmp_path / "tiny-imagenet-200"), download=True)
    dm.prepare_data()
    dm.prepare_data()
    assert calls == [(tiny_module.TINY_IMAGENET_URL, tmp_path, tiny_module.TINY_IMAGENET_MD5)]
    assert dm.num_classes == 3


# --- digits ---------------------------------------------------------------------------------


def test_digits_sizes_shapes_and_fixed_test_split():
    dm = DigitsDataModule(batch_size=64)
    assert (dm.num_classes, dm.in_channels, dm.image_size) == (10, 1, 8)
    dm.setup(None)
    assert len(dm.test_dataset) == 360
    assert (len(dm.train_dataset), len(dm.val_dataset)) == (1293, 144)
    other = DigitsDataModule(split_seed=5)
    other.setup(None)
    assert torch.equal(dm.test_dataset.base.images, other.test_dataset.base.images)
    assert dm.train_dataset.indices != other.train_dataset.indices
    # Together the splits are exactly the 1797 digits, scaled from 0..16 to [0, 1].
    dev_x, dev_y, test_x, test_y = digits_splits()
    bunch = load_digits()
    all_x = torch.cat([dev_x, test_x]) * 16
    assert torch.equal(all_x, all_x.round()) and all_x.max() == 16 and all_x.min() == 0
    assert sorted(map(tuple, all_x.flatten(1).int().tolist())) == sorted(
        map(tuple, bunch.data.astype(int).tolist())
    )
    # Stratified: every class is close to 20% of the test split.
    counts = np.bincount(test_y.numpy(), minlength=10)
    assert np.all(np.abs(counts - 0.2 * np.bincount(bunch.target)) <= 1)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (64, 1, 8, 8) and y.dtype == torch.int64


def test_digits_normalised_with_training_statistics():
    dm = DigitsDataModule(augment=False)
    dm.setup("fit")
    train = torch.stack([dm.train_dataset[i][0] for i in range(len(dm.train_dataset))])
    assert train.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert train.std().item() == pytest.approx(1.0, abs=1e-4)
    # One image by hand: (pixel / 16 - mean) / std.
    raw = dm.train_dataset.base.images[dm.train_dataset.indices[0]]
    expected = (raw - dm.mean[0]) / dm.std[0]
    torch.testing.assert_close(dm.train_dataset[0][0], expected)
    # The val split is not part of the statistics: its mean is not exactly 0.
    val = torch.stack([dm.val_dataset[i][0] for i in range(len(dm.val_dataset))])
    assert abs(val.mean().item()) > 1e-4


def test_digits_augmentation_is_crop_without_flip():
    dm = DigitsDataModule(train_subset=100)
    dm.setup("fit")
    ops = dm.train_dataset.transform.transforms
    assert v2.RandomHorizontalFlip not in [type(t) for t in ops]
    crop = next(t for t in ops if isinstance(t, v2.RandomCrop))
    assert crop.padding == [1, 1, 1, 1] and list(crop.size) == [8, 8]
    assert (len(dm.train_dataset), len(dm.val_dataset)) == (90, 10)


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"val_fraction": 0.0}, r"val_fraction must lie strictly between 0 and 1, got 0.0"),
        ({"val_fraction": 1.0}, r"val_fraction must lie strictly between 0 and 1"),
        ({"val_fraction": -0.2}, r"val_fraction .* Pass e.g. 0.1"),
        ({"batch_size": 0}, r"batch_size must be >= 1, got 0"),
        ({"train_subset": 1}, r"train_subset must be >= 2 .*got 1"),
        ({"num_workers": -1}, r"num_workers must be >= 0"),
    ],
)
@pytest.mark.parametrize(
    "module", [CIFAR10DataModule, CIFAR100DataModule, TinyImageNetDataModule, DigitsDataModule]
)
def test_bad_arguments_fail_at_construction(module, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        module(**kwargs)


@pytest.mark.parametrize(
    ("module", "name", "folder"),
    [
        (CIFAR10DataModule, "CIFAR-10", "cifar-10-batches-py"),
        (CIFAR100DataModule, "CIFAR-100", "cifar-100-python"),
    ],
)
def test_missing_cifar_says_where_it_looked_and_how_to_fix(tmp_path, module, name, folder):
    d = str(tmp_path / "empty")
    dm = module(data_dir=d, num_workers=0)
    dm.prepare_data()  # download is false: nothing to do, no error yet
    expected = (
        f"No {name} found in '{d}'. Expected '{d}/{folder}' (torchvision format) or "
        f"'{d}/train/<class>/', '{d}/test/<class>/'. Pass --data.download true to download it, "
        "or point --data.data_dir at a copy"
    )
    with pytest.raises(ConfigError, match=re.escape(expected)):
        dm.setup("fit")
    with pytest.raises(ConfigError, match=re.escape(expected)):
        dm.setup("test")


def test_incomplete_cifar_pickle_folder(tmp_path):
    root = make_cifar_pickle(tmp_path, num_train=10, num_test=2)
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    dm = CIFAR10DataModule(data_dir=str(root), num_workers=0)
    with pytest.raises(ConfigError, match=r"incomplete: missing data_batch_3\. .*--data.download"):
        dm.setup("fit")


def test_corrupt_cifar_pickle(tmp_path):
    root = make_cifar_pickle(tmp_path, num_train=10, num_test=2)
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    dm = CIFAR10DataModule(data_dir=str(root), num_workers=0)
    with pytest.raises(ConfigError, match=r"Cannot read the CIFAR-10 batches in"):
        dm.setup("test")


def test_cifar_folder_with_wrong_class_count(tmp_path):
    root = make_cifar_folder(tmp_path, num_classes=10, train_per_class=1, test_per_class=1)
    dm = CIFAR100DataModule(data_dir=str(root), num_workers=0)
    with pytest.raises(ConfigError, match=r"has 10 class folders; CIFAR-100 has 100"):
        dm.setup("fit")


def test_cifar_folder_splits_with_different_class_names(tmp_path):
    root = make_cifar_folder(tmp_path, num_classes=10, train_per_class=1, test_per_class=1)
    (root / "test" / "truck").rename(root / "test" / "lorry")
    dm = CIFAR10DataModule(data_dir=str(root), num_workers=0)
    with pytest.raises(ConfigError, match=r"different class folders \(not in both: lorry, truck\)"):
        dm.setup("test")


def test_unreadable_image_fails_at_setup_naming_the_file(tmp_path):
    root = make_cifar_folder(tmp_path, num_classes=10, train_per_class=2, test_per_class=1)
    bad = root / "train" / "cat" / "0001.png"
    bad.write_bytes(b"this is not an image")
    dm = CIFAR10DataModule(data_dir=str(root), num_workers=0)
    with pytest.raises(ConfigError, match=rf"Cannot read image '{re.escape(str(bad))}'"):
        dm.setup("fit")
    dm.setup("test")  # the test split is intact


def test_truncated_image_fails_in_the_loader_naming_the_file(tmp_path):
    folder = make_tiny_imagenet(tmp_path, per_class=3, val_per_class=1, grayscale=False)
    bad = folder / "val" / "images" / "val_1.JPEG"
    bad.write_bytes(bad.read_bytes()[:-20])  # header intact, the scan data cut short
    dm = TinyImageNetDataModule(data_dir=str(tmp_path), num_workers=0)
    dm.setup("test")  # the cheap header check passes
    with pytest.raises(ConfigError, match=rf"Cannot decode image '{re.escape(str(bad))}'"):
        list(dm.test_dataloader())


def test_unreadable_tiny_imagenet_image_fails_at_setup(tmp_path):
    folder = make_tiny_imagenet(tmp_path, per_class=3, val_per_class=1)
    bad = folder / "train" / "n01629819" / "images" / "n01629819_2.JPEG"
    bad.write_bytes(b"")
    dm = TinyImageNetDataModule(data_dir=str(tmp_path), num_workers=0)
    with pytest.raises(ConfigError, match=rf"Cannot read image '{re.escape(str(bad))}'"):
        dm.setup("fit")


def test_missing_tiny_imagenet(tmp_path):
    dm = TinyImageNetDataModule(data_dir=str(tmp_path), num_workers=0)
    with pytest.raises(ConfigError, match=r"No Tiny ImageNet found in .*--data.download true"):
        dm.setup("fit")
    with pytest.raises(ConfigError, match=r"No Tiny ImageNet found"):
        _ = dm.num_classes


@pytest.mark.parametrize("missing", ["wnids.txt", "val/val_annotations.txt"])
def test_tiny_imagenet_missing_label_files(tmp_path, missing):
    folder = make_tiny_imagenet(tmp_path, per_class=2, val_per_class=1)
    (folder / missing).unlink()
    dm = TinyImageNetDataModule(data_dir=str(tmp_path), num_workers=0)
    expected = f"Tiny ImageNet folder '{folder}' has no {missing}"
    with pytest.raises(ConfigError, match=re.escape(expected) + r".*Re-extract"):
        dm.setup("fit")


def test_tiny_imagenet_malformed_annotation_line(tmp_path):
    folder = make_tiny_imagenet(tmp_path, per_class=2, val_per_class=1)
    annotations = folder / "val" / "val_annotations.txt"
    annotations.write_text(annotations.read_text() + "val_99.JPEG n01443537\n")
    dm = TinyImageNetDataModule(data_dir=str(folder), num_workers=0)
    with pytest.raises(ConfigError, match=r"val_annotations.txt:4: expected 'filename<TAB>wnid"):
        dm.setup("test")


def test_tiny_imagenet_wnids_without_train_folders(tmp_path):
    folder = make_tiny_imagenet(tmp_path, per_class=2, val_per_class=1)
    (folder / "wnids.txt").write_text("n00000001\nn00000002\n")
    dm = TinyImageNetDataModule(data_dir=str(tmp_path), num_workers=0)
    with pytest.raises(ConfigError, match=r"None of the 2 wnids in .* has a folder"):
        _ = dm.num_classes


def test_dataloader_before_setup_is_a_clear_error(tmp_path):
    dm = CIFAR10DataModule(data_dir=str(tmp_path))
    with pytest.raises(RuntimeError, match=r"Call setup\('fit'\)"):
        dm.train_dataloader()
