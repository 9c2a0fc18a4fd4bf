"""MobileNetV2 (Sandler et al. 2018), the usual CIFAR variant for 32x32 inputs.

Differences from ``torchvision.models.mobilenet_v2`` (ImageNet): the stem conv has stride 1 and
the second stage (24 channels) stride 1 instead of 2, so a 32x32 input is downsampled 8x, not
32x; no dropout before the classifier (it would make pruning scores depend on a dropout draw).
The layers and parameter count are otherwise the same.

Width: ``width`` is the stem's channel count (default 32, the published net). Every channel
count c of the published net, the 1280-channel last conv included, becomes
``max(1, round(c * width / 32))``. No divisible-by-8 rounding (unlike torchvision's
``width_mult``), so small test widths stay small and width 32 gives exactly the published net.
"""

from __future__ import annotations

from torch import Tensor, nn

from pruning_lightning.models.init import init_weights

# (expansion t, output channels c, blocks n, stride of the first block s) at width 32.
CIFAR_CFG: list[tuple[int, int, int, int]] = [
    (1, 16, 1, 1),
    (6, 24, 2, 1),  # stride 2 in the ImageNet net
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]
STEM_CHANNELS = 32
LAST_CHANNELS = 1280


def conv_bn(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    groups: int = 1,
    relu6: bool = True,
) -> nn.Sequential:
    """Conv (no bias) + BN, followed by ReLU6 unless it is a linear bottleneck projection."""
    layers: list[nn.Module] = [
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            kernel_size // 2,
            groups=groups,
            bias=False,
        ),
        nn.BatchNorm2d(out_channels),
    ]
    if relu6:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """1x1 expand (skipped when t == 1), 3x3 depthwise with the stride, linear 1x1 projection;
    identity residual when the shape is unchanged."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(conv_bn(in_channels, hidden, 1))
        layers += [
            conv_bn(hidden, hidden, 3, stride, groups=hidden),
            conv_bn(hidden, out_channels, 1, relu6=False),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """Stem, inverted residual blocks, 1x1 conv to 1280 (scaled), global average pool, Linear.

    Args:
        num_classes: outputs of the classifier.
        in_channels: channels of the input image.
        width: stem channels; every channel count scales by ``width / 32``.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = STEM_CHANNELS) -> None:
        super().__init__()

        def scale(c: int) -> int:
            return max(1, int(c * width / STEM_CHANNELS + 0.5))

        channels = scale(STEM_CHANNELS)
        layers: list[nn.Module] = [conv_bn(in_channels, channels, 3, stride=1)]
        for t, c, n, s in CIFAR_CFG:
            out_channels = scale(c)
            for i in range(n):
                layers.append(InvertedResidual(channels, out_channels, s if i == 0 else 1, t))
                channels = out_channels
        last = scale(LAST_CHANNELS)
        layers.append(conv_bn(channels, last, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.features(x))
        return self.classifier(x.flatten(1))


def mobilenetv2(
    num_classes: int = 10, in_channels: int = 3, image_size: int = 32, width: int | None = None
) -> MobileNetV2:
    """CIFAR MobileNetV2; ``width`` = stem channels (default 32). ``image_size`` is unused (the
    adaptive pool absorbs it) and accepted for a uniform signature."""
    return MobileNetV2(num_classes, in_channels, STEM_CHANNELS if width is None else width)
