"""Backbones from outside the registry (any ``nn.Module`` a config builds by ``class_path``) and
weights from disk.

A network the project did not build may not fit the data: its stem may take other channels, its
head other classes, or it may have no head at all. :func:`check_backbone` finds that out with
one forward pass on zeros, before any training, and says which number to change.
:func:`load_backbone_weights` reads a state_dict (or a Lightning checkpoint's) with torch's safe
loader and names every key that does not fit.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from pruning_lightning.errors import ConfigError
from pruning_lightning.pruning.network import module_modes


def class_path(module: nn.Module) -> str:
    """The import path of ``module``'s class, e.g. ``torchvision.models.resnet.ResNet``."""
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def check_backbone(
    backbone: nn.Module, num_classes: int, in_channels: int, image_size: int
) -> None:
    """One eval-mode forward pass on zeros of the data's shape: the output must be the logits,
    ``(batch, num_classes)``. The module is left as it was (mode, weights, buffers, RNG).

    Raises:
        ConfigError: the stem does not take the data's channels or size, the output is no
            ``(batch, classes)`` tensor (no classifier head), or its class count is not the
            data's; the message names both numbers and the fix.
    """
    name = class_path(backbone)
    if not any(True for _ in backbone.parameters()):
        raise ConfigError(f"The backbone {name} has no parameters: there is nothing to prune.")
    device = next(backbone.parameters()).device
    example = torch.zeros((2, in_channels, image_size, image_size), device=device)
    try:
        with torch.no_grad(), module_modes(backbone, False):
            output = backbone(example)
    except Exception as err:  # whatever the network refuses about this input
        stem = next((m for m in backbone.modules() if isinstance(m, nn.Conv2d)), None)
        if stem is not None and stem.in_channels != in_channels:
            raise ConfigError(
                f"The backbone {name} takes {stem.in_channels} input channels but the data has "
                f"{in_channels}: build it for {in_channels} (timm: in_chans: {in_channels}), or "
                f"use data with {stem.in_channels} (DigitsDataModule: channels: "
                f"{stem.in_channels})."
            ) from None
        raise ConfigError(
            f"The backbone {name} fails on the data's images, shape {tuple(example.shape[1:])} "
            f"({type(err).__name__}: {_first_line(err)}): use a network for images of that size "
            "and channel count."
        ) from None
    if not isinstance(output, Tensor) or output.dim() != 2:
        shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise ConfigError(
            f"The backbone {name} outputs {shape}, not logits (batch, classes): a model without a "
            "classifier head cannot be trained here. Give it one (torchvision/timm: num_classes)."
        )
    if output.shape[1] != num_classes:
        raise ConfigError(
            f"The backbone {name} outputs {output.shape[1]} classes but the data has "
            f"{num_classes}: set num_classes: {num_classes} in the backbone's init_args."
        )


def load_backbone_weights(backbone: nn.Module, path: str | Path, strict: bool = True) -> list[str]:
    """Copy the weights in ``path`` into ``backbone``; returns the keys left out (non-strict).

    ``path`` holds a state_dict of the backbone (``torch.save(net.state_dict())``) or a Lightning
    checkpoint, whose ``backbone.``-prefixed entries are used when it has any (a checkpoint of
    this application). Read with ``weights_only=True``: tensors and plain data, never code.

    Raises:
        ConfigError: the file is missing, unsafe or no state_dict; or, with ``strict``, some key
            is missing, unexpected or of another shape (the first few of each are named).
    """
    state = _read_state_dict(Path(path))
    own = backbone.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = [
        _listed(f"missing key{'s' if len(missing) > 1 else ''}", missing),
        _listed(f"unexpected key{'s' if len(unexpected) > 1 else ''}", unexpected),
        _listed(
            "of another shape",
            [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in reshaped],
        ),
    ]
    problems = [p for p in problems if p]
    if strict and problems:
        raise ConfigError(
            f"--model.weights {path} does not fit the backbone {class_path(backbone)}: "
            f"{'; '.join(problems)}. Pass the weights of this network, or --model.weights_strict "
            "false to load only the keys that fit."
        )
    fitting = {k: v for k, v in state.items() if k in own and k not in reshaped}
    if not fitting:
        raise ConfigError(
            f"--model.weights {path}: none of its keys fits the backbone {class_path(backbone)}."
        )
    backbone.load_state_dict(fitting, strict=False)
    return [*missing, *reshaped]


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """``{name: tensor}`` from a state_dict file or a Lightning checkpoint; safe loading only."""
    if not path.is_file():
        state = "is not a file" if path.exists() else "does not exist"
        raise ConfigError(f"--model.weights {path} {state}: point it at a saved state_dict.")
    from pruning_lightning.export import safe_load_refusal

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ConfigError(f"--model.weights {path}: {safe_load_refusal(str(err))}.") from None
    except Exception as err:  # a truncated, corrupted or foreign file
        raise ConfigError(
            f"--model.weights {path} is no file of torch.save ({type(err).__name__}): point it at "
            "a saved state_dict."
        ) from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]  # a Lightning checkpoint
        prefix = "backbone."
        ours = {k.removeprefix(prefix): v for k, v in data.items() if k.startswith(prefix)}
        data = ours or data
    if (
        not isinstance(data, dict)
        or not data
        or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in data.items())
    ):
        raise ConfigError(
            f"--model.weights {path} holds no state_dict (a dict of name -> tensor): save one with "
            "torch.save(model.state_dict(), path)."
        )
    return data


def _listed(what: str, keys: list[str], shown: int = 3) -> str:
    """``"2 missing keys (a, b)"``, at most ``shown`` names; empty for no keys."""
    if not keys:
        return ""
    more = f", ... {len(keys) - shown} more" if len(keys) > shown else ""
    return f"{len(keys)} {what} ({', '.join(keys[:shown])}{more})"


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
