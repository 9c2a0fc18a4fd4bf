"""The entry point: run a method's steps on a model and return the mask (and what it did).

``compute_masks(model, data, method, sparsity, **options)`` is the public API; ``run_pruning``
takes a validated :class:`PruningConfig` and returns timing and per-step records too (the Lightning
callback calls it). What each method scores comes from its registry entry; nothing here branches on
method names, and nothing here imports Lightning.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields

import torch
from torch import Tensor, nn

from pruning_lightning.errors import ConfigError
from pruning_lightning.pruning.ablations import (
    INVERT,
    WEIGHT_ABLATIONS,
    ablate_masks,
    ablated_weights,
)
from pruning_lightning.pruning.batches import BatchStream, corruption
from pruning_lightning.pruning.config import PruningConfig
from pruning_lightning.pruning.criteria import GradReduce, ScoreContext
from pruning_lightning.pruning.masks import prunable_parameters
from pruning_lightning.pruning.network import LossFn, MaskedNetwork, module_modes
from pruning_lightning.pruning.progressive import (
    StepEvent,
    StepHook,
    StepRecord,
    kept_schedule,
    run_steps,
)
from pruning_lightning.pruning.registry import criteria_list
from pruning_lightning.pruning.saliency import saliency_views

__all__ = [
    "PruningConfig",
    "PruningResult",
    "StepEvent",
    "StepRecord",
    "compute_masks",
    "run_pruning",
]


@dataclass
class PruningResult:
    masks: dict[str, Tensor]  # name -> bool tensor (True = kept), on the params' device
    seconds: float  # wall time of the computation
    steps: list[StepRecord] = field(default_factory=list)  # empty unless record=True
    # the method's own mask: the one before a mask-level ablation (``shuffle``), or, with
    # ``reference=True``, the one an ``invert``/``saliency_data`` run would have made; None when
    # the mask is the method's own (or it was not asked for)
    unablated: dict[str, Tensor] | None = None
    # new theta0 of a weight-level ablation (reinit, shuffle_weights), by parameter name; the
    # model is not changed: the caller writes them (ablations.load_weights) before zeroing
    theta0: dict[str, Tensor] | None = None


def run_pruning(
    model: nn.Module,
    data: Iterable[tuple[Tensor, Tensor]] | None,
    config: PruningConfig,
    *,
    loss_fn: LossFn | None = None,
    grad_reduce: GradReduce | None = None,
    progress: bool | Callable[[int, int], None] = False,
    record: bool = False,
    on_step: StepHook | None = None,
    reference: bool = False,
) -> PruningResult:
    """Compute the mask ``config`` asks for; the model is left bit-identical.

    Args:
        model: the network; its prunable tensors are the Conv2d/Linear weights (see
            :func:`prunable_parameters`), its current weights are theta0.
        data: iterable of ``(inputs, targets)`` (a DataLoader); None only for data-free methods.
        config: the method, sparsity and options (:class:`PruningConfig`).
        loss_fn: ``loss(logits, targets)``, default mean cross-entropy.
        grad_reduce: in-place all-reduce of the gradients the scores come from (DDP).
        progress: True for a tqdm bar, or a callable ``(step, total)`` called after each step.
        record: fill :attr:`PruningResult.steps`: per-step counts and, when ``data`` is given,
            the FORCE saliency S(m_t) on the next fresh batches: free at every step but the last
            for methods whose score is the saliency's terms, one extra pass for the last (only)
            mask of the others; None at SynFlow's intermediate steps (each would cost a pass).
        on_step: called with a :class:`StepEvent` for every step t (its mask m_t before any
            ablation, kept counts, and S(m_t) when ``record`` measured it), as soon as S(m_t) is
            known: a caller keeps step masks or watches the saliency without a Lightning import.
        reference: when the ablation changes the computation itself (``invert``,
            ``saliency_data``), also compute the method's own mask on the same batches (a second
            computation, not timed) into :attr:`PruningResult.unablated`, so the two can be
            compared; without it, ``unablated`` is None for those ablations.
    """
    if not isinstance(config, PruningConfig):
        raise ConfigError(
            "run_pruning takes a PruningConfig (e.g. PruningConfig('force', 0.99, steps=60)); "
            "compute_masks(model, data, method, sparsity, **options) takes the options directly."
        )
    if not (isinstance(progress, bool) or callable(progress)):
        raise ConfigError(
            f"progress must be True/False or a callable (step, total), got {progress!r}."
        )
    if on_step is not None and not callable(on_step):
        raise ConfigError(
            f"on_step must be None or a callable taking a StepEvent, got {on_step!r}."
        )
    if config.seed is None:
        raise ConfigError(
            "run_pruning needs a seed: PruningConfig(..., seed=None) is unresolved; pass an "
            "integer seed (the callback fills in seed_everything's)."
        )
    criterion = config.criterion
    if data is None and criterion.needs_data:
        data_free = ", ".join(c.name for c in criteria_list() if not c.needs_data)
        raise ConfigError(
            f"method '{config.method}' needs data: pass an iterable of (inputs, targets) batches "
            f"(e.g. the training DataLoader); only {data_free} are data-free."
        )
    prunable = prunable_parameters(model, config.include, config.exclude)
    devices = {p.device for p in prunable.values()}
    if len(devices) > 1:
        raise ConfigError(
            f"the prunable tensors are on several devices ({sorted(map(str, devices))}): "
            "move the model to one device before computing masks."
        )
    device = devices.pop()
    names = list(prunable)
    shapes = [p.shape for p in prunable.values()]
    total = sum(p.numel() for p in prunable.values())
    kept = kept_schedule(total, 1.0 - float(config.sparsity), config.steps, config.schedule)

    bar = None
    report = progress if callable(progress) else None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps, desc=f"{config.method} mask", unit="step", leave=False)
        report = lambda t, total: bar.update(1)  # noqa: E731

    start = time.perf_counter()
    try:
        with _pruning_context(model, device, config.seed):
            stream = None
            if data is not None:
                corrupt = corruption(config.saliency_data, config.ablation_seed, model)
                stream = BatchStream(data, device, corrupt)
            net = None
            if stream is not None and (criterion.needs_data or record):
                # force_saliency_score's contract (registry.Criterion): the step writes its
                # scores over its effective weights, one buffer
                flat = criterion.force_saliency_score
                net = MaskedNetwork(
                    model, prunable, loss_fn=loss_fn, amp_dtype=config.amp_dtype, flat=flat
                )
            ctx = ScoreContext(model, prunable, config, net, stream, grad_reduce, record)
            final_saliency = None
            if net is not None:

                def final_saliency(masks: list[Tensor]) -> float:
                    return saliency_views(net, ctx.batches(), masks, grad_reduce)["pruning"]

            final, records = run_steps(
                criterion.score(ctx),
                kept,
                names,
                shapes,
                device,
                method=config.method,
                resurrect=criterion.resurrect,
                dtype=criterion.score_dtype,
                record=record,
                final_saliency=final_saliency,
                progress=report,
                buffer=net.flat if net is not None and criterion.force_saliency_score else None,
                invert=config.ablation == INVERT,
                on_step=on_step,
            )
            masks = {n: m.clone() for n, m in zip(names, final, strict=True)}
            ablated = ablate_masks(masks, config.ablation, config.ablation_seed)
            theta0 = ablated_weights(model, ablated, config.ablation, config.ablation_seed)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start
    unablated = None if ablated is masks else masks
    if reference and changes_computation(config):
        own = dataclasses.replace(config, ablation=None, saliency_data=None, ablation_seed=None)
        unablated = run_pruning(model, data, own, loss_fn=loss_fn, grad_reduce=grad_reduce).masks
    return PruningResult(
        masks=ablated, seconds=seconds, steps=records, unablated=unablated, theta0=theta0
    )


def changes_computation(config: PruningConfig) -> bool:
    """Whether the ablation changes how the mask is computed (not a finished mask): then the
    method's own mask is a second computation, made only on request (``reference``)."""
    return config.ablation == INVERT or config.saliency_data is not None


