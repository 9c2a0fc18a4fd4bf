"""Masks and checkpoints for the export tests, made so that no outcome depends on float rounding.

A progressive mask (FORCE at 90% on one seed) can disconnect the network on another CPU, so the
export tests never take their masks from a method: :func:`forcelike_masks` draws FORCE-like masks
(very sparse, whole channels dead or unread) from a seeded CPU generator, the same bits on every
machine, with one guaranteed input-output path. Checkpoints are made by real runs that load such
a mask (``--pruning.masks_path``), and cached per pytest session (:func:`pruned_run`), since the
export, CLI and checkpoint-safety tests all need one.
"""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import fit
from torch import Tensor, nn

from pruning_lightning.pruning.masks import prunable_parameters


def forcelike_masks(
    net: nn.Module, density: float, seed: int = 0, dead: float = 0.3
) -> dict[str, Tensor]:
    """Seeded masks keeping about ``density`` of every prunable tensor, FORCE-like: a fraction
    ``dead`` of each layer's output channels has no kept weight (a constant channel) and of its
    input channels is read by none (a dead end). Weight ``[0, 0, centre]`` of every layer stays,
    so channel 0 carries a path from input channel 0 to logit 0 through every layer (residual
    blocks, depthwise groups and the flattened classifier included) whatever else is drawn."""
    gen = torch.Generator().manual_seed(seed)
    masks = {}
    for name, p in prunable_parameters(net).items():
        mask = torch.rand(p.shape, generator=gen) < density
        mask[torch.rand(p.shape[0], generator=gen) < dead] = False
        mask[:, torch.rand(p.shape[1], generator=gen) < dead] = False
        mask[(0, 0, *(k // 2 for k in p.shape[2:]))] = True
        masks[name] = mask
    return masks


def quickstart_model(width: int = 16):
    """The quickstart's network: a ResNet-18 for the 8x8 grayscale digits."""
    from pruning_lightning.classifier import ImageClassifier

    return ImageClassifier(
        "resnet18", 10, in_channels=1, image_size=8, width=width, lr_scheduler=None
    )


_RUNS: dict[tuple[Path, str], Path] = {}


def pruned_run(tmp_path_factory, kind: str = "fit") -> Path:
    """The checkpoint of a finished pruned run, made once per session (and per ``kind``).

    ``fit``: the quickstart's network (width 16) with a FORCE-like mask at 1% density, trained
    2 epochs on the digits. ``early``: a width-4 ResNet-18 trained 2 steps densely, then pruned
    by ``random`` (a seeded draw, not a rounding-sensitive one) at 50%. ``resumed``: the
    ``early`` run resumed from its checkpoint for one more epoch.
    """
    from pruning_lightning.callback import PruningCallback

    key = (tmp_path_factory.getbasetemp(), kind)
    if key in _RUNS:
        return _RUNS[key]
    root = tmp_path_factory.mktemp(f"run_{kind}")
    if kind == "fit":
        model = quickstart_model()
        masks_path = root / "mask.pt"
        torch.save(forcelike_masks(model, 0.01, dead=0.5), masks_path)
        callback = PruningCallback(masks_path=str(masks_path))
        trainer, _ = fit(root, callback, model=model, max_epochs=2)
    elif kind == "early":
        callback = PruningCallback(method="random", sparsity=0.5, prune_after_steps=2)
        trainer, _ = fit(root, callback)
    elif kind == "resumed":
        early = pruned_run(tmp_path_factory, "early")
        callback = PruningCallback(method="random", sparsity=0.5, prune_after_steps=2)
        trainer, _ = fit(root, callback, ckpt_path=early, max_epochs=2)
    else:
        raise ValueError(kind)
    (ckpt,) = Path(trainer.log_dir).glob("checkpoints/*.ckpt")
    _RUNS[key] = ckpt
    return ckpt
