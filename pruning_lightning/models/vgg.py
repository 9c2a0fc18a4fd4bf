"""CIFAR-style VGG-16/19 with batch norm (Simonyan & Zisserman 2015; the CIFAR variant used by
the pruning-at-initialisation papers).

Differences from ``torchvision.models.vgg`` (ImageNet): no 3-layer 4096-wide head, but
AdaptiveAvgPool2d(1) and ONE Linear(8 * width -> num_classes), as in the FORCE/SNIP/GRASP code.

Small inputs: the five 2x2 max-pools shrink a 32x32 image to 1x1; an 8x8 image reaches 1x1 after
three, and a 2x2 max-pool on a 1x1 map fails. So a max-pool whose input would already be 1x1 is
left out of the network: the builder needs ``image_size``, and any size >= 1 works. The convs are
the same for every size, so the prunable tensors do not depend on ``image_size``.

The convs have no bias (a BatchNorm follows), so VGG-19 has 20,035,018 parameters with 10
classes, 5,504 (the conv biases) fewer than the 20,040,522 often quoted for CIFAR VGG-19-BN.
"""

from __future__ import annotations

from torch import Tensor, nn

from pruning_lightning.models.init import init_weights

# Convs per stage; each stage is followed by a 2x2 max-pool.
STAGE_CHANNELS = (64, 128, 256, 512, 512)  # at width 64
STAGE_DEPTHS: dict[str, tuple[int, ...]] = {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}


def make_features(
    depths: tuple[int, ...], in_channels: int, image_size: int, width: int
) -> nn.Sequential:
    """conv3x3-BN-ReLU blocks of ``STAGE_CHANNELS * width / 64`` channels, a MaxPool2d(2) after
    each stage unless the feature map is already 1x1."""
    layers: list[nn.Module] = []
    size = image_size
    for channels, depth in zip(STAGE_CHANNELS, depths, strict=True):
        out_channels = channels * width // 64
        for _ in range(depth):
            layers += [
                nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            ]
            in_channels = out_channels
        if size > 1:
            layers.append(nn.MaxPool2d(2, 2))
            size //= 2
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """``features`` (convs and pools), global average pool, one Linear ``classifier``."""

    def __init__(self, features: nn.Sequential, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(num_features, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.features(x))
        return self.classifier(x.flatten(1))


def _vgg(name: str, num_classes: int, in_channels: int, image_size: int, width: int | None) -> VGG:
    w = 64 if width is None else width
    features = make_features(STAGE_DEPTHS[name], in_channels, image_size, w)
    return VGG(features, 8 * w, num_classes)


def vgg16(
    num_classes: int = 10, in_channels: int = 3, image_size: int = 32, width: int | None = None
) -> VGG:
    """VGG-16-BN, CIFAR style; ``width`` = channels of the first conv (default 64)."""
    return _vgg("vgg16", num_classes, in_channels, image_size, width)


def vgg19(
    num_classes: int = 10, in_channels: int = 3, image_size: int = 32, width: int | None = None
) -> VGG:
    """VGG-19-BN, CIFAR style; ``width`` = channels of the first conv (default 64)."""
    return _vgg("vgg19", num_classes, in_channels, image_size, width)
