"""uint8 to the device: the image loaders hand uint8 batches and the classifier normalises them
first thing, which must give the tensors and the masks the in-worker float pipeline gave."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from data_fixtures import make_cifar_pickle, make_imagenet, make_tiny_imagenet
from torchvision.transforms import v2

from pruning_lightning.callback import PruningCallback
from pruning_lightning.classifier import ImageClassifier
from pruning_lightning.data import CIFAR10DataModule, ImageNetDataModule, TinyImageNetDataModule
from pruning_lightning.data.base import ImageDataModule, collate_images
from pruning_lightning.errors import ConfigError
from pruning_lightning.pruning.batches import seeded_loader


def random_cifar(tmp_path, **kwargs) -> CIFAR10DataModule:
    """CIFAR-10 fixture whose pixels are random (flat fixture images hide crops and flips)."""
    root = make_cifar_pickle(tmp_path, num_train=40, num_test=8)
    dm = CIFAR10DataModule(data_dir=str(root), num_workers=0, batch_size=8, **kwargs)
    dm.setup("fit")
    dm.setup("test")
    rng = np.random.default_rng(0)
    for images in (dm.train_dataset.base, dm.test_dataset.base):  # train and val share one
        images.data = rng.integers(0, 256, size=images.data.shape, dtype=np.uint8)
    return dm


def datamodule(name: str, tmp_path) -> ImageDataModule:
    if name == "cifar10":
        return random_cifar(tmp_path)
    if name == "tiny_imagenet":
        make_tiny_imagenet(tmp_path, per_class=6, val_per_class=2, grayscale=False)
        dm = TinyImageNetDataModule(data_dir=str(tmp_path), num_workers=0, batch_size=4)
    else:
        make_imagenet(tmp_path, per_class=6, val_per_class=2)
        dm = ImageNetDataModule(
            data_dir=str(tmp_path), num_workers=0, batch_size=4, crop_size=24, resize_size=28
        )
    dm.setup("fit")
    dm.setup("test")
    return dm


def float_pipeline(dm: ImageDataModule, split: str):
    """The same dataset with the transform it had before: scaling and Normalize in the loader."""
    dataset = getattr(dm, f"{split}_dataset")
    old = type(dataset)(dataset.base, dataset.indices, dataset.transform)
    old.transform = v2.Compose(
        [dataset.transform, v2.ToDtype(torch.float32, scale=True), v2.Normalize(dm.mean, dm.std)]
    )
    return old


@pytest.mark.parametrize("name", ["cifar10", "tiny_imagenet", "imagenet"])
@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_uint8_batch_normalised_on_device_equals_the_float_pipeline(tmp_path, name, split):
    dm = datamodule(name, tmp_path)
    loader = getattr(dm, f"{split}_dataloader" if split != "test" else "predict_dataloader")()
    torch.manual_seed(0)  # the shuffle and the random crops and flips, alike on both paths
    pixels, labels = next(iter(loader))
    assert pixels.dtype == torch.uint8
    torch.manual_seed(0)
    old_loader = torch.utils.data.DataLoader(
        float_pipeline(dm, split), batch_size=loader.batch_size, shuffle=split == "train"
    )
    expected, old_labels = next(iter(old_loader))
    assert torch.equal(labels, old_labels)
    torch.testing.assert_close(dm.normalizer()(pixels), expected, rtol=0, atol=1e-6)


def tiny_classifier(dm: ImageDataModule) -> ImageClassifier:
    torch.manual_seed(0)
    return ImageClassifier(
        "resnet18", dm.num_classes, 3, dm.image_size, width=4, lr_scheduler=None,
        mean=dm.mean, std=dm.std,
    )  # fmt: skip


@pytest.mark.parametrize(
    "method, name",
    [("force", "cifar10"), ("snip", "cifar10"), ("grasp", "cifar10"), ("force", "imagenet")],
)
def test_same_mask_from_uint8_batches_as_from_the_float_pipeline(tmp_path, method, name):
    """The callback's own path: a seeded saliency loader over the datamodule's training set
    (ImageNet's batches are stacked channels-last, see test_collate_images_...)."""
    dm = datamodule(name, tmp_path)
    model = tiny_classifier(dm)
    steps = 3 if method == "force" else None
    masks = {}
    for path in ("uint8", "float"):
        if path == "float":
            dm.train_dataset = float_pipeline(dm, "train")
        callback = PruningCallback(method=method, sparsity=0.9, steps=steps, seed=0)
        torch.manual_seed(0)  # the crops and flips of the saliency batches
        masks[path] = callback.compute(model, seeded_loader(dm.train_dataloader(), seed=0)).masks
    for name, mask in masks["uint8"].items():
        assert torch.equal(mask, masks["float"][name]), name


def test_collate_images_stacks_height_width_channel_images_as_they_lie():
    """The decoder's and the channels-last crop's images (HWC in memory) become an (N, C, H, W)
    batch that is channels-last in memory, equal to default_collate's; Normalize then hands the
    network the contiguous tensor it had before, with the same numbers."""
    torch.manual_seed(0)
    hwc = [torch.randint(0, 256, (5, 7, 3), dtype=torch.uint8).permute(2, 0, 1) for _ in range(4)]
    batch = [(image, label) for label, image in enumerate(hwc)]
    pixels, labels = collate_images(batch)
    expected, expected_labels = torch.utils.data.default_collate(batch)
    assert pixels.shape == (4, 3, 5, 7)
    assert pixels.is_contiguous(memory_format=torch.channels_last) and not pixels.is_contiguous()
    assert torch.equal(pixels, expected) and torch.equal(labels, expected_labels)
    normalize = ImageDataModule.normalizer(CIFAR10DataModule(data_dir="unused"))
    out = normalize(pixels)
    assert out.is_contiguous()
    assert torch.equal(out, normalize(expected.contiguous()))
    # contiguous (C, H, W) images (CIFAR's padded crops) and floats: default_collate's batch
    for other in ([(x.contiguous(), 0) for x in hwc], [(x.float(), 0) for x in hwc]):
        assert collate_images(other)[0].is_contiguous()


def test_classifier_normalises_uint8_and_leaves_floats_alone(tmp_path):
    dm = random_cifar(tmp_path)
    model = tiny_classifier(dm).eval()
    pixels, _ = next(iter(dm.val_dataloader()))
    with torch.no_grad():
        logits = model(pixels)
        torch.testing.assert_close(logits, model.backbone(dm.normalizer()(pixels)))
        # an already normalised float batch (the digits, SynFlow's ones) goes in as it is
        floats = torch.randn(2, 3, 32, 32)
        torch.testing.assert_close(model(floats), model.backbone(floats))


def test_uint8_without_the_data_statistics_names_the_fix():
    model = ImageClassifier("resnet18", 10, 3, 32, width=4, lr_scheduler=None)
    with pytest.raises(ConfigError, match=r"mean=datamodule.mean, std=datamodule.std"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ConfigError, match="both mean and std"):
        ImageClassifier("resnet18", 10, 3, 32, width=4, mean=(0.5, 0.5, 0.5))
