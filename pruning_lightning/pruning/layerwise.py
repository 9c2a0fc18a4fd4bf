"""Layer-wise random baselines: per-layer kept counts from a formula, random positions inside
each layer (docs/METHODS.md "Layer-wise random baselines").

Each quota function maps the prunable shapes (model order; 4-d = Conv2d ``[out, in/groups, kh,
kw]``, 2-d = Linear ``[out, in]``) and the global density to *target* kept counts per layer
(floats). :func:`apportion` turns them into integers that sum to exactly ``k = round(d * N)``;
:func:`layerwise_score` draws the positions. Nothing here looks at weight values or data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from pruning_lightning.errors import ConfigError
from pruning_lightning.pruning.criteria import ScoreContext, ScoreFactory
from pruning_lightning.pruning.masks import split_flat
from pruning_lightning.pruning.progressive import ScoreFn

#: (shapes, density) -> target kept count per layer (floats, each in [0, numel]).
QuotaFn = Callable[[Sequence[torch.Size], float], list[float]]


def kept_total(shapes: Sequence[torch.Size], density: float) -> int:
    """k = round(d * N), the one count every mask keeps (as :func:`kept_schedule`'s last step)."""
    return round(density * sum(math.prod(s) for s in shapes))


def apportion(targets: Sequence[float], sizes: Sequence[int], k: int) -> list[int]:
    """Integer counts, each in [0, size], summing to exactly ``k``, nearest to ``targets``.

    Largest remainder: every layer gets ``floor(target)`` (clipped to [0, size]); the missing
    units go one each to the layers with the largest fractional parts (ties: earlier layer),
    skipping full layers, and any excess is taken back from the smallest fractional parts. So the
    result is deterministic and no layer moves by more than one unless its neighbours are full.
    """
    if not 0 <= k <= sum(sizes):
        raise ValueError(f"cannot keep {k} of {sum(sizes)} weights")
    counts = [min(n, max(0, math.floor(t))) for t, n in zip(targets, sizes, strict=True)]
    frac = [t - math.floor(t) for t in targets]
    rest = k - sum(counts)
    while rest != 0:
        step = 1 if rest > 0 else -1
        room = [
            i
            for i, (c, n) in enumerate(zip(counts, sizes, strict=True))
            if (n > c if step > 0 else c > 0)
        ]
        room.sort(key=lambda i: (-frac[i] if step > 0 else frac[i], i))
        for i in room[: abs(rest)]:
            counts[i] += step
        rest = k - sum(counts)
    return counts


def layer_counts(quota: QuotaFn, shapes: Sequence[torch.Size], density: float) -> list[int]:
    """The exact kept count of every layer: the quota's targets, apportioned to k."""
    sizes = [math.prod(s) for s in shapes]
    return apportion(quota(shapes, density), sizes, kept_total(shapes, density))


# --- the quotas ----------------------------------------------------------------------------


def erdos_renyi_densities(
    shapes: Sequence[torch.Size], density: float, *, kernel: bool = True, exact: bool = True
) -> list[float]:
    """Per-layer densities by google-research/rigl's ``get_sparsities_erdos_renyi``.

    ERK (``kernel``): raw ratio ``sum(shape) / prod(shape)``; ER: ``(n_in + n_out) / (n_in *
    n_out)`` of the channel dimensions. density_l = eps * raw_l, eps fixed by the budget; while
    the largest eps * raw exceeds 1, every layer with the largest raw ratio is made dense and eps
    recomputed. Power scale 1, no layer dense by default. The budget: with ``exact``, k = round(d
    * N) (so the targets sum to k); without, rigl's own ``sum(n_l - floor(s * n_l))`` (the ones
    of per-layer uniform masks), which reproduces rigl's numbers to the last bit.
    """
    sparsity = 1.0 - density
    sizes = [math.prod(s) for s in shapes]
    budget = (
        kept_total(shapes, density) if exact else sum(n - math.floor(sparsity * n) for n in sizes)
    )
    dense: set[int] = set()
    while True:
        divisor, raw = 0.0, {}
        for i, shape in enumerate(shapes):
            if i in dense:
                continue
            if kernel:
                raw[i] = sum(shape) / sizes[i]
            else:
                n_out, n_in = shape[0], shape[1]  # torch order; rigl's TF kernels end (in, out)
                raw[i] = (n_in + n_out) / (n_in * n_out)
            divisor += raw[i] * sizes[i]
        if not raw:  # every layer dense (only at density 1)
            return [1.0] * len(shapes)
        eps = (budget - sum(sizes[i] for i in dense)) / divisor
        largest = max(raw.values())
        if largest * eps <= 1:
            return [1.0 if i in dense else eps * raw[i] for i in range(len(shapes))]
        dense.update(i for i, r in raw.items() if r == largest)


def erk_targets(shapes: Sequence[torch.Size], density: float) -> list[float]:
    """ERK (Evci et al. 2020): rigl's densities times the layer sizes."""
    dens = erdos_renyi_densities(shapes, density, kernel=True)
    return [d * math.prod(s) for d, s in zip(dens, shapes, strict=True)]


def er_targets(shapes: Sequence[torch.Size], density: float) -> list[float]:
    """ER (Mocanu et al. 2018, as rigl computes it): the kernel size ignored."""
    dens = erdos_renyi_densities(shapes, density, kernel=False)
    return [d * math.prod(s) for d, s in zip(dens, shapes, strict=True)]


def uniform_plus_targets(shapes: Sequence[torch.Size], density: float) -> list[float]:
    """Uniform+ (Gale et al. 2019): the first layer dense, the last layer at least 20% kept
    (at most 80% sparse), every other layer at the one density that meets k."""
    if len(shapes) < 2:
        raise ConfigError(
            "uniform_plus needs at least two prunable layers (the first is kept dense, the "
            "last at least 20%): pick another method or widen include/exclude."
        )
    sizes = [math.prod(s) for s in shapes]
    k = kept_total(shapes, density)
    first, last, middle = sizes[0], sizes[-1], sum(sizes[1:-1])
    last_min = -(-last // 5)  # ceil(0.2 * last), in integers
    if k < first + last_min:
        limit = 1.0 - (first + last_min) / sum(sizes)
        raise ConfigError(
            f"uniform_plus keeps the first layer dense ({first} weights) and at least 20% of the "
            f"last ({last_min}): that is more than the {k} weights of sparsity {1 - density:g}; "
            f"use sparsity <= {math.floor(limit * 1e4) / 1e4:g} or another method."
        )
    shared = (k - first) / (middle + last)
    if shared * last >= last_min:
        return [float(first), *(shared * n for n in sizes[1:])]
    mid = (k - first - last_min) / middle
    return [float(first), *(mid * n for n in sizes[1:-1]), float(last_min)]


#: Su et al.'s fixed keep ratio of every Linear layer (``--linear_keep_ratio``, default 0.3).
SMART_RATIO_LINEAR_KEEP = 0.3


def smart_ratio_targets(
    shapes: Sequence[torch.Size], density: float, *, vgg: bool = False
) -> list[float]:
    """Smart ratio (Su et al. 2020, JingtongSu/sanity-checking-pruning ``pruner/SmartRatio.py``).

    Over the L prunable layers (l = 1..L, Linear ones included in L), conv layer l keeps a
    fraction proportional to ``(L-l+1)^2 + (L-l+1)`` (their quadratic default; divided by
    ``l^2`` for ``vgg``, their branch for every ``--arch`` other than ``resnet``); every Linear
    layer keeps 30%. The conv ratios are scaled to keep ``k - 0.3 * N_linear``; a conv ratio
    above 1 is clipped to 1 and its excess handed to the next conv layers in order, as theirs.
    Their ``int()`` truncations are replaced by :func:`apportion` to k.
    """
    sizes = [math.prod(s) for s in shapes]
    n_layers = len(shapes)
    linear = [len(s) == 2 for s in shapes]
    k = kept_total(shapes, density)
    linear_kept = SMART_RATIO_LINEAR_KEEP * sum(
        n for n, lin in zip(sizes, linear, strict=True) if lin
    )
    goal = k - linear_kept
    convs = [i for i in range(n_layers) if not linear[i]]
    if not convs or goal < 0:
        raise ConfigError(
            f"smart_ratio keeps 30% of every Linear layer ({linear_kept:g} weights) and spreads "
            f"the rest over the Conv2d layers: sparsity {1 - density:g} leaves "
            f"{'no Conv2d layer' if not convs else 'too few weights'} for that; use a lower "
            "sparsity or another method."
        )
    raw = {}
    for i in convs:
        depth = n_layers - i  # L - l + 1 with l = i + 1
        raw[i] = (depth**2 + depth) / ((i + 1) ** 2 if vgg else 1)
    scale = goal / sum(raw[i] * sizes[i] for i in convs)
    ratio = {i: raw[i] * scale for i in convs}
    extra = 0.0  # weights above 100% carried to the next conv layers, as in their code
    for i in convs:
        if ratio[i] >= 1:
            extra += (ratio[i] - 1) * sizes[i]
            ratio[i] = 1.0
        else:
            room = (1 - ratio[i]) * sizes[i]
            moved = min(room, extra)
            ratio[i] += moved / sizes[i]
            extra -= moved
    return [
        SMART_RATIO_LINEAR_KEEP * n if lin else ratio[i] * n
        for i, (n, lin) in enumerate(zip(sizes, linear, strict=True))
    ]


def smart_ratio_vgg_targets(shapes: Sequence[torch.Size], density: float) -> list[float]:
    """Smart ratio with their non-ResNet (VGG) scaling: the extra ``1 / l^2``."""
    return smart_ratio_targets(shapes, density, vgg=True)


# --- the positions ---------------------------------------------------------------------------


def random_positions(counts: Sequence[int], sizes: Sequence[int], seed: int) -> Tensor:
    """One flat float mask (1 = kept): ``counts[l]`` positions of layer l drawn uniformly without
    replacement, layer after layer from one CPU generator seeded with ``seed`` (any device, the
    same mask)."""
    gen = torch.Generator().manual_seed(seed)
    flat = torch.zeros(sum(sizes))
    start = 0
    for c, n in zip(counts, sizes, strict=True):
        flat[start + torch.randperm(n, generator=gen)[:c]] = 1.0
        start += n
    return flat


def layerwise_score(quota: QuotaFn) -> ScoreFactory:
    """The score factory of a layer-wise random method: 1 at the drawn positions, 0 elsewhere.

    The counts sum to exactly k, so the global top-k keeps exactly the drawn positions (the
    selection's tie rule never reaches a 0). The quota is checked when the factory runs, before
    any step, so an impossible budget is a ConfigError, not a wrong mask.
    """

    def factory(ctx: ScoreContext) -> ScoreFn:
        shapes = [p.shape for p in ctx.prunable.values()]
        sizes = [math.prod(s) for s in shapes]
        counts = layer_counts(quota, shapes, 1.0 - float(ctx.config.sparsity))
        seed = ctx.config.seed
        assert seed is not None  # run_pruning refuses an unresolved seed

        def step(t: int, prev: list[Tensor] | None, views: list[Tensor]) -> None:
            flat = random_positions(counts, sizes, seed).to(views[0].device)
            for v, part in zip(views, split_flat(flat, shapes), strict=True):
                v.copy_(part)

        return step

    return factory
