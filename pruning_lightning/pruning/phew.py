"""PHEW (Patil & Dovrolis, ICML 2021): biased random walks from the input to the output, each hop
chosen with probability proportional to |theta0|, the walked weights kept until the budget is met
(docs/METHODS.md "PHEW"; official code ShreyasMalakarjunPatil/PHEW, ``Prune/phew_utils.py``).

The walks run on chains of Conv2d/Linear layers and residual blocks (VGG, the CIFAR ResNets,
torchvision-style blocks): conv layers are crossed at the channel level (a hop picks an output
channel and one kernel tap, jointly in proportion to |w|, in the official two-stage draw), and
each walk carries the interval of feature-map positions it reaches, so a tap that would leave the
walk on no position (zero padding, small maps) is never picked. A residual block (a module with a
``shortcut`` or ``downsample`` child) is crossed through its main branch or its projection
shortcut, on a fair coin as the official code tosses it; an identity shortcut is never taken.
Every kept weight lies on an input-output path of the network at ``input_shape``, checked with
:func:`~pruning_lightning.pruning.connectivity.effective_masks` at the end. Thousands of walks are
drawn at once from one CPU generator seeded with the run's seed, so every device and DDP rank
draws the same mask. Exactly k weights: walks are added in order while they fit; the remainder,
smaller than one walk, goes to the largest-|w| weights that connect on their own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from pruning_lightning.errors import ConfigError
from pruning_lightning.pruning.connectivity import (
    effective_masks,
    has_input_output_path,
    path_weights,
)
from pruning_lightning.pruning.criteria import ScoreContext, example_shape
from pruning_lightning.pruning.layerwise import kept_total
from pruning_lightning.pruning.masks import PRUNABLE_MODULES, TopKSelector, split_flat
from pruning_lightning.pruning.network import module_modes
from pruning_lightning.pruning.progressive import ScoreFn

#: Walks drawn at once, at most (a hop holds walks x out-units x taps floats).
WALK_BATCH = 4096
_HOP_FLOATS = 1 << 24
#: Batches in a row that add no weight before the walks give way to the fill.
_STALLS = 4
#: Poolings whose windows the walks follow ("any position of the window", as the indicator network
#: of connectivity.py treats them; an adaptive max-pool's gradient would pick one tied maximum).
_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)


@dataclass(frozen=True)
class Axis:
    """One axis of a conv: output position q reads input q * stride - padding + tap * dilation."""

    kernel: int
    stride: int
    padding: int
    dilation: int
    n_in: int
    n_out: int

    @property
    def shift(self) -> Tensor:
        """padding - tap * dilation, per tap."""
        return self.padding - torch.arange(self.kernel) * self.dilation


@dataclass(frozen=True)
class Window:
    """One axis of a pooling: output j reads the input positions start[j]..end[j]."""

    start: Tensor
    end: Tensor


@dataclass
class Hop:
    """A Conv2d/Linear layer of the chain, as the walks cross it."""

    name: str
    forward: Tensor  # |theta0| as [in, out, taps] (conv) / [in, out]: rows a forward hop reads
    backward: Tensor  # |theta0| as [out, in, taps] / [out, in]: rows a backward hop reads
    offset: int | None  # start in the flat mask; None: not pruned (excluded), crossed all the same
    axes: tuple[Axis, Axis] | None = None  # conv geometry (y, x); None for a Linear
    pools: list[tuple[Window, Window]] = field(default_factory=list)  # from the previous output
    flatten: tuple[int, int] | None = None  # the (H, W) map flattened into this Linear's input
    shape_out: tuple = ()  # the shape of its output in the probe pass
    column: int = -1  # its column in the walks of :func:`draw_walks` (call order)
    forward_sums: Tensor | None = None  # forward summed over the output units: [in, taps] / [in]
    backward_sums: Tensor | None = None  # backward summed over the input units
    forward_kernels: Tensor | None = None  # forward summed over the taps: [in, out] (conv)
    backward_kernels: Tensor | None = None  # backward summed over the taps: [out, in] (conv)

    @property
    def taps(self) -> int:
        return 1 if self.axes is None else self.axes[0].kernel * self.axes[1].kernel


# --- the network ---------------------------------------------------------------------------------

#: Child names of a residual block's shortcut (the project's ``shortcut``, torchvision's
#: ``downsample``); an empty one (``nn.Identity``, an empty ``nn.Sequential``, ``None``) is the
#: identity.
SHORTCUT_NAMES = ("shortcut", "downsample")


@dataclass
class Block:
    """A residual block, ``out = act(main(x) + shortcut(x))``: its main branch and its shortcut,
    chains of Conv2d layers (an empty shortcut is the identity)."""

    name: str
    main: list[Hop]
    shortcut: list[Hop]


@dataclass
class Walkable:
    """What the walks cross: plain layers and residual blocks, in call order."""

    segments: list[Hop | Block]
    hops: list[Hop]  # every layer, in call order: the columns of :func:`draw_walks`

    @property
    def shortest(self) -> int:
        """Pruned layers on the shortest route a walk takes (identity shortcuts are not taken)."""
        n = 0
        for s in self.segments:
            if isinstance(s, Hop):
                n += s.offset is not None
            else:
                routes = [s.main, s.shortcut] if s.shortcut else [s.main]
                n += min(sum(h.offset is not None for h in r) for r in routes)
        return n


def _refuse(why: str) -> ConfigError:
    return ConfigError(
        f"phew walks chains of Conv2d/Linear layers and residual blocks (a main branch plus a "
        f"'shortcut' or 'downsample' child) and cannot walk this network: {why}. Pick another "
        "method, or a plain network (e.g. --model.backbone vgg19)."
    )


def _window(module: nn.Module, n_in: int, n_out: int, axis: int) -> Window:
    j = torch.arange(n_out)
    if isinstance(module, nn.AdaptiveAvgPool2d):
        start, end = (j * n_in) // n_out, -((-(j + 1) * n_in) // n_out) - 1
    else:

        def pick(v):
            return v if isinstance(v, int) else v[axis]

        k, s, p = (
            pick(module.kernel_size),
            pick(module.stride or module.kernel_size),
            pick(module.padding),
        )
        if pick(getattr(module, "dilation", 1)) != 1 or s > k:
            raise _refuse(f"{type(module).__name__} with gaps between its windows")
        start, end = j * s - p, j * s - p + k - 1
    return Window(start.clamp(0, n_in - 1), end.clamp(0, n_in - 1))


def _conv_axes(conv: nn.Conv2d, in_shape, out_shape) -> tuple[Axis, Axis]:
    axes = []
    for i in range(2):
        k, d = conv.kernel_size[i], conv.dilation[i]
        pad = conv.padding
        if pad == "valid":
            p = 0
        elif pad == "same":
            p = d * (k - 1) // 2
        else:
            p = pad[i]
        axes.append(Axis(k, conv.stride[i], p, d, in_shape[2 + i], out_shape[2 + i]))
    return axes[0], axes[1]


def _blocks(model: nn.Module) -> dict[nn.Module, tuple[str, set[nn.Module]]]:
    """The residual blocks of the module tree: a module (not the root) with a Conv2d child and a
    child, or a ``None`` attribute, named as in SHORTCUT_NAMES -> (name, the shortcut's modules)."""
    found: dict[nn.Module, tuple[str, set[nn.Module]]] = {}
    for name, m in model.named_modules():
        children = dict(m.named_children())
        if m is model or not any(isinstance(c, nn.Conv2d) for c in children.values()):
            continue
        for attr in SHORTCUT_NAMES:
            if attr in children:
                found[m] = (name, set(children[attr].modules()))
                break
            if attr in m.__dict__ and m.__dict__[attr] is None:
                found[m] = (name, set())
                break
    return found


def _cuts(model, input_shape, cut: list[nn.Module], names) -> bool:
    """True iff pruning every weight of ``cut`` leaves no input-output path."""
    masks = {names[m]: torch.zeros_like(m.weight, dtype=torch.bool) for m in cut}
    return not has_input_output_path(model, masks, input_shape)


def trace_network(
    model: nn.Module, prunable: Mapping[str, nn.Parameter], input_shape: Sequence[int]
) -> Walkable:
    """The model's Conv2d/Linear layers in call order, grouped into plain layers and residual
    blocks (:func:`_blocks`), with what lies between them; a ConfigError (one line) for a network
    the walks cannot follow: a layer bypassed other than by the shortcut of its block, grouped or
    depthwise convs, shared layers, a last layer that is not a Linear, an operation between
    layers that is neither elementwise, a pooling nor a flatten, or one inside a block that is
    not elementwise. Probes check the block structure: with all main branches fully pruned
    a path remains (the shortcuts), and with the first layer of each branch pruned none does.
    """
    names = {m: f"{n}.weight" if n else "weight" for n, m in model.named_modules()}
    layers = [m for m in model.modules() if isinstance(m, PRUNABLE_MODULES)]
    blocks = _blocks(model)
    block_of: dict[nn.Module, nn.Module] = {}
    for b, (bname, _) in blocks.items():
        for m in b.modules():
            if m is not b and m in blocks:
                raise _refuse(f"the residual block {bname} holds another one")
            if m is not b:
                block_of[m] = b
    calls: list[tuple[nn.Module, tuple, tuple]] = []
    block_io: dict[nn.Module, list[tuple[tuple, tuple]]] = {b: [] for b in blocks}

    def shapes(inputs: tuple, output: object) -> tuple[tuple, tuple]:
        shape_in = tuple(inputs[0].shape) if inputs and isinstance(inputs[0], Tensor) else ()
        return shape_in, tuple(output.shape) if isinstance(output, Tensor) else ()

    def record(module: nn.Module, inputs: tuple, output: object) -> None:
        calls.append((module, *shapes(inputs, output)))

    def record_block(module: nn.Module, inputs: tuple, output: object) -> None:
        block_io[module].append(shapes(inputs, output))

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(record) for m in leaves]
    handles += [b.register_forward_hook(record_block) for b in blocks]
    param = next(iter(prunable.values()))
    try:
        with torch.no_grad(), module_modes(model, False):
            out = model(torch.zeros(1, *input_shape, dtype=param.dtype, device=param.device))
    finally:
        for h in handles:
            h.remove()
    for m in layers:
        n = sum(c[0] is m for c in calls)
        if n != 1:
            raise _refuse(f"{names[m]} is used {n} times in one forward pass")
        if isinstance(m, nn.Conv2d) and m.groups != 1:
            raise _refuse(f"{names[m]} is a grouped or depthwise conv (groups={m.groups})")
        if isinstance(m, nn.Conv2d) and m.padding_mode != "zeros":
            raise _refuse(f"{names[m]} pads with {m.padding_mode!r}, not zeros")
        if m in block_of and not isinstance(m, nn.Conv2d):
            raise _refuse(f"{names[m]} is a {type(m).__name__} inside a residual block")
    for b, io in block_io.items():
        if len(io) > 1:
            raise _refuse(f"the residual block {blocks[b][0]} is used {len(io)} times")
    for m in layers:  # every layer outside a block must cut the network
        if m not in block_of and not _cuts(model, input_shape, [m], names):
            raise _refuse(
                f"{names[m]} is not on every input-output path (a residual shortcut or a "
                "parallel branch bypasses it, and no residual block holds it)"
            )
    offsets, start = {}, 0
    for name, p in prunable.items():
        offsets[name] = start
        start += p.numel()

    segments: list[Hop | Block] = []
    hops: list[Hop] = []
    current: tuple = ()
    pools: list[tuple[Window, Window]] = []
    inside: Block | None = None  # the block being read, its module, its pools on entry
    inside_module: nn.Module | None = None
    entry: list[tuple[Window, Window]] = []

    def close() -> tuple:
        assert inside is not None and inside_module is not None
        bname = blocks[inside_module][0]
        ((shape_in, shape_out),) = block_io[inside_module]
        if not inside.main:
            raise _refuse(f"the residual block {bname} has no layer outside its shortcut")
        ends = [
            inside.main[-1].shape_out,
            inside.shortcut[-1].shape_out if inside.shortcut else shape_in,
        ]
        if any(e != shape_out for e in ends):
            raise _refuse(
                f"the branches of the residual block {bname} end in shapes {ends}, not its output "
                f"{shape_out}"
            )
        bypassed.append((bname, [names_of[h.name] for h in inside.main]))
        if inside.shortcut and not _cuts(
            model,
            input_shape,
            [names_of[inside.main[0].name], names_of[inside.shortcut[0].name]],
            names,
        ):
            raise _refuse(f"{bname} has a route other than its main branch and its shortcut")
        return shape_out

    names_of = {names[m]: m for m in layers}
    bypassed: list[tuple[str, list[nn.Module]]] = []  # each block's main branch, checked below
    for module, shape_in, shape_out in calls:
        b = block_of.get(module)
        if inside is not None and b is not inside_module:
            current, pools = close(), []
            segments.append(inside)
            inside = inside_module = None
        if b is not None:
            bname, members = blocks[b]
            if inside is None:
                ((block_in, _),) = block_io[b]
                if not segments:
                    raise _refuse(f"the residual block {bname} comes before any layer")
                if current != block_in:
                    raise _refuse(f"{bname} does not read the output of the layer before it")
                inside, inside_module, entry, pools = Block(bname, [], []), b, pools, []
            if isinstance(module, PRUNABLE_MODULES):
                branch = inside.shortcut if module in members else inside.main
                before = branch[-1].shape_out if branch else block_in
                hop = _hop(
                    module, names[module], offsets, shape_in, shape_out, before,
                    [] if branch else list(entry),
                )  # fmt: skip
                hop.column = len(hops)
                hops.append(hop)
                branch.append(hop)
            elif shape_out != shape_in:
                raise _refuse(
                    f"it cannot follow {type(module).__name__} ({shape_in} -> {shape_out}) "
                    f"inside the residual block {bname}"
                )
            continue
        if isinstance(module, PRUNABLE_MODULES):
            hop = _hop(module, names[module], offsets, shape_in, shape_out, current, pools)
            hop.column = len(hops)
            hops.append(hop)
            segments.append(hop)
            current, pools = shape_out, []
        elif not hops:
            continue  # before the first layer: every position of its input is reached
        elif shape_out == shape_in and math.prod(shape_in) == math.prod(current):
            continue  # elementwise (BatchNorm, activations, dropout) or a flatten
        elif isinstance(module, nn.Flatten) and math.prod(shape_in) == math.prod(current):
            continue
        elif isinstance(module, _POOLS) and shape_in == current and len(current) == 4:
            pools.append(
                tuple(_window(module, shape_in[2 + a], shape_out[2 + a], a) for a in range(2))
            )
            current = shape_out
        else:
            raise _refuse(
                f"it cannot follow {type(module).__name__} ({shape_in} -> {shape_out}) after "
                f"{hops[-1].name}"
            )
    if inside is not None:
        current = close()
        segments.append(inside)
    # every main branch pruned at once leaves a path, so each one alone does (pruning less keeps
    # more): one probe for all the blocks; only when it cuts, one per block to name the culprit
    if bypassed and _cuts(model, input_shape, [m for _, main in bypassed for m in main], names):
        for bname, main in bypassed:
            if _cuts(model, input_shape, main, names):
                raise _refuse(f"the main branch of {bname} is not bypassed by its shortcut")
    last = segments[-1]
    if (
        not isinstance(last, Hop)
        or last.axes is not None
        or not isinstance(out, Tensor)
        or tuple(out.shape) != current
    ):
        raise _refuse(
            f"the walks end at the output units of a last Linear layer, and {hops[-1].name} is "
            "not one whose output is the network's output"
        )
    return Walkable(segments, hops)