_RUN_OPTIONS = ("loss_fn", "grad_reduce", "progress")


def compute_masks(
    model: nn.Module,
    data: Iterable[tuple[Tensor, Tensor]] | None,
    method: str,
    sparsity: float,
    **options,
) -> dict[str, Tensor]:
    """The mask (name -> bool tensor, True = kept) of ``method`` at ``sparsity``.

    ``options``: the fields of :class:`PruningConfig` (steps, schedule, num_batches, seed,
    include, exclude, temperature, amp_dtype, input_shape, ablation, ablation_seed,
    saliency_data) and ``loss_fn``, ``grad_reduce``, ``progress`` (see :func:`run_pruning`).
    The weight-level ablations (reinit, shuffle_weights) change theta0, not the mask: they need
    :func:`run_pruning`, whose result holds the new weights.
    """
    known = {f.name for f in fields(PruningConfig)} | set(_RUN_OPTIONS)
    unknown = sorted(set(options) - known)
    if "record" in unknown:
        raise ConfigError("compute_masks does not record steps: use run_pruning(record=True).")
    if unknown:
        raise ConfigError(
            f"compute_masks got unknown option(s) {', '.join(unknown)}; it takes "
            f"{', '.join(sorted(known - {'method', 'sparsity'}))}."
        )
    if options.get("ablation") in WEIGHT_ABLATIONS:
        raise ConfigError(
            f"ablation {options['ablation']!r} changes the weights, not the mask: use "
            "run_pruning(model, data, PruningConfig(...)), whose .theta0 holds the new weights."
        )
    run = {k: options.pop(k) for k in _RUN_OPTIONS if k in options}
    config = PruningConfig(method, sparsity, **options)
    return run_pruning(model, data, config, **run).masks


@contextlib.contextmanager
def _pruning_context(model: nn.Module, device: torch.device, seed: int):
    """Autograd on, modules in train mode (restored), and a forked, seeded global RNG.

    The fork keeps the caller's RNG stream untouched and makes dropout and the DataLoader's
    shuffle/augmentation seeds (drawn at ``iter()``) a function of ``seed``.
    """
    cuda = [device] if device.type == "cuda" else []
    with (
        torch.random.fork_rng(devices=cuda),
        torch.inference_mode(False),
        torch.enable_grad(),
        module_modes(model, True),
    ):
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield
