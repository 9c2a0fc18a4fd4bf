"""The options of a mask computation, validated once, before any model or data is touched."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import torch

from pruning_lightning.errors import ConfigError
from pruning_lightning.pruning.ablations import INVERT, MASK_ABLATIONS, WEIGHT_ABLATIONS
from pruning_lightning.pruning.batches import CORRUPTIONS
from pruning_lightning.pruning.masks import fnmatch_patterns
from pruning_lightning.pruning.progressive import SCHEDULES
from pruning_lightning.pruning.registry import Criterion, criteria_list, get_criterion

AMP_DTYPES = (torch.float16, torch.bfloat16)
#: The ablations of a computed mask (docs/METHODS.md "Ablations"): mask-level (shuffle),
#: weight-level (reinit, shuffle_weights) and of the ranking (invert).
ABLATIONS = (*MASK_ABLATIONS, *WEIGHT_ABLATIONS, INVERT)
#: The corruptions of the saliency batches (Su et al.'s checks).
SALIENCY_DATA = tuple(CORRUPTIONS)


@dataclass(frozen=True)
class PruningConfig:
    """What to compute: ``method`` at ``sparsity``, and how.

    Attributes:
        method: a registered method (:func:`~pruning_lightning.pruning.registry.method_names`).
        sparsity: fraction of prunable weights removed, in [0, 1); ``round((1-s) N)`` are kept.
        steps: T of a progressive method; None = the method's default (FORCE and Iterative SNIP
            60, SynFlow 100, NTK-SAP 20), resolved on construction, so ``steps`` is always an int
            afterwards.
        schedule: ``"exp"`` or ``"linear"`` kept-count schedule of the progressive methods.
        num_batches: batches per gradient (averaged); progressive methods draw them fresh each step.
        seed: seeds the random scores, and (inside a forked RNG) dropout and the data order;
            None = not chosen yet (the callback fills in ``seed_everything``'s at fit time), which
            :func:`~pruning_lightning.pruning.engine.run_pruning` refuses.
        include: fnmatch patterns narrowing the prunable tensors.
        exclude: fnmatch patterns removing prunable tensors.
        temperature: GRASP's logit temperature (200 in the paper).
        amp_dtype: run the forward passes under autocast with this dtype; scores stay float32.
        input_shape: SynFlow's input shape of one example, e.g. ``(3, 32, 32)`` (default: taken
            from the first batch of the data).
        ablation: an ablation of the computed mask (:data:`ABLATIONS`, docs/METHODS.md
            "Ablations"): ``shuffle``, ``reinit``, ``shuffle_weights`` or ``invert``; None = none.
        ablation_seed: seeds the ablation and the saliency-data corruption; None = ``seed``,
            resolved on construction whenever an ablation or ``saliency_data`` is set.
        saliency_data: corrupt the saliency batches (:data:`SALIENCY_DATA`): ``random_labels``
            or ``shuffled_pixels``; None = the data as given.
        prospr_first_order: ProsPr's first-order variant (no second-order terms through its
            inner steps); default the full meta-gradient, as the official command line.
        prospr_new_batches: ProsPr draws fresh batches for each inner step and the final loss;
            default one meta batch for all, as the official command line.
    """

    method: str
    sparsity: float
    steps: int | None = None
    schedule: str = "exp"
    num_batches: int = 1
    seed: int | None = 0
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] | None = None
    temperature: float = 200.0
    amp_dtype: torch.dtype | None = None
    input_shape: tuple[int, ...] | None = field(default=None)
    ablation: str | None = None
    ablation_seed: int | None = None
    saliency_data: str | None = None
    prospr_first_order: bool = False
    prospr_new_batches: bool = False

    def __post_init__(self) -> None:
        criterion = get_criterion(self.method)
        sparsity, steps = self.sparsity, self.steps
        if (
            isinstance(sparsity, bool)
            or not isinstance(sparsity, int | float)
            or not math.isfinite(sparsity)
            or not 0.0 <= sparsity < 1.0
        ):
            raise ConfigError(
                f"sparsity must be a number in [0, 1) (the fraction of prunable weights removed, "
                f"e.g. 0.995; 0 keeps everything), got {sparsity!r}."
            )
        if steps is not None and (
            isinstance(steps, bool) or not isinstance(steps, int) or steps < 1
        ):
            raise ConfigError(
                f"steps must be an integer >= 1 (the number of pruning iterations T), "
                f"got {steps!r}."
            )
        if ignores_steps(self.method, steps):
            progressive = ", ".join(c.name for c in criteria_list() if c.progressive)
            raise ConfigError(
                f"steps={steps} only applies to the progressive methods ({progressive}); "
                f"'{self.method}' is one-shot: leave steps unset (or 1), or pick a progressive "
                "method."
            )
        if self.schedule not in SCHEDULES:
            raise ConfigError(
                f"Unknown schedule {self.schedule!r}. Choose one of: {', '.join(SCHEDULES)}."
            )
        if _not_int(self.num_batches) or self.num_batches < 1:
            raise ConfigError(
                f"num_batches must be an integer >= 1 (batches averaged per gradient), "
                f"got {self.num_batches!r}."
            )
        if self.seed is not None and _not_int(self.seed):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}.")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or t <= 0:
            raise ConfigError(
                f"temperature must be a positive number (GRASP divides the logits by it; the "
                f"paper uses 200), got {t!r}."
            )
        if self.amp_dtype is not None and self.amp_dtype not in AMP_DTYPES:
            raise ConfigError(
                f"amp_dtype must be None, torch.float16 or torch.bfloat16, got {self.amp_dtype!r}."
            )
        shape = self.input_shape
        if shape is not None and (
            isinstance(shape, str | bytes)
            or not isinstance(shape, Sequence)
            or not all(not _not_int(s) and s > 0 for s in shape)
        ):
            raise ConfigError(
                f"input_shape must be the shape of one example as positive integers, e.g. "
                f"(3, 32, 32), got {shape!r}."
            )
        ablation_seed = self._check_ablation(criterion)
        self._check_method_options(criterion)
        set_ = object.__setattr__  # frozen: normalise once, here
        set_(self, "ablation_seed", ablation_seed)
        set_(self, "steps", criterion.default_steps if steps is None else steps)
        set_(self, "include", fnmatch_patterns("include", self.include))
        set_(self, "exclude", fnmatch_patterns("exclude", self.exclude))
        set_(self, "input_shape", None if shape is None else tuple(shape))

    @property
    def criterion(self) -> Criterion:
        return get_criterion(self.method)

    def _check_method_options(self, criterion: Criterion) -> None:
        """The options of one method (:attr:`Criterion.options`): booleans, and refused at a
        non-default value for any other method (they would be silently ignored)."""
        defaults = {f.name: f.default for f in fields(self)}
        for name in sorted({o for c in criteria_list() for o in c.options}):
            value = getattr(self, name)
            if isinstance(defaults[name], bool) and not isinstance(value, bool):
                raise ConfigError(f"{name} must be true or false, got {value!r}.")
            if value != defaults[name] and name not in criterion.options:
                owners = ", ".join(c.name for c in criteria_list() if name in c.options)
                raise ConfigError(
                    f"{name} only applies to {owners}, not '{self.method}': drop it or pick "
                    f"{owners}."
                )

    def _check_ablation(self, criterion: Criterion) -> int | None:
        """The checks of ``ablation``/``saliency_data``; returns the resolved ablation seed."""
        if self.ablation is not None and self.ablation not in ABLATIONS:
            raise ConfigError(
                f"Unknown ablation {self.ablation!r}. Choose one of: {', '.join(ABLATIONS)}."
            )
        if self.saliency_data is not None and self.saliency_data not in SALIENCY_DATA:
            raise ConfigError(
                f"Unknown saliency_data {self.saliency_data!r}. Choose one of: "
                f"{', '.join(SALIENCY_DATA)}."
            )
        if self.ablation == INVERT and not criterion.ranked:
            raise ConfigError(
                f"ablation 'invert' needs a ranking, and '{self.method}' scores weights at "
                "random (its inverse is another random mask): pick another method or ablation."
            )
        if self.saliency_data is not None and not criterion.needs_data:
            raise ConfigError(
                f"saliency_data {self.saliency_data!r} corrupts the saliency batches, and "
                f"'{self.method}' uses no data: drop saliency_data or pick a data-driven method."
            )
        seed = self.ablation_seed
        if seed is not None and _not_int(seed):
            raise ConfigError(f"ablation_seed must be an integer, got {seed!r}.")
        if seed is None and (self.ablation is not None or self.saliency_data is not None):
            seed = self.seed
        return seed


def ignores_steps(method: str, steps: object) -> bool:
    """Whether ``steps`` is a T > 1 given to a one-shot method: the one rule for it. The API
    refuses it (:class:`PruningConfig`); a config file's T, written for a progressive method,
    is ignored with a warning by the callback, so a config survives switching the method."""
    return (
        not get_criterion(method).progressive
        and isinstance(steps, int)
        and not isinstance(steps, bool)
        and steps > 1
    )


def _not_int(value: object) -> bool:
    return isinstance(value, bool) or not isinstance(value, int)