def _hop(module, name, offsets, shape_in, shape_out, current, pools) -> Hop:
    w = module.weight.detach().abs().float().cpu()
    if isinstance(module, nn.Conv2d):
        if current and current != shape_in:
            raise _refuse(f"{name} does not read the output of the layer before it {current}")
        w = w.reshape(w.shape[0], w.shape[1], -1)
        hop = Hop(name, w.transpose(0, 1).contiguous(), w, offsets.get(name))
        hop.axes = _conv_axes(module, shape_in, shape_out)
    else:
        if len(shape_in) != 2:
            raise _refuse(f"{name} reads a {len(shape_in) - 1}-d input, not a feature vector")
        hop = Hop(name, w.t().contiguous(), w, offsets.get(name))
        if len(current) == 4 and math.prod(current[1:]) == shape_in[1]:
            hop.flatten = (current[2], current[3])
        elif current and current != shape_in:
            raise _refuse(f"{name} does not read the output of the layer before it {current}")
    hop.pools = pools
    hop.shape_out = shape_out
    hop.forward_sums, hop.backward_sums = hop.forward.sum(1), hop.backward.sum(1)
    if hop.axes is not None:
        hop.forward_kernels, hop.backward_kernels = hop.forward.sum(2), hop.backward.sum(2)
    return hop


