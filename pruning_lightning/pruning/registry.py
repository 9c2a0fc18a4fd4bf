"""One record per pruning method: everything the engine, the callback, the CLI, sweeps and figures
need to know about it.

Adding a method means writing its score function (see :mod:`pruning_lightning.pruning.criteria`)
and registering one :class:`Criterion`; nothing else branches on method names.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pruning_lightning.errors import ConfigError
from pruning_lightning.pruning import criteria, layerwise, ntk_sap, phew, prospr
from pruning_lightning.pruning.criteria import ScoreFactory
from pruning_lightning.pruning.layerwise import layerwise_score


@dataclass(frozen=True)
class Criterion:
    """A pruning method.

    Attributes:
        name: what ``--pruning.method`` and ``compute_masks(..., method)`` take.
        score: builds the per-step score writer from a :class:`~criteria.ScoreContext`.
        label: the name in figures and tables.
        color: the method's colour in every figure.
        needs_data: False for data-free methods (their masks are broadcast from rank 0 under DDP).
        default_steps: T when the user sets none; 1 = one-shot.
        progressive: whether T > 1 is meaningful (one-shot methods refuse or ignore it).
        resurrect: whether a weight pruned at an earlier step may come back (FORCE ranks all
            weights; Iterative SNIP and SynFlow rank only the ones still kept).
        force_saliency_score: the score is ``|theta0 * dL/dw|`` at ``theta0 * m``, whose sum over a
            mask is the FORCE saliency: recorded for free at each step. Contract: the step's
            score views then ARE the network's effective weights (one buffer, no weight-sized
            copy), so a step must finish with the network (``ctx.gradients``) before it writes
            a score, and must write every entry; the next step reloads the weights.
        score_dtype: dtype of the score buffer (float64 for SynFlow's products of many layers).
        ranked: whether the scores rank the weights (False for random scores, whose inverse is
            another random draw: the ``invert`` ablation refuses such a method).
        options: the :class:`PruningConfig` fields only this method reads; another method
            refuses a non-default value of them.
        layer_walk: the method walks the network layer by layer, through residual blocks (PHEW),
            and refuses grouped or depthwise convs and other branching networks with a
            one-line ConfigError (MobileNetV2: depthwise convs).
    """

    name: str
    score: ScoreFactory
    label: str
    color: str
    needs_data: bool = True
    default_steps: int = 1
    progressive: bool = False
    resurrect: bool = True
    force_saliency_score: bool = False
    score_dtype: torch.dtype = torch.float32
    ranked: bool = True
    options: tuple[str, ...] = ()
    layer_walk: bool = False


_CRITERIA: dict[str, Criterion] = {}

#: What tables and figures call a run with sparsity 0. Not a method: a run is dense iff its
#: sparsity is 0, which is what code tests; no method may take this name.
DENSE = "dense"


def register(criterion: Criterion) -> Criterion:
    """Add a method; its name must be new (use :func:`unregister` first to replace one)."""
    if not isinstance(criterion, Criterion):
        raise TypeError(f"register() takes a Criterion, got {type(criterion).__name__}")
    if criterion.name in _CRITERIA or criterion.name == DENSE:
        raise ValueError(f"a pruning method named {criterion.name!r} exists already")
    if criterion.default_steps < 1 or (criterion.default_steps > 1 and not criterion.progressive):
        raise ValueError(f"{criterion.name}: default_steps > 1 needs progressive=True")
    _CRITERIA[criterion.name] = criterion
    return criterion


def unregister(name: str) -> None:
    _CRITERIA.pop(name, None)


def get_criterion(name: object) -> Criterion:
    """The record of ``name``; a ConfigError listing the methods for an unknown one."""
    if isinstance(name, str) and name in _CRITERIA:
        return _CRITERIA[name]
    raise ConfigError(f"Unknown pruning method {name!r}. Choose one of: {', '.join(_CRITERIA)}.")


def method_names() -> tuple[str, ...]:
    """Every registered method, in registration order (also the legend order of figures)."""
    return tuple(_CRITERIA)


def criteria_list() -> tuple[Criterion, ...]:
    return tuple(_CRITERIA.values())


# The built-in methods, in legend order (docs/METHODS.md defines each).
register(Criterion("force", criteria.gradient_score, "FORCE", "#d62728", default_steps=60,
                   progressive=True, resurrect=True, force_saliency_score=True))  # fmt: skip
register(Criterion("iter_snip", criteria.gradient_score, "Iterative SNIP", "#ff7f0e",
                   default_steps=60, progressive=True, resurrect=False,
                   force_saliency_score=True))  # fmt: skip
register(Criterion("snip", criteria.gradient_score, "SNIP", "#1f77b4", force_saliency_score=True))
register(Criterion("grasp", criteria.grasp_score, "GRASP", "#2ca02c"))
register(Criterion("random", criteria.random_score, "Random", "#7f7f7f", needs_data=False,
                   ranked=False))  # fmt: skip
register(Criterion("magnitude", criteria.magnitude_score, "Magnitude", "#8c564b", needs_data=False))
register(Criterion("synflow", criteria.synflow_score, "SynFlow", "#9467bd", needs_data=False,
                   default_steps=100, progressive=True, resurrect=False,
                   score_dtype=torch.float64))  # fmt: skip
register(Criterion("grasp_it", criteria.grasp_it_score, "GraSP-It", "#98df8a", default_steps=60,
                   progressive=True, resurrect=False))  # fmt: skip
# Layer-wise random baselines: per-layer counts from a formula, random positions (layerwise.py).
register(Criterion("erk", layerwise_score(layerwise.erk_targets), "ERK", "#5254a3",
                   needs_data=False, ranked=False))  # fmt: skip
register(Criterion("er", layerwise_score(layerwise.er_targets), "ER", "#9c9ede",
                   needs_data=False, ranked=False))  # fmt: skip
register(Criterion("uniform_plus", layerwise_score(layerwise.uniform_plus_targets), "Uniform+",
                   "#c49c94", needs_data=False, ranked=False))  # fmt: skip
register(Criterion("smart_ratio", layerwise_score(layerwise.smart_ratio_targets), "Smart ratio",
                   "#e7969c", needs_data=False, ranked=False))  # fmt: skip
register(Criterion("smart_ratio_vgg", layerwise_score(layerwise.smart_ratio_vgg_targets),
                   "Smart ratio (VGG)", "#ad494a", needs_data=False, ranked=False))  # fmt: skip
register(Criterion("prospr", prospr.prospr_score, "ProsPr", "#17becf",
                   options=("prospr_first_order", "prospr_new_batches")))  # fmt: skip
register(Criterion("ntk_sap", ntk_sap.ntk_sap_score, "NTK-SAP", "#bcbd22", needs_data=False,
                   default_steps=ntk_sap.DEFAULT_STEPS, progressive=True,
                   resurrect=False))  # fmt: skip
register(Criterion("phew", phew.phew_score, "PHEW", "#7b4173", needs_data=False, ranked=False,
                   layer_walk=True))  # fmt: skip
