"""Backbones and the name -> builder registry.

Every builder takes ``(num_classes, in_channels, image_size, width)`` and returns a network whose
output is the logits, shape ``(batch, num_classes)``, with weights from :func:`init_weights`.
Its prunable tensors are the ``.weight`` of every ``nn.Conv2d`` and ``nn.Linear``; the classifier
is the module named ``classifier`` in every backbone. The ``*_imagenet`` backbones are
torchvision's ImageNet networks (see imagenet.py); they have a fixed width. The builders trust
their arguments: :func:`build_backbone` is the validated entry point.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from pruning_lightning.errors import ConfigError
from pruning_lightning.models.imagenet import (
    resnet18_imagenet,
    resnet50_imagenet,
    vgg16_bn_imagenet,
    vgg19_bn_imagenet,
)
from pruning_lightning.models.init import init_weights
from pruning_lightning.models.mobilenet import mobilenetv2
from pruning_lightning.models.resnet import resnet18, resnet34, resnet50, resnet110
from pruning_lightning.models.vgg import vgg16, vgg19

BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "resnet110": resnet110,
    "vgg16": vgg16,
    "vgg19": vgg19,
    "mobilenetv2": mobilenetv2,
    "resnet18_imagenet": resnet18_imagenet,
    "resnet50_imagenet": resnet50_imagenet,
    "vgg16_bn_imagenet": vgg16_bn_imagenet,
    "vgg19_bn_imagenet": vgg19_bn_imagenet,
}

#: torchvision's ImageNet networks: their width is fixed (``width`` must stay None).
FIXED_WIDTH = frozenset(n for n in BACKBONES if n.endswith("_imagenet"))

# The smallest image_size each net accepts: its total downsampling (the product of its stride-2
# steps), so every stride-2 step halves a map of at least 2x2 and the last stage is at least 1x1.
# VGG drops the max-pools that would see a 1x1 map (see vgg.py), so any size works.
MIN_IMAGE_SIZE: dict[str, int] = {
    "resnet18": 8,
    "resnet34": 8,
    "resnet50": 8,
    "resnet110": 4,
    "vgg16": 1,
    "vgg19": 1,
    "mobilenetv2": 8,
    # stem stride 2 + max-pool + three stride-2 stages (ResNet) or five max-pools (VGG)
    "resnet18_imagenet": 32,
    "resnet50_imagenet": 32,
    "vgg16_bn_imagenet": 32,
    "vgg19_bn_imagenet": 32,
}


def _require_int(name: str, value: object, minimum: int, why: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}: {why}.")


def build_backbone(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    image_size: int = 32,
    width: int | None = None,
) -> nn.Module:
    """Build the backbone ``name`` after checking the arguments.

    Args:
        name: one of the keys of :data:`BACKBONES`.
        num_classes: outputs of the classifier (at least 2).
        in_channels: image channels the stem takes (1 for grayscale).
        image_size: image height and width; at least :data:`MIN_IMAGE_SIZE` of the net.
        width: base width (see each builder); None for the published one.

    Raises:
        ConfigError: unknown name or an argument out of range; the message says how to fix it.
    """
    if name not in BACKBONES:
        raise ConfigError(f"Unknown backbone {name!r}. Choose one of: {', '.join(BACKBONES)}.")
    _require_int("num_classes", num_classes, 2, "set it to the number of classes of the dataset")
    _require_int("in_channels", in_channels, 1, "use 3 for RGB images or 1 for grayscale")
    _require_int("image_size", image_size, 1, "set it to the height (= width) of the images")
    if width is not None and name in FIXED_WIDTH:
        raise ConfigError(
            f"{name} is torchvision's ImageNet network, whose width is fixed: leave "
            "--model.width unset (null), or pick a CIFAR backbone to scale the width."
        )
    if width is not None:
        _require_int("width", width, 1, f"leave it null for the published width of {name}")
    minimum = MIN_IMAGE_SIZE[name]
    if image_size < minimum:
        small = ", ".join(n for n, m in MIN_IMAGE_SIZE.items() if m <= image_size)
        raise ConfigError(
            f"image_size={image_size} is too small for {name}, which downsamples by {minimum}: "
            f"use images of at least {minimum}x{minimum} or a backbone that fits ({small})."
        )
    return BACKBONES[name](
        num_classes=num_classes, in_channels=in_channels, image_size=image_size, width=width
    )


__all__ = ["BACKBONES", "FIXED_WIDTH", "MIN_IMAGE_SIZE", "build_backbone", "init_weights"]