# --- the walks -----------------------------------------------------------------------------------


def _ceil_div(a: Tensor, b: int) -> Tensor:
    return -torch.div(-a, b, rounding_mode="floor")


def _uniform_below(n: Tensor, gen: torch.Generator) -> Tensor:
    """One integer in [0, n) per entry (n >= 1)."""
    u = torch.rand(n.shape, generator=gen, dtype=torch.float64)
    return torch.minimum((u * n).long(), n - 1)


def _draw(weights: Tensor, allowed: Tensor | None, gen: torch.Generator) -> Tensor:
    """One index per row in proportion to ``weights``; a row of zero weights draws uniformly
    among its ``allowed`` entries (None: all; as the official code does for an all-zero row).

    Inverse CDF: one uniform per row against the row's float64 cumulative sum (the first index
    whose cumulative weight reaches u in (0, total], never a zero-weight entry); one random number
    per walk instead of one per entry, as ``torch.multinomial`` draws on the CPU.
    """
    cdf = weights.cumsum(1, dtype=torch.float64)
    empty = cdf[:, -1] <= 0
    if bool(empty.any()):
        weights = weights.clone()
        weights[empty] = 1.0 if allowed is None else allowed[empty].to(weights.dtype)
        weights[weights.sum(1) <= 0] = 1.0  # nothing allowed: a dead walk, dropped by the caller
        cdf = weights.cumsum(1, dtype=torch.float64)
    u = (1.0 - torch.rand(weights.shape[0], 1, generator=gen, dtype=torch.float64)) * cdf[:, -1:]
    return torch.searchsorted(cdf, u).squeeze(1)


