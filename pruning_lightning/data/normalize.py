"""Normalisation of uint8 image batches on the device they reach: the one place it happens.

The image datamodules' loaders stop at uint8 (decode, crop and flip in the worker processes), so
a worker does no per-pixel float work and a batch is a quarter of the bytes of float32 to
collate, pin and copy. The classifier applies :class:`Normalize` first in its ``forward``, so
training, validation, test, predict and the mask computation (which calls the classifier on the
saliency batches) all see the tensors the in-worker ``ToDtype(scale=True)`` + ``Normalize`` made
before, bit for bit: it runs the same torchvision functions, only later and on the batch.

Float input passes unchanged: it is already normalised (the digits, whose pixels are stored as
floats and normalised in the loader; SynFlow's and the connectivity check's all-ones input).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.transforms.v2 import functional as TF

from pruning_lightning.errors import ConfigError


class Normalize(nn.Module):
    """uint8 images -> float32 in [0, 1] -> ``(x - mean) / std`` per channel; float unchanged.

    ``mean``/``std`` None: the statistics are not known yet (a uint8 batch is then an error that
    says how to pass them). No buffers: nothing enters a checkpoint's state_dict.
    """

    def __init__(
        self, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
    ) -> None:
        super().__init__()
        if (mean is None) != (std is None):
            raise ConfigError("Pass both mean and std of the input images, or neither.")
        if mean is not None and std is not None:
            if len(mean) != len(std) or not len(mean):
                raise ConfigError(
                    f"mean {tuple(mean)} and std {tuple(std)} need one value per channel each."
                )
            if any(s <= 0 for s in std):
                raise ConfigError(f"std must be > 0 per channel, got {tuple(std)}.")
        self.mean = None if mean is None else [float(m) for m in mean]
        self.std = None if std is None else [float(s) for s in std]

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype != torch.uint8:
            return x
        if self.mean is None or self.std is None:
            raise ConfigError(
                "uint8 images reached the classifier, which does not know the data's mean and "
                "std: pass ImageClassifier(mean=datamodule.mean, std=datamodule.std) (the CLI "
                "links them from --data)."
            )
        if x.dim() < 3 or x.shape[-3] != len(self.mean):
            raise ConfigError(
                f"uint8 images of shape {tuple(x.shape)} do not have the {len(self.mean)} "
                f"channels of mean {tuple(self.mean)}: check --data against --model."
            )
        # a loader may stack images channels-last (data.base.collate_images): the network gets
        # the contiguous layout it always had, and the same numbers
        x = x.contiguous()
        return TF.normalize(TF.to_dtype(x, torch.float32, scale=True), self.mean, self.std)

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std}"
