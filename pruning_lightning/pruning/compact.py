"""A pruned network made physically smaller: every channel on no input-output path removed.

Steps, all exact in eval mode at the trained input size:

1. The effective mask (:func:`effective_masks`): kept weights on an input-output path.
2. Constant folding. A kept weight off every path either reads a unit no input reaches (whose
   value is a constant map: its bias through BatchNorm and ReLU) or writes a unit that reaches no
   output. Its contribution is therefore input-independent wherever it matters, so it is computed
   once from the masked network on a zero input and added back as an offset: into the bias when
   it is the same at every position, else as a fixed map (zero padding makes a 3x3 conv of a
   constant differ at the borders).
3. The ineffective weights are zeroed and every output channel that is zero in all of its coupled
   layers (residual additions, depthwise groups, BatchNorm) is removed together with the weights
   that read it, through Torch-Pruning's dependency graph. A layer keeps at least one channel.

What ``pruning-lightning export`` writes is then :func:`inference_network` of it: BatchNorm
folded into the layer before it and the convolution weights in channels_last, the form in which
the CPU runs the compact network at its FLOP ratio (docs/PERFORMANCE.md).

Requires the ``export`` extra (``pip install 'pruning-lightning[export]'``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx.experimental.optimization import fuse

from pruning_lightning.errors import ConfigError
from pruning_lightning.pruning.connectivity import effective_masks
from pruning_lightning.pruning.masks import PRUNABLE_MODULES, apply_masks, check_masks


class WithOffset(nn.Module):
    """``layer(x) + offset``: the folded constant of a layer whose offset varies over positions."""

    def __init__(self, layer: nn.Module, offset: Tensor) -> None:
        super().__init__()
        self.layer = layer
        self.register_buffer("offset", offset)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x) + self.offset


def _torch_pruning():
    try:
        import torch_pruning
    except ImportError as err:
        raise ConfigError(
            "Compact export needs Torch-Pruning: pip install 'pruning-lightning[export]'."
        ) from err
    return torch_pruning


def _layer_output(layer: nn.Module, x: Tensor, weight: Tensor) -> Tensor:
    """``layer`` applied to ``x`` with ``weight`` and no bias."""
    if isinstance(layer, nn.Conv2d):
        return F.conv2d(x, weight, None, layer.stride, layer.padding, layer.dilation, layer.groups)
    return F.linear(x, weight)


@torch.no_grad()
def _offsets(
    net: nn.Module, layers: Mapping[str, nn.Module], ineffective: Mapping[str, Tensor], shape
) -> dict[str, Tensor]:
    """Per layer, the output its kept-but-ineffective weights add (batch dimension dropped)."""
    inputs: dict[str, Tensor] = {}
    hooks = [
        layer.register_forward_pre_hook(
            lambda m, args, name=name: inputs.__setitem__(name, args[0].detach())
        )
        for name, layer in layers.items()
    ]
    try:
        net(torch.zeros((1, *shape), device=next(net.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    return {
        name: _layer_output(layer, inputs[name], layer.weight * ineffective[name])[0]
        for name, layer in layers.items()
        if ineffective[name].any()
    }


def compact_network(
    net: nn.Module,
    masks: Mapping[str, Tensor],
    input_shape: Sequence[int],
    keep: Sequence[str] = (),
) -> nn.Module:
    """A smaller copy of ``net`` (its weights times ``masks``) with the same eval-mode outputs.

    ``masks`` name prunable tensors of ``net`` (``<layer>.weight``); a prunable layer without a
    mask (left dense, e.g. by ``exclude``) counts as all kept and is compacted like the others.
    ``input_shape`` is one example's shape at the trained size. ``keep`` names the modules that
    write the network's outputs, whose output channels must all stay; by default the last
    ``nn.Linear`` (the logits), and a network without one must name its output layer(s) here.
    The copy is in eval mode; ``net`` is not touched.

    Raises:
        ConfigError: no input-output path survives ``masks`` (the network would be a constant),
            the masks do not fit ``net``, or ``keep`` is empty and ``net`` has no ``nn.Linear``.
    """
    tp = _torch_pruning()
    device = next(net.parameters()).device
    check_masks(net, {n: _as_bool(m) for n, m in masks.items()}, complete=False)
    net = copy.deepcopy(net).eval()
    kept_modules = _kept_modules(net, keep)
    reference = net
    net = copy.deepcopy(net)
    # every prunable layer, masked or dense: Torch-Pruning trims the input columns of all of
    # them, so each one's reads of dead channels must be folded (a dense layer's too)
    layers = {
        name: module
        for name, module in net.named_modules()
        if isinstance(module, PRUNABLE_MODULES) and isinstance(module.weight, nn.Parameter)
    }
    masks = {
        name: _as_bool(masks[f"{name}.weight"]).to(device)
        if f"{name}.weight" in masks
        else torch.ones_like(layer.weight, dtype=torch.bool)
        for name, layer in layers.items()
    }
    weighted = {f"{name}.weight": m for name, m in masks.items()}
    apply_masks(net, weighted)
    apply_masks(reference, weighted)
    effective = {
        n.removesuffix(".weight"): e for n, e in effective_masks(net, weighted, input_shape).items()
    }
    if not any(e.any() for e in effective.values()):
        raise ConfigError(
            "The mask leaves no path from the input to the output (the network is disconnected):"
            " its output is a constant, so there is nothing to export. Use a mask of lower "
            "sparsity or from another method."
        )
    offsets = _offsets(net, layers, {n: masks[n] & ~effective[n] for n in layers}, input_shape)

    # zero the ineffective weights; give every layer a bias holding its channel numbers, so that
    # after Torch-Pruning removes channels the survivors can be read off it
    biases: dict[str, Tensor | None] = {}
    with torch.no_grad():
        for name, layer in layers.items():
            layer.weight.mul_(effective[name])
            biases[name] = None if layer.bias is None else layer.bias.detach().clone()
            channels = torch.arange(layer.weight.shape[0], dtype=layer.weight.dtype, device=device)
            layer.bias = nn.Parameter(channels)
    kept_modules = [net.get_submodule(name) for name in kept_modules]
    example = torch.zeros((1, *input_shape), device=device)
    # (not ignored_layers: Torch-Pruning would then not trim their input channels either)
    try:
        graph = tp.DependencyGraph().build_dependency(net, example_inputs=example, verbose=False)
    except Exception as err:  # whatever the tracer cannot follow
        detail = (str(err).strip().splitlines() or [""])[0]
        raise ConfigError(
            f"Torch-Pruning cannot trace the channel dependencies of {type(net).__name__} "
            f"({type(err).__name__}: {detail}): the export supports networks of layers "
            "Torch-Pruning knows (see its customized_pruners)."
        ) from err
    for layer in layers.values():
        if any(layer is m for m in kept_modules):
            continue
        dead = _zero_rows(layer.weight)
        if not dead:
            continue
        prune_fn = (
            tp.prune_conv_out_channels
            if isinstance(layer, nn.Conv2d)
            else tp.prune_linear_out_channels
        )
        group = graph.get_pruning_group(layer, prune_fn, idxs=dead)
        alive_roots = set()
        for item in group:
            dep, idxs = item.dep, item.idxs
            member = dep.target.module
            out = graph.is_out_channel_pruning_fn(dep.handler)
            if out and isinstance(member, PRUNABLE_MODULES):
                kept = any(member is m for m in kept_modules)
                for i, root in zip(idxs, item.root_idxs, strict=True):
                    # Torch-Pruning's flatten mapping can list indices past the channels
                    if i < member.weight.shape[0] and (kept or member.weight[i].any()):
                        alive_roots.add(root)
        dead = [i for i in dead if i not in alive_roots]
        if len(dead) >= layer.weight.shape[0]:
            dead = dead[1:]  # a layer keeps one (zero) channel
        if dead:
            group = graph.get_pruning_group(layer, prune_fn, idxs=dead)
            if graph.check_pruning_group(group):
                group.prune()

    # restore the real biases of the surviving channels and add the folded offsets
    for name, layer in layers.items():
        alive = layer.bias.detach().round().long()
        bias = biases[name][alive] if biases[name] is not None else None
        offset = offsets.get(name)
        if offset is not None:
            offset = offset[alive]
        with torch.no_grad():
            if offset is not None and _uniform(offset):
                flat = offset.reshape(offset.shape[0], -1)[:, 0]
                bias = flat if bias is None else bias + flat
                offset = None
            layer.bias = None if bias is None else nn.Parameter(bias)
        if offset is not None:
            parent_name, _, child = name.rpartition(".")
            parent = net.get_submodule(parent_name) if parent_name else net
            setattr(parent, child, WithOffset(layer, offset))
    _verify(reference, net, input_shape)
    return net


def inference_network(net: nn.Module, input_shape: Sequence[int]) -> nn.Module:
    """An eval-mode copy of ``net`` in the form a CPU runs fastest, with the same outputs.

    - Every BatchNorm that only reads a convolution (or a linear layer) is folded into it
      (``torch.fx.experimental.optimization.fuse``): in eval mode it is an affine map per channel,
      so the folded layer is exact up to rounding, and the memory-bound normalisation pass is gone
      (about a quarter of the compact ResNet-50's time, which FLOP counts do not see). A network
      torch.fx cannot trace keeps its BatchNorm layers.
    - Convolution weights are stored channels_last: oneDNN's convolutions then run on NHWC
      without reordering each layer's input and output, which costs most where compaction left
      channel counts that are not a multiple of its blocking.

    The copy is checked against ``net`` on random inputs like :func:`compact_network`'s result;
    ``net`` is not touched.
    """
    net = copy.deepcopy(net).eval()
    try:
        fast = fuse(copy.deepcopy(net), inplace=True)
    except Exception:  # torch.fx cannot trace it (data-dependent control flow, ...): unfolded
        fast = copy.deepcopy(net)
    fast = fast.to(memory_format=torch.channels_last).eval()
    _verify(net, fast, input_shape)
    return fast


def _as_bool(mask):
    """A 0/1 mask tensor as bool (anything else is left for check_masks to name)."""
    return mask.to(torch.bool) if isinstance(mask, Tensor) else mask


def _kept_modules(net: nn.Module, keep: Sequence[str]) -> list[str]:
    """The names of the modules whose output channels must stay (see compact_network)."""
    if isinstance(keep, str):
        keep = [keep]
    if not keep:
        linear = [name for name, m in net.named_modules() if isinstance(m, nn.Linear)]
        if not linear:
            raise ConfigError(
                f"{type(net).__name__} has no nn.Linear head, so the export cannot tell which "
                "layer writes the outputs: pass keep=[name of that module] to compact_network."
            )
        return linear[-1:]
    modules = dict(net.named_modules())
    unknown = [k for k in keep if not isinstance(modules.get(k), PRUNABLE_MODULES)]
    if unknown:
        raise ConfigError(
            f"keep names {unknown}, which are not nn.Conv2d / nn.Linear modules of "
            f"{type(net).__name__}: name the layer(s) writing the outputs, as in named_modules()."
        )
    return list(keep)


@torch.no_grad()
def _verify(masked: nn.Module, compact: nn.Module, input_shape: Sequence[int]) -> None:
    """The compact network must give the masked network's logits (float32 tolerance)."""
    x = torch.randn((4, *input_shape), device=next(masked.parameters()).device)
    expected, got = masked(x), compact(x)
    if expected.shape != got.shape:
        raise ConfigError(
            f"The compact network's output has shape {tuple(got.shape)}, not "
            f"{tuple(expected.shape)}: the layer writing the outputs lost channels. Pass its name "
            "in keep (compact_network's keep=[...])."
        )
    error = float((expected - got).abs().max())
    if error > 1e-4 * max(1.0, float(expected.abs().max())):
        raise RuntimeError(
            f"The compact network differs from the masked one by {error:.3g} on random inputs; "
            "this is a bug of the export, please report it with the checkpoint."
        )


def _zero_rows(weight: Tensor) -> list[int]:
    return (~weight.reshape(weight.shape[0], -1).any(1)).nonzero().flatten().tolist()


def _uniform(offset: Tensor) -> bool:
    flat = offset.reshape(offset.shape[0], -1)
    return bool((flat == flat[:, :1]).all())