def _allowed(bounds: list[tuple[Tensor, Tensor]]) -> Tensor:
    """[walks, 1, taps] bool: the taps whose position interval is non-empty on both axes."""
    (y_lo, y_hi), (x_lo, x_hi) = bounds
    ok = (y_lo <= y_hi)[:, :, None] & (x_lo <= x_hi)[:, None, :]
    return ok.reshape(ok.shape[0], 1, ok.shape[1] * ok.shape[2])


@dataclass
class _State:
    """The walks of a batch (or of a sub-batch taking one branch): their rows in the result, the
    unit each stands on, and per walk the interval of positions [lo, hi] (y, x) of the map."""

    ids: Tensor
    unit: Tensor
    lo: Tensor | None  # [2, b]; None on a feature vector
    hi: Tensor | None
    alive: Tensor

    def take(self, i: Tensor) -> _State:
        def part(t):
            return None if t is None else t[:, i].clone()

        return _State(self.ids[i], self.unit[i], part(self.lo), part(self.hi), self.alive[i])

    def put(self, i: Tensor, sub: _State) -> None:
        self.unit[i] = sub.unit
        self.alive[i] = sub.alive
        if self.lo is not None and self.hi is not None:
            assert sub.lo is not None and sub.hi is not None
            self.lo[:, i], self.hi[:, i] = sub.lo, sub.hi


