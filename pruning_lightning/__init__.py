"""pruning-lightning: pruning neural networks at initialization with PyTorch Lightning."""

from pruning_lightning.errors import ConfigError
from pruning_lightning.pruning import compute_masks

__all__ = ["ConfigError", "compute_masks"]
__version__ = "0.1.0"
