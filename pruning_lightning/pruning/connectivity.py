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

The same pass, walked backward (:func:`effective_masks`), tells which kept weights lie on an
input-output path at all: the effective mask, whose sparsity is the *effective* sparsity
(Vysogorets & Kempe, "Connectivity Matters", JMLR 2023).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from pruning_lightning.pruning.masks import PRUNABLE_MODULES, check_masks
from pruning_lightning.pruning.network import module_modes


def _indicator_values(model: nn.Module, masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """float64 parameters and buffers of the indicator network: prunable weights = their mask
    (1 without one), other weights 1, biases 0, BatchNorm the identity (running stats 0 / 1)."""
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
    return values


def _reached(module: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
    """A layer's output clipped to {0, 1}: reached or not. Straight-through for the backward
    walk, whose gradient is clipped to {0, 1} on the way back as well."""
    hit = (output > 0).to(output.dtype)
    if not output.requires_grad:
        return hit
    out = output - output.detach() + hit
    out.register_hook(lambda g: (g > 0).to(g.dtype))
    return out


def _any_in_window(module: nn.MaxPool2d, inputs: tuple, output: Tensor) -> Tensor:
    """Max-pooling for reachability: the forward value is max's ("any input of the window is
    reached"), but the backward walk reaches EVERY input of the window, not only the first
    maximum (on {0, 1} values max picks one of many ties)."""
    x = inputs[0]
    if not x.requires_grad:
        return output
    spread = F.avg_pool2d(x, module.kernel_size, module.stride, module.padding, module.ceil_mode)
    return spread - spread.detach() + output


def _indicator_pass(
    model: nn.Module,
    values: dict[str, Tensor],
    input_shape: Sequence[int],
) -> Tensor:
    """The indicator network on the all-ones input: output > 0 where a path of kept weights (and
    parameter-free edges) reaches it. Gradients flow where ``values`` require them."""
    device = next(iter(values.values())).device
    x = torch.ones((1, *input_shape), dtype=torch.float64, device=device)
    handles = [
        m.register_forward_hook(_reached)
        for m in model.modules()
        if isinstance(m, PRUNABLE_MODULES)
    ]
    handles += [
        m.register_forward_hook(_any_in_window)
        for m in model.modules()
        if isinstance(m, nn.MaxPool2d)
    ]
    try:
        with module_modes(model, False):
            return functional_call(model, values, (x,))
    finally:
        for h in handles:
            h.remove()


def has_input_output_path(
    model: nn.Module, masks: Mapping[str, Tensor], input_shape: Sequence[int]
) -> bool:
    """True iff some output unit depends on the input through kept weights only.

    ``input_shape`` is the shape of one example, e.g. ``(3, 32, 32)``. Prunable tensors without a
    mask count as fully kept.
    """
    check_masks(model, masks, complete=False)
    values = _indicator_values(model, masks)
    with torch.no_grad():
        out = _indicator_pass(model, values, input_shape)
    return bool((out > 0).any())


def path_weights(
    model: nn.Module, masks: Mapping[str, Tensor], input_shape: Sequence[int]
) -> dict[str, Tensor]:
    """The weights, kept or not, whose input unit is reached from the input and whose output unit
    reaches an output through the kept weights: each such weight lies on an input-output path of
    ``masks`` plus that weight alone (for a kept one: it is effective).

    The gradient of the indicator network (see :func:`effective_masks`) w.r.t. every mask entry:
    a pruned weight's entry is 0 but its gradient still says whether it would connect. PHEW fills
    its last few weights from these. No path at all gives all False.
    """
    check_masks(model, masks, complete=False)
    values = _indicator_values(model, masks)
    leaves = {name: values[name].requires_grad_(True) for name in masks}
    out = _indicator_pass(model, values, input_shape)
    if not (out > 0).any():
        return {name: torch.zeros_like(m, dtype=torch.bool) for name, m in masks.items()}
    grads = torch.autograd.grad(out.sum(), list(leaves.values()), allow_unused=True)
    return {
        name: torch.zeros_like(m, dtype=torch.bool) if g is None else (g > 0).to(m.device)
        for (name, m), g in zip(masks.items(), grads, strict=True)
    }


def effective_masks(
    model: nn.Module, masks: Mapping[str, Tensor], input_shape: Sequence[int]
) -> dict[str, Tensor]:
    """The kept weights that lie on at least one input-output path, per masked tensor.

    Reachability runs forward from the input (the pass of :func:`has_input_output_path`) and
    backward from every output (the gradient of the outputs' sum, clipped to {0, 1} at every
    layer, so it only says "some path continues from here"): a kept weight is effective iff its
    input unit is reached from the input and its output unit reaches an output, i.e. iff its
    gradient in the indicator network is > 0. Residual additions, pooling and concatenation are
    parameter-free edges, so an identity shortcut carries the input past a dead branch; a unit
    fed by no kept weight and no parameter-free edge carries a constant (its bias), not the
    input. Units are (channel, position) pairs at ``input_shape``: a 3x3 tap that only ever
    meets zero padding (a 1x1 map) is on no path for that input size.

    Returns bool tensors shaped like ``masks`` (a subset of each); no path at all gives all False.
    """
    on_path = path_weights(model, masks, input_shape)
    return {name: mask.to(torch.bool) & on_path[name] for name, mask in masks.items()}