def _pool_forward(hop: Hop, s: _State) -> None:
    """Through the poolings before ``hop``: output j is reached iff its window meets [lo, hi]."""
    for window in hop.pools:
        for a, w in enumerate(window):
            s.lo[a] = torch.searchsorted(w.end, s.lo[a])
            s.hi[a] = torch.searchsorted(w.start, s.hi[a], right=True) - 1


def _forward_bounds(hop: Hop, s: _State) -> list[tuple[Tensor, Tensor]]:
    """Per axis: the output interval [b, kernel] each tap of ``hop`` leaves the walks on."""
    return [
        (
            _ceil_div(s.lo[a][:, None] + ax.shift, ax.stride).clamp(min=0),
            torch.div(s.hi[a][:, None] + ax.shift, ax.stride, rounding_mode="floor").clamp(
                max=ax.n_out - 1
            ),
        )
        for a, ax in enumerate(hop.axes)
    ]


def _backward_bounds(hop: Hop, s: _State) -> list[tuple[Tensor, Tensor]]:
    """Per axis: the output positions [b, kernel] whose input through each tap is in the map."""
    return [
        (
            torch.maximum(s.lo[a][:, None], _ceil_div(ax.shift, ax.stride)),
            torch.minimum(
                s.hi[a][:, None],
                torch.div(ax.n_in - 1 + ax.shift, ax.stride, rounding_mode="floor"),
            ),
        )
        for a, ax in enumerate(hop.axes)
    ]


def _draw_conv(
    table: Tensor, kernels: Tensor, unit: Tensor, ok: Tensor, gen: torch.Generator
) -> tuple[Tensor, Tensor]:
    """(channel, tap) per walk, jointly in proportion to ``table[unit]`` [b, channels, taps] over
    the allowed taps ``ok`` [b, 1, taps]: the channel by its |w| summed over the allowed taps
    (``kernels``, the sums over all taps, where every tap is allowed), then the tap within it
    (the official two-stage draw; the law of one joint draw, with 9x shorter cumulative sums).
    A walk with no |w| on an allowed tap draws uniformly among them."""
    mass = kernels[unit]  # [b, channels]
    some = torch.nonzero(~ok.all(2).squeeze(1)).squeeze(1)
    if some.numel():
        allowed = ok[some].transpose(1, 2).to(table.dtype)  # [b', taps, 1]
        mass[some] = torch.bmm(table[unit[some]], allowed).squeeze(2)
    channel = _draw(mass, None, gen)
    tap = _draw(table[unit, channel] * ok[:, 0, :], ok[:, 0, :], gen)
    return channel, tap


