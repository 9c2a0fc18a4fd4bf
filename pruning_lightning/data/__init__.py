"""One LightningDataModule per dataset family; the CLI picks one with ``--data``."""

from pruning_lightning.data.base import ImageDataModule
from pruning_lightning.data.cifar import CIFAR10DataModule, CIFAR100DataModule
from pruning_lightning.data.digits import DigitsDataModule
from pruning_lightning.data.imagenet import ImageNetDataModule
from pruning_lightning.data.tiny_imagenet import TinyImageNetDataModule

__all__ = [
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "DigitsDataModule",
    "ImageDataModule",
    "ImageNetDataModule",
    "TinyImageNetDataModule",
]
