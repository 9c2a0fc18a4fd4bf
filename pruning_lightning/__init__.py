"""pruning-lightning: pruning neural networks at initialization with PyTorch Lightning."""

from pruning_lightning.errors import ConfigError

__all__ = ["ConfigError"]
__version__ = "0.1.0"
