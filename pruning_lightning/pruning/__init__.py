"""The pruning math: prunable tensors, criteria, progressive schedules, masks. No Lightning here."""

from pruning_lightning.pruning.connectivity import has_input_output_path
from pruning_lightning.pruning.engine import (
    METHODS,
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
from pruning_lightning.pruning.saliency import force_saliency

__all__ = [
    "METHODS",
    "PruningResult",
    "StepRecord",
    "apply_masks",
    "check_masks",
    "collapsed_layers",
    "compute_masks",
    "force_saliency",
    "global_topk_masks",
    "has_input_output_path",
    "kept_counts",
    "kept_schedule",
    "prunable_parameters",
    "run_pruning",
]
