"""CIFAR-style ResNets: ResNet-18/34/50 and ResNet-110 (He et al. 2016, "Deep residual learning").

Differences from ``torchvision.models.resnet`` (ImageNet): a 3x3 stride-1 stem conv and no
max-pool, so 32x32 inputs keep their resolution in the first stage. Every shape change in a
residual branch goes through a 1x1 conv + BN projection shortcut (``block.shortcut``), ResNet-110
included (the original used zero-padding shortcuts, "option A"), so that the pruning code finds a
prunable shortcut conv wherever the shape changes. The head is AdaptiveAvgPool2d(1) and one
Linear (``classifier``), so any input size works (64x64 Tiny ImageNet, 8x8 digits).

Every builder takes ``(num_classes, in_channels, image_size, width)``; ``image_size`` is unused
here (the adaptive pool absorbs it) and is accepted for a uniform signature.
"""

from __future__ import annotations

from torch import Tensor, nn

from pruning_lightning.models.init import init_weights


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 conv with padding 1, no bias (a BatchNorm follows)."""
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 conv, no bias (a BatchNorm follows)."""
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    """Identity when shapes match, otherwise a 1x1 conv + BN projection."""
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))


class BasicBlock(nn.Module):
    """Two 3x3 convs; the first carries the stride."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_planes, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride, as in torchvision's "v1.5"), 1x1 expand by 4."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = conv1x1(in_planes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, out_planes)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_planes, out_planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """Stem conv3x3-BN-ReLU, one stage per entry of ``planes``, global average pool, Linear.

    Args:
        block: BasicBlock or Bottleneck.
        blocks: number of blocks per stage.
        planes: the block width of each stage (output channels are ``planes * expansion``).
        strides: stride of the first block of each stage.
        num_classes: outputs of the classifier.
        in_channels: channels of the input image.
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        blocks: list[int],
        planes: list[int],
        strides: list[int],
        num_classes: int,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.in_planes = planes[0]
        self.conv1 = conv3x3(in_channels, planes[0])
        self.bn1 = nn.BatchNorm2d(planes[0])
        self.relu = nn.ReLU(inplace=True)
        # stages named layer1, layer2, ... as in torchvision, so parameter names read the same
        self.num_stages = len(blocks)
        for i, (p, n, s) in enumerate(zip(planes, blocks, strides, strict=True), start=1):
            setattr(self, f"layer{i}", self._make_layer(block, p, n, s))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(self.in_planes, num_classes)
        init_weights(self)

    def _make_layer(
        self, block: type[BasicBlock | Bottleneck], planes: int, n: int, stride: int
    ) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{i}")(x)
        x = self.pool(x)
        return self.classifier(x.flatten(1))


def _cifar_resnet(
    block: type[BasicBlock | Bottleneck],
    blocks: list[int],
    num_classes: int,
    in_channels: int,
    width: int | None,
) -> ResNet:
    """ResNet-18/34/50 layout: 4 stages of [1, 2, 4, 8] x width planes, strides 1, 2, 2, 2."""
    w = 64 if width is None else width
    return ResNet(block, blocks, [w, 2 * w, 4 * w, 8 * w], [1, 2, 2, 2], num_classes, in_channels)


def resnet18(
    num_classes: int = 10, in_channels: int = 3, image_size: int = 32, width: int | None = None
) -> ResNet:
    """CIFAR ResNet-18: BasicBlocks [2, 2, 2, 2]; ``width`` = base planes (default 64)."""
    return _cifar_resnet(BasicBlock, [2, 2, 2, 2], num_classes, in_channels, width)


def resnet34(
    num_classes: int = 10, in_channels: int = 3, image_size: int = 32, width: int | None = None
) -> ResNet:
    """CIFAR ResNet-34: BasicBlocks [3, 4, 6, 3]; ``width`` = base planes (default 64)."""
    return _cifar_resnet(BasicBlock, [3, 4, 6, 3], num_classes, in_channels, width)


def resnet50(
    num_classes: int = 10, in_channels: int = 3, image_size: int = 32, width: int | None = None
) -> ResNet:
    """CIFAR ResNet-50: Bottlenecks [3, 4, 6, 3]; ``width`` = base planes (default 64)."""
    return _cifar_resnet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels, width)


def resnet110(
    num_classes: int = 10, in_channels: int = 3, image_size: int = 32, width: int | None = None
) -> ResNet:
    """He et al.'s CIFAR ResNet-110: 3 stages of 18 BasicBlocks, planes [1, 2, 4] x width
    (default width 16), strides 1, 2, 2; 1 + 108 + 1 = 110 weighted layers on the main path."""
    w = 16 if width is None else width
    return ResNet(BasicBlock, [18, 18, 18], [w, 2 * w, 4 * w], [1, 2, 2], num_classes, in_channels)