def _conv_step(
    hop: Hop,
    table: Tensor,
    kernels: Tensor,
    bounds: list[tuple[Tensor, Tensor]],
    s: _State,
    gen: torch.Generator,
) -> tuple[Tensor, Tensor, list[tuple[Tensor, Tensor]]]:
    """One conv hop of the walks ``s`` in either direction: walks with no allowed tap die, the
    (channel, tap) draw of :func:`_draw_conv`, and per axis the interval [lo, hi] of ``bounds``
    at the drawn tap."""
    ok = _allowed(bounds)
    s.alive &= ok.any(2).squeeze(1)
    channel, tap = _draw_conv(table, kernels, s.unit, ok, gen)
    kw = hop.axes[1].kernel
    at_tap = [
        (lo.gather(1, t[:, None]).squeeze(1), hi.gather(1, t[:, None]).squeeze(1))
        for (lo, hi), t in zip(bounds, (tap // kw, tap % kw), strict=True)
    ]
    return channel, tap, at_tap


def _forward_hop(hop: Hop, s: _State, idx: Tensor, gen: torch.Generator) -> None:
    """One forward hop of the walks ``s`` across ``hop`` (pooling and flatten before it)."""
    _pool_forward(hop, s)
    if hop.flatten is not None:  # one reached position of the channel, uniformly
        h, w = hop.flatten
        y = s.lo[0] + _uniform_below(s.hi[0] - s.lo[0] + 1, gen)
        x = s.lo[1] + _uniform_below(s.hi[1] - s.lo[1] + 1, gen)
        s.unit, s.lo, s.hi = s.unit * (h * w) + y * w + x, None, None
    n_in, taps = hop.forward.shape[0], hop.taps
    if hop.axes is None:
        out = _draw(hop.forward[s.unit], None, gen)
        flat = out * n_in + s.unit
    else:
        out, tap, at_tap = _conv_step(
            hop, hop.forward, hop.forward_kernels, _forward_bounds(hop, s), s, gen
        )
        for a, (lo, hi) in enumerate(at_tap):
            s.lo[a], s.hi[a] = lo, hi
        flat = (out * n_in + s.unit) * taps + tap
    if hop.offset is not None:
        idx[s.ids, hop.column] = hop.offset + flat
    s.unit = out


def _backward_hop(hop: Hop, s: _State, idx: Tensor, gen: torch.Generator) -> None:
    """One backward hop of the walks ``s`` across ``hop`` (then back through flatten and
    pooling before it)."""
    n_in, taps = hop.backward.shape[1], hop.taps
    if hop.axes is None:
        inp = _draw(hop.backward[s.unit], None, gen)
        flat = s.unit * n_in + inp
    else:
        inp, tap, at_tap = _conv_step(
            hop, hop.backward, hop.backward_kernels, _backward_bounds(hop, s), s, gen
        )
        kw = hop.axes[1].kernel
        for a, (t, ax, (q_lo, q_hi)) in enumerate(
            zip((tap // kw, tap % kw), hop.axes, at_tap, strict=True)
        ):
            if ax.stride > 1:  # the inputs of a strided range are no interval: one of them
                q_lo = q_hi = q_lo + _uniform_below((q_hi - q_lo + 1).clamp(min=1), gen)
            shift = ax.shift[t]
            s.lo[a], s.hi[a] = q_lo * ax.stride - shift, q_hi * ax.stride - shift
        flat = (s.unit * n_in + inp) * taps + tap
    if hop.offset is not None:
        idx[s.ids, hop.column] = hop.offset + flat
    s.unit = inp
    if hop.flatten is not None:  # back to a channel and one position of its map
        h, w = hop.flatten
        pos = s.unit % (h * w)
        s.unit = s.unit // (h * w)
        s.lo = torch.stack([pos // w, pos % w])
        s.hi = s.lo.clone()
    for window in reversed(hop.pools):  # the inputs of the windows of [lo, hi]
        for a, win in enumerate(window):
            s.lo[a], s.hi[a] = win.start[s.lo[a]], win.end[s.hi[a]]


def _mass(hop: Hop, s: _State, forward: bool) -> tuple[Tensor, Tensor]:
    """Per walk: the |w| a hop across ``hop`` may take (forward: after the poolings before it),
    and whether any of its choices is allowed; from the per-tap sums of |w|."""
    t = s.take(torch.arange(s.unit.numel()))
    if forward:
        _pool_forward(hop, t)
    sums = hop.forward_sums if forward else hop.backward_sums  # [units, taps] / [units]
    if hop.axes is None:
        return sums[t.unit].double(), torch.ones(t.unit.shape, dtype=torch.bool)
    ok = _allowed(_forward_bounds(hop, t) if forward else _backward_bounds(hop, t))[:, 0, :]
    return (sums[t.unit] * ok).double().sum(1), ok.any(1)


def take_shortcut(
    main: tuple[Tensor, Tensor], shortcut: tuple[Tensor, Tensor], gen: torch.Generator
) -> Tensor:
    """Which walks take a block's projection shortcut, from each branch's (|w| mass, allowed)
    at its first hop (last, walking backward): a fair coin, as the official code's
    ``random.choice``, between the branches with some |w| to follow; with |w| on one branch only,
    that one; with none on either, the coin between the allowed ones."""
    coin = torch.rand(main[0].shape, generator=gen, dtype=torch.float64) < 0.5
    positive_m, positive_s = main[0] > 0, shortcut[0] > 0
    some = positive_m | positive_s
    can_m = torch.where(some, positive_m, main[1])
    can_s = torch.where(some, positive_s, shortcut[1])
    return can_s & (~can_m | coin)


def _branches(block: Block, s: _State, forward: bool, gen: torch.Generator):
    """The sub-batches of ``s`` down the main branch and down the shortcut, as (hops, index)."""
    if not block.shortcut:  # identity: never taken (no weight to keep), as the official code
        return [(block.main, None)]
    if forward:
        m, c = _mass(block.main[0], s, True), _mass(block.shortcut[0], s, True)
    else:
        m, c = _mass(block.main[-1], s, False), _mass(block.shortcut[-1], s, False)
    short = take_shortcut(m, c, gen)
    return [
        (block.main, torch.nonzero(~short).squeeze(1)),
        (block.shortcut, torch.nonzero(short).squeeze(1)),
    ]


def _walk(net: Walkable, s: _State, idx: Tensor, forward: bool, gen: torch.Generator) -> None:
    segments = net.segments if forward else net.segments[::-1]
    for seg in segments:
        if isinstance(seg, Hop):
            (_forward_hop if forward else _backward_hop)(seg, s, idx, gen)
            continue
        for hops, i in _branches(seg, s, forward, gen):
            if i is not None and i.numel() == 0:
                continue
            sub = s if i is None else s.take(i)
            for hop in hops if forward else hops[::-1]:
                (_forward_hop if forward else _backward_hop)(hop, sub, idx, gen)
            if i is not None:
                s.put(i, sub)


def _start(net: Walkable, seeds: Tensor, forward: bool) -> _State:
    b = seeds.numel()
    lo = hi = None  # forward: every position of the input is reached
    first = net.hops[0]
    if forward and first.axes is not None:
        lo = torch.zeros(2, b, dtype=torch.long)
        hi = torch.tensor([a.n_in - 1 for a in first.axes])[:, None].expand(2, b).clone()
    return _State(torch.arange(b), seeds, lo, hi, torch.ones(b, dtype=torch.bool))


def draw_walks(net: Walkable, first: int, count: int, gen: torch.Generator) -> Tensor:
    """Walks ``first .. first + count - 1`` of the official order, as flat mask indices
    [count, layers] (columns: ``net.hops``; -1: a layer the walk does not cross or does not
    prune, or a walk with no reachable continuation): even walks forward from the input units,
    odd walks backward from the output units, each side's start unit round-robin (walk 2i
    forward from input unit i mod n_in)."""
    n_in, n_out = net.hops[0].forward.shape[0], net.hops[-1].backward.shape[0]
    number = torch.arange(first, first + count)
    idx = torch.full((count, len(net.hops)), -1, dtype=torch.long)
    for forward, side in ((True, number % 2 == 0), (False, number % 2 == 1)):
        if not bool(side.any()):
            continue
        seeds = (number[side] // 2) % (n_in if forward else n_out)
        part = torch.full((seeds.numel(), len(net.hops)), -1, dtype=torch.long)
        s = _start(net, seeds, forward)
        _walk(net, s, part, forward, gen)
        part[~s.alive] = -1
        idx[side] = part
    return idx


def new_weights(idx: Tensor, mask: Tensor) -> Tensor:
    """[walks, layers] bool: the entries of ``idx`` not in ``mask`` nor in an earlier walk."""
    flat = idx.reshape(-1)
    pos = torch.nonzero(flat >= 0).squeeze(1)
    pos = pos[~mask[flat[pos]]]
    values, inverse = torch.unique(flat[pos], return_inverse=True)
    first = torch.full((values.numel(),), pos.numel(), dtype=torch.long)
    first.scatter_reduce_(0, inverse, torch.arange(pos.numel()), "amin")
    new = torch.zeros(flat.numel(), dtype=torch.bool)
    new[pos[first]] = True
    return new.view(idx.shape)


# --- the mask ------------------------------------------------------------------------------------


def phew_mask(
    model: nn.Module,
    prunable: Mapping[str, nn.Parameter],
    k: int,
    input_shape: Sequence[int],
    seed: int,
) -> Tensor:
    """The flat bool mask (CPU, prunable order) of exactly ``k`` weights, all on input-output
    paths; the model is not changed (one eval-mode probe pass, indicator passes)."""
    total = sum(p.numel() for p in prunable.values())
    if k == total:
        return torch.ones(total, dtype=torch.bool)  # sparsity 0: nothing is pruned
    net = trace_network(model, prunable, input_shape)
    per_walk = net.shortest
    if k < per_walk:
        raise ConfigError(
            f"phew keeps whole input-output paths, one pruned weight in each of {per_walk} "
            f"layers on the shortest, and sparsity leaves only k = {k} weights: use a lower "
            "sparsity."
        )
    dense = {n: torch.ones_like(p, dtype=torch.bool) for n, p in prunable.items()}
    reachable = sum(int(m.sum()) for m in effective_masks(model, dense, input_shape).values())
    if k > reachable:
        raise ConfigError(
            f"phew keeps only weights on input-output paths, and {reachable} of the {total} "
            f"prunable weights lie on one at input shape {tuple(input_shape)} (a kernel tap that "
            f"only meets zero padding, e.g. on a 1x1 map, lies on none); k = {k} needs more: use "
            f"sparsity >= {math.ceil((1 - reachable / total) * 1e4) / 1e4:g}."
        )
    widest = max(max(h.forward.shape[1], h.backward.shape[1]) * h.taps for h in net.hops)
    most = max(2, min(WALK_BATCH, _HOP_FLOATS // widest) // 2 * 2)
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(total, dtype=torch.bool)
    kept = walks = stalls = 0
    while kept < k and stalls < _STALLS:
        # about twice the walks the rest of the budget takes if no weight repeats; even
        batch = min(most, max(64, -(-2 * (k - kept) // per_walk)) // 2 * 2)
        idx = draw_walks(net, walks, batch, gen)
        walks += batch
        new = new_weights(idx, mask)
        fits = int((kept + new.sum(1).cumsum(0) <= k).sum())  # walks in order, while they fit
        added = idx[:fits][new[:fits]]
        mask[added] = True
        kept += added.numel()
        if fits < batch:
            break  # the next walk would overshoot k
        stalls = stalls + 1 if added.numel() == 0 else 0
    if kept < k:
        _fill(model, prunable, mask, k - kept, input_shape)
    views = _views(prunable, mask)
    effective = effective_masks(model, views, input_shape)
    if int(mask.sum()) != k or not all(torch.equal(effective[n], views[n]) for n in views):
        raise RuntimeError("phew: a kept weight lies on no input-output path (a bug: report it)")
    return mask


def _views(prunable: Mapping[str, nn.Parameter], mask: Tensor) -> dict[str, Tensor]:
    parts = split_flat(mask, [p.shape for p in prunable.values()])
    return {n: m.to(p.device) for (n, p), m in zip(prunable.items(), parts, strict=True)}


def _fill(
    model: nn.Module,
    prunable: Mapping[str, nn.Parameter],
    mask: Tensor,
    missing: int,
    input_shape: Sequence[int],
) -> None:
    """Add ``missing`` weights, each on a path on its own: the largest |theta0| among the pruned
    weights whose input unit is reached and whose output unit reaches an output (ties: earlier)."""
    magnitude = torch.cat([p.detach().abs().float().reshape(-1).cpu() for p in prunable.values()])
    selector = TopKSelector(mask.numel(), torch.device("cpu"), scores=magnitude)
    while missing > 0:
        on_path = path_weights(model, _views(prunable, mask), input_shape)
        allowed = torch.cat([on_path[n].reshape(-1).cpu() for n in prunable]) & ~mask
        n = int(allowed.sum())
        if n == 0:
            raise ConfigError(
                f"phew placed {int(mask.sum())} weights on input-output paths and finds no "
                f"further one to add ({missing} short of k): use a higher sparsity."
            )
        chosen = torch.empty_like(mask)
        selector.select(min(n, missing), chosen, allowed=allowed)
        mask |= chosen
        missing -= min(n, missing)


def phew_score(ctx: ScoreContext) -> ScoreFn:
    """The score factory: 1 on the PHEW mask, 0 elsewhere (exactly k ones, so the global top-k
    keeps exactly the mask). The walks run once, here, before any step."""
    input_shape = example_shape(ctx, "phew")
    shapes = [p.shape for p in ctx.prunable.values()]
    seed = ctx.config.seed
    assert seed is not None  # run_pruning refuses an unresolved seed
    k = kept_total(shapes, 1.0 - float(ctx.config.sparsity))
    flat = phew_mask(ctx.model, ctx.prunable, k, input_shape, seed).float()

    def step(t: int, prev: list[Tensor] | None, views: list[Tensor]) -> None:
        for v, part in zip(views, split_flat(flat.to(views[0].device), shapes), strict=True):
            v.copy_(part)

    return step
