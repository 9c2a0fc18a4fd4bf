"""The loaders' decoder and fused crop: the same pixels as the PIL pipeline they replaced."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from pruning_lightning.data import ImageNetDataModule
from pruning_lightning.data.base import decode_rgb
from pruning_lightning.data.crop import RandomResizedCropFlip
from pruning_lightning.errors import ConfigError
from tests.data_fixtures import make_imagenet


def textured(seed: int = 0, size: tuple[int, int] = (61, 47)) -> np.ndarray:
    """Noise on a gradient: JPEG-coded, every decoder and resampler difference shows."""
    rng = np.random.default_rng(seed)
    w, h = size
    ramp = np.linspace(0, 200, w, dtype=np.float64)[None, :, None].repeat(h, 0).repeat(3, 2)
    return (ramp + rng.integers(0, 56, size=(h, w, 3))).astype(np.uint8)


def pil_pixels(path) -> torch.Tensor:
    with Image.open(path) as image:
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)


@pytest.mark.parametrize(
    ("mode", "fmt", "name"),
    [
        ("RGB", "JPEG", "a.jpg"),
        ("L", "JPEG", "gray.jpg"),
        ("CMYK", "JPEG", "cmyk.jpg"),
        ("RGB", "PNG", "png_named.JPEG"),  # ImageNet holds a PNG with a .JPEG name
        ("RGB", "BMP", "b.bmp"),  # torchvision does not read BMP: PIL does
    ],
)
def test_decode_rgb_gives_pils_pixels_bit_for_bit(tmp_path, mode, fmt, name):
    path = tmp_path / name
    Image.fromarray(textured()).convert(mode).save(path, format=fmt)
    pixels = decode_rgb(str(path))
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, 47, 61)
    assert torch.equal(pixels, pil_pixels(path))


def test_decode_rgb_names_a_broken_file(tmp_path):
    path = tmp_path / "broken.JPEG"
    path.write_bytes(b"\xff\xd8\xff\xe0" + b"not a jpeg" * 10)
    with pytest.raises(ConfigError, match="broken.JPEG"):
        decode_rgb(str(path))


@pytest.mark.parametrize("source", ["uint8", "float32", "pil"])
def test_fused_crop_and_flip_equal_torchvisions_for_the_same_seed(source):
    reference = v2.Compose(
        [v2.RandomResizedCrop(24, antialias=True), v2.RandomHorizontalFlip(), v2.ToPureTensor()]
    )
    pixels = textured(1, (70, 50))
    image = torch.from_numpy(pixels).permute(2, 0, 1)
    image = image.float() if source == "float32" else image
    given = Image.fromarray(pixels) if source == "pil" else image
    fused, flipped = RandomResizedCropFlip(24), 0
    for seed in range(20):
        torch.manual_seed(seed)
        expected = reference(v2.functional.to_image(image))
        torch.manual_seed(seed)
        got = fused(given)
        assert got.dtype == expected.dtype and torch.equal(got, expected)
        torch.manual_seed(seed)
        flipped += not torch.equal(reference.transforms[0](image), expected)
    assert 0 < flipped < 20  # both branches of the flip were compared


def test_imagenet_batches_within_one_grey_level_of_the_pil_pipeline(tmp_path):
    """The loader decodes with torchvision and resizes uint8 tensors; before, it decoded and
    resized with PIL. Same seed, same crops and flips, pixels at most one level apart."""
    make_imagenet(tmp_path, per_class=4, val_per_class=2, size=(64, 48))
    for k, path in enumerate(sorted(tmp_path.glob("*/*/*.JPEG"))):  # texture, not flat colour
        Image.fromarray(textured(k, (64, 48))).save(path, quality=90)
    dm = ImageNetDataModule(
        data_dir=str(tmp_path), num_workers=0, batch_size=4, crop_size=24, resize_size=28
    )
    dm.setup("fit")
    dm.setup("test")
    old = {
        "train": v2.Compose(
            [
                v2.RandomResizedCrop(24, antialias=True),
                v2.RandomHorizontalFlip(),
                v2.PILToTensor(),
            ]
        ),
        "test": v2.Compose([v2.Resize(28, antialias=True), v2.CenterCrop(24), v2.PILToTensor()]),
    }
    for split, dataset in (("train", dm.train_dataset), ("test", dm.test_dataset)):
        for i in range(len(dataset)):
            torch.manual_seed(i)
            new, label = dataset[i]
            with Image.open(dataset.base.paths[dataset.indices[i]]) as image:
                torch.manual_seed(i)
                before = old[split](image.convert("RGB"))
            assert new.dtype == torch.uint8 and new.shape == before.shape == (3, 24, 24)
            assert (new.int() - before.int()).abs().max() <= 1, (split, i)
