"""Shared test helpers: tiny networks, seeded batches, and a tiny Lightning model with its `fit`.

Plain functions, imported by the test modules (``from conftest import conv_net, batches``): pytest
puts this folder on ``sys.path`` (rootdir-relative "prepend" import mode, no ``__init__.py``
here), which is also what makes ``from data_fixtures import ...`` work; the insert below keeps
both working under ``--import-mode=importlib`` too.

Lightning is imported inside the functions that need it, so that modules which never train
(masks, criteria, engine, ...) do not pay for importing it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from pruning_lightning.callback import PruningCallback
    from pruning_lightning.classifier import ImageClassifier

if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))


# --- tiny networks and data for the pruning engine ---------------------------------------------


def conv_net(seed: int = 0, *, dropout: bool = False) -> nn.Sequential:
    """Conv-BN-ReLU, bias-free Conv-BN-ReLU, pool, Linear(24, 4), on (3, H, W) inputs.

    Prunable: ``0.weight`` (162), ``3.weight`` (324), ``8.weight`` (96). With ``dropout`` a
    ``Dropout(0.3)`` follows the first ReLU, which shifts the later indices by one: ``0.weight``,
    ``4.weight``, ``9.weight``. The weights are the same either way (dropout has none).
    """
    torch.manual_seed(seed)
    layers = [
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        *([nn.Dropout(0.3)] if dropout else []),
        nn.Conv2d(6, 6, 3, padding=1, bias=False),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(24, 4),
    ]
    return nn.Sequential(*layers)


def batches(
    n: int,
    seed: int = 0,
    *,
    batch_size: int = 4,
    image_shape: tuple[int, ...] = (3, 6, 6),
    num_classes: int = 4,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` seeded (images, labels) batches of standard-normal images, drawn batch by batch."""
    gen = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(batch_size, *image_shape, generator=gen),
            torch.randint(0, num_classes, (batch_size,), generator=gen),
        )
        for _ in range(n)
    ]


# --- a tiny ImageClassifier trained on the digits ------------------------------------------------


OPTIMIZERS: dict[str, Callable] = {
    "sgd_momentum_wd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
}


def tiny_model(optimizer=None, **kwargs) -> ImageClassifier:
    """A width-4 ResNet-18 for the 8x8 grayscale digits, constant learning rate by default.

    ``optimizer`` None keeps the classifier's default; ``kwargs`` (e.g. ``lr_scheduler``,
    ``warmup_epochs``) go to ``ImageClassifier``.
    """
    from pruning_lightning.classifier import ImageClassifier

    if optimizer is not None:
        kwargs["optimizer"] = optimizer
    kwargs.setdefault("lr_scheduler", None)
    return ImageClassifier(
        "resnet18", num_classes=10, in_channels=1, image_size=8, width=4, **kwargs
    )


def fit(
    tmp_path: Path,
    callback: PruningCallback,
    model=None,
    ckpt_path=None,
    datamodule=None,
    seed: int = 0,
    **trainer_kwargs,
) -> tuple[pl.Trainer, ImageClassifier]:
    """Seeded fit of ``model`` (default ``tiny_model()``) on the digits: 1 epoch of 4 batches, CPU.

    ``trainer_kwargs`` override the Trainer's settings; ``callbacks`` defaults to ``[callback]``.
    """
    import lightning.pytorch as pl

    from pruning_lightning.data import DigitsDataModule

    pl.seed_everything(seed)
    model = model or tiny_model()
    defaults = dict(
        default_root_dir=tmp_path,
        max_epochs=1,
        limit_train_batches=4,
        limit_val_batches=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
        log_every_n_steps=1,
    )
    trainer_kwargs.setdefault("callbacks", [callback])
    trainer = pl.Trainer(**{**defaults, **trainer_kwargs})
    trainer.fit(model, datamodule or DigitsDataModule(batch_size=32), ckpt_path=ckpt_path)
    return trainer, model


def pruned_weights(model: ImageClassifier, masks: dict[str, torch.Tensor]) -> torch.Tensor:
    """Every weight that ``masks`` prunes, flattened into one tensor."""
    params = dict(model.named_parameters())
    # after fit Lightning moves the model back to the CPU; masks stay where they were made
    return torch.cat([params[n].detach()[~m.to(params[n].device)] for n, m in masks.items()])
