"""The pruning math: prunable tensors, criteria, progressive schedules, masks. No Lightning here."""

from pruning_lightning.pruning.compact import compact_network
from pruning_lightning.pruning.config import PruningConfig
from pruning_lightning.pruning.connectivity import effective_masks, has_input_output_path
from pruning_lightning.pruning.engine import (
    PruningResult,
    StepRecord,
    compute_masks,
    run_pruning,
)
from pruning_lightning.pruning.masks import (
    apply_masks,
    check_masks,
    collapsed_layers,
    global_topk_masks,
    kept_counts,
    prunable_parameters,
)
from pruning_lightning.pruning.progressive import kept_schedule
from pruning_lightning.pruning.registry import Criterion, get_criterion, method_names, register
from pruning_lightning.pruning.saliency import force_saliency

__all__ = [
    "compact_network",
    "Criterion",
    "PruningConfig",
    "PruningResult",
    "StepRecord",
    "apply_masks",
    "check_masks",
    "collapsed_layers",
    "compute_masks",
    "force_saliency",
    "get_criterion",
    "global_topk_masks",
    "effective_masks",
    "has_input_output_path",
    "kept_counts",
    "kept_schedule",
    "method_names",
    "prunable_parameters",
    "register",
    "run_pruning",
]
