"""ImageNet backbones: torchvision's own ResNet-18/50 and VGG-16/19-BN, adapted to the conventions.

The architectures come from ``torchvision.models`` unchanged (7x7 stride-2 stem and max-pool for
the ResNets, the 4096-4096 dropout head for VGG); this module only

- moves the last Linear to a top-level ``classifier`` (torchvision calls it ``fc`` in ResNets and
  ``classifier.6`` in VGG), so ``--pruning.exclude '["*.classifier.*"]'`` keeps exactly the final
  layer dense as in every other backbone. VGG's two hidden Linear layers and their dropout are
  ``body.head`` (pruned like any Linear; dropout is seeded during the mask computation);
- replaces the stem conv when ``in_channels`` is not 3;
- re-initialises every weight with :func:`init_weights` (torchvision draws convs fan_out and VGG's
  Linear from N(0, 0.01); the pruning criteria score theta0, so it follows the project's recipe).

``width`` is not supported (torchvision's widths are fixed); ``image_size`` is only checked
against :data:`MIN_IMAGE_SIZE` (global pooling absorbs it).
"""

from __future__ import annotations

from collections import OrderedDict

import torchvision
from torch import Tensor, nn

from pruning_lightning.models.init import init_weights


class ImageNetBackbone(nn.Module):
    """``body`` (a torchvision network up to its penultimate features), then ``classifier``."""

    def __init__(self, body: nn.Module, classifier: nn.Linear) -> None:
        super().__init__()
        self.body = body
        self.classifier = classifier
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.body(x))


def _resnet(builder, num_classes: int, in_channels: int) -> ImageNetBackbone:
    body = builder(num_classes=num_classes)
    if in_channels != 3:
        body.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    classifier, body.fc = body.fc, nn.Identity()
    return ImageNetBackbone(body, classifier)


def _vgg(builder, num_classes: int, in_channels: int) -> ImageNetBackbone:
    net = builder(num_classes=num_classes)
    if in_channels != 3:
        net.features[0] = nn.Conv2d(in_channels, 64, kernel_size=3, padding=1)
    # torchvision's VGG.forward: features -> avgpool -> flatten -> classifier
    body = nn.Sequential(
        OrderedDict(
            features=net.features,
            avgpool=net.avgpool,
            flatten=nn.Flatten(1),
            head=net.classifier[:-1],
        )
    )
    return ImageNetBackbone(body, net.classifier[-1])


def resnet18_imagenet(
    num_classes: int = 1000, in_channels: int = 3, image_size: int = 224, width: int | None = None
) -> ImageNetBackbone:
    """torchvision's ResNet-18 (11.7M parameters with 1000 classes)."""
    return _resnet(torchvision.models.resnet18, num_classes, in_channels)


def resnet50_imagenet(
    num_classes: int = 1000, in_channels: int = 3, image_size: int = 224, width: int | None = None
) -> ImageNetBackbone:
    """torchvision's ResNet-50 (25.6M parameters with 1000 classes)."""
    return _resnet(torchvision.models.resnet50, num_classes, in_channels)


def vgg16_bn_imagenet(
    num_classes: int = 1000, in_channels: int = 3, image_size: int = 224, width: int | None = None
) -> ImageNetBackbone:
    """torchvision's VGG-16-BN (138M parameters with 1000 classes)."""
    return _vgg(torchvision.models.vgg16_bn, num_classes, in_channels)


def vgg19_bn_imagenet(
    num_classes: int = 1000, in_channels: int = 3, image_size: int = 224, width: int | None = None
) -> ImageNetBackbone:
    """torchvision's VGG-19-BN (144M parameters with 1000 classes)."""
    return _vgg(torchvision.models.vgg19_bn, num_classes, in_channels)
