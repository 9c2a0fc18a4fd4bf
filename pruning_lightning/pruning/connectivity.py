"""Does the output still depend on the input through kept weights? (layer collapse, exactly)

A whole layer pruned away cuts a plain network, but a residual network survives a dead branch,
and partly pruned layers can still leave no path. So the check propagates reachability instead of
looking at per-layer counts: one float64 pass, no gradients, on the all-ones input, where every
prunable weight is its mask (0/1), every other weight 1, every bias 0, and BatchNorm the identity
(eval mode, running mean 0, variance 1, weight 1, bias 0), all through ``functional_call`` so the
model is not touched. Every value stays >= 0, so nothing cancels: a unit is > 0 iff a path of
kept weights reaches it from the input. Conv/Linear outputs are clipped to {0, 1} (a temporary
forward hook) so that long chains of sums can neither overflow nor underflow. Assumes the
activations map 0 to 0 and positive values to positive ones (the ReLU family, pooling), as in
every backbone of the project.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from pruning_lightning.pruning.masks import PRUNABLE_MODULES, check_masks
from pruning_lightning.pruning.saliency import module_modes


def _reached(module: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
    return (output > 0).to(output.dtype)


def has_input_output_path(
    model: nn.Module, masks: Mapping[str, Tensor], input_shape: Sequence[int]
) -> bool:
    """True iff some output unit depends on the input through kept weights only.

    ``input_shape`` is the shape of one example, e.g. ``(3, 32, 32)``. Prunable tensors without a
    mask count as fully kept.
    """
    check_masks(model, masks, complete=False)
    params = dict(model.named_parameters())
    device = next(iter(params.values())).device
    values: dict[str, Tensor] = {}
    for name, p in params.items():
        if name in masks:
            values[name] = masks[name].to(device=device, dtype=torch.float64)
        elif name.rsplit(".", 1)[-1] == "bias":
            values[name] = torch.zeros(p.shape, dtype=torch.float64, device=device)
        else:
            values[name] = torch.ones(p.shape, dtype=torch.float64, device=device)
    for name, b in model.named_buffers():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "running_mean":
            values[name] = torch.zeros(b.shape, dtype=torch.float64, device=device)
        elif leaf == "running_var":
            values[name] = torch.ones(b.shape, dtype=torch.float64, device=device)
        else:
            values[name] = b.detach().clone()
    x = torch.ones((1, *input_shape), dtype=torch.float64, device=device)
    handles = [
        m.register_forward_hook(_reached)
        for m in model.modules()
        if isinstance(m, PRUNABLE_MODULES)
    ]
    try:
        with torch.no_grad(), module_modes(model, False):
            out = functional_call(model, values, (x,))
    finally:
        for h in handles:
            h.remove()
    return bool((out > 0).any())
