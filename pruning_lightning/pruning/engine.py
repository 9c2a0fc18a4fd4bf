"""The entry point: validate the request, run a criterion, return the mask (and what it did).

``compute_masks(model, data, method, sparsity)`` is the public API, used by the Lightning
callback and directly by users; ``run_pruning`` is the same with timing and per-step records.
Nothing here imports Lightning.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from pruning_lightning.errors import ConfigError
from pruning_lightning.pruning.criteria import (
    GradReduce,
    SynFlowNetwork,
    grasp_hessian_gradient,
    random_scores,
)
from pruning_lightning.pruning.masks import prunable_parameters
from pruning_lightning.pruning.progressive import (
    SCHEDULES,
    StepRecord,
    kept_schedule,
    run_steps,
)
from pruning_lightning.pruning.saliency import BatchStream, LossFn, MaskedNetwork, module_modes

try:  # numba: the fused CPU path of the gradient criteria; without it the torch path serves
    from pruning_lightning.pruning import fused
except Exception as err:  # pragma: no cover - numba missing, or no writable cache directory
    fused = None
    warnings.warn(
        f"pruning_lightning: the fused CPU kernels are unavailable ({err}); SNIP, Iterative SNIP "
        "and FORCE use the slower torch path on the CPU. Install numba; if it cannot cache its "
        "kernels, set NUMBA_CACHE_DIR to a writable directory.",
        stacklevel=2,
    )

__all__ = ["METHODS", "PruningResult", "StepRecord", "compute_masks", "run_pruning"]

METHODS: tuple[str, ...] = ("random", "magnitude", "snip", "grasp", "iter_snip", "force", "synflow")
PROGRESSIVE: tuple[str, ...] = ("force", "iter_snip", "synflow")
DATA_FREE: tuple[str, ...] = ("random", "magnitude", "synflow")
GRADIENT: tuple[str, ...] = ("snip", "iter_snip", "force")  # |theta0 * dL/dw| at theta0 * m
DEFAULT_STEPS = {"force": 60, "iter_snip": 60, "synflow": 100}
AMP_DTYPES = (torch.float16, torch.bfloat16)


@dataclass
class PruningResult:
    masks: dict[str, Tensor]  # name -> bool tensor (True = kept), on the params' device
    seconds: float  # wall time of the computation
    steps: list[StepRecord] = field(default_factory=list)  # empty unless record=True


def run_pruning(
    model: nn.Module,
    data: Iterable[tuple[Tensor, Tensor]] | None,
    method: str,
    sparsity: float,
    *,
    steps: int | None = None,
    schedule: str = "exp",
    num_batches: int = 1,
    seed: int = 0,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    temperature: float = 200.0,
    loss_fn: LossFn | None = None,
    amp_dtype: torch.dtype | None = None,
    grad_reduce: GradReduce | None = None,
    progress: bool | Callable[[int, int], None] = False,
    record: bool = False,
    input_shape: Sequence[int] | None = None,
) -> PruningResult:
    """Compute the mask of ``method`` at ``sparsity``; the model is left bit-identical.

    Args:
        model: the network; its prunable tensors are the Conv2d/Linear weights (see
            :func:`prunable_parameters`), its current weights are theta0.
        data: iterable of ``(inputs, targets)`` (a DataLoader); None only for data-free methods.
        method: one of :data:`METHODS`.
        sparsity: fraction of prunable weights removed, in [0, 1); ``round((1-s) N)`` are kept.
        steps: T for force/iter_snip (default 60) and synflow (default 100); one-shot: 1.
        schedule: ``"exp"`` or ``"linear"`` kept-count schedule of the progressive methods.
        num_batches: batches per gradient (averaged); progressive methods draw them fresh each step.
        seed: seeds the random scores, and (inside a forked RNG) dropout and the data order.
        include: fnmatch patterns narrowing the prunable tensors.
        exclude: fnmatch patterns removing prunable tensors.
        temperature: GRASP's logit temperature (200 in the paper).
        loss_fn: ``loss(logits, targets)``, default mean cross-entropy.
        amp_dtype: run the forward passes under autocast with this dtype; scores stay float32.
        grad_reduce: in-place all-reduce of the gradients the scores come from (DDP).
        progress: True for a tqdm bar, or a callable ``(step, total)`` called after each step.
        record: fill :attr:`PruningResult.steps`: per-step counts and, when ``data`` is given,
            the FORCE saliency S(m_t) on the next fresh batches: free at every step but the last
            for snip/iter_snip/force, one extra pass for the last (only) mask of the others;
            None at synflow's intermediate steps (each would cost a pass).
        input_shape: synflow's input shape of one example, e.g. ``(3, 32, 32)`` (default: taken
            from the first batch of ``data``).
    """
    steps = validate_options(
        method, sparsity, steps, schedule, num_batches, seed, temperature, amp_dtype, progress,
        input_shape,
    )  # fmt: skip
    if data is None and method not in DATA_FREE:
        raise ConfigError(
            f"method '{method}' needs data: pass an iterable of (inputs, targets) batches (e.g. "
            f"the training DataLoader); only {', '.join(DATA_FREE)} are data-free."
        )
    if data is None and method == "synflow" and input_shape is None:
        raise ConfigError(
            "synflow without data needs input_shape, the shape of one example, e.g. (3, 32, 32)."
        )
    prunable = prunable_parameters(model, include, exclude)
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
    density = 1.0 - float(sparsity)
    kept = kept_schedule(total, density, steps, schedule)

    bar = None
    report = progress if callable(progress) else None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=f"{method} mask", unit="step", leave=False)
        report = lambda t, total: bar.update(1)  # noqa: E731

    start = time.perf_counter()
    try:
        with _pruning_context(model, device, seed):
            stream = BatchStream(data, device) if data is not None else None
            net = None
            if stream is not None and (method not in DATA_FREE or record):
                net = MaskedNetwork(
                    model, prunable, loss_fn=loss_fn, amp_dtype=amp_dtype, flat=method in GRADIENT
                )

            def saliency(masks: list[Tensor]) -> float:
                """S(m) on fresh batches: sum over kept of |theta0 * dL/dw| at theta0 * m."""
                assert net is not None and stream is not None
                net.load(masks)
                grads = _gradients(net, stream, num_batches, grad_reduce)
                s = torch.zeros((), dtype=torch.float64, device=device)
                with torch.no_grad():
                    for t, g, m in zip(net.theta0, grads, masks, strict=True):
                        s += torch.where(m, (t * g).abs_(), 0.0).sum(dtype=torch.float64)
                return float(s)

            resurrect = method not in ("iter_snip", "synflow")  # they rank kept weights only
            if (
                method in GRADIENT
                and not record
                and fused is not None
                and fused.supported(device, net.flat)
            ):
                net.load(None)
                final = fused.run_steps_fused(
                    lambda: _gradients(net, stream, num_batches, grad_reduce),
                    net.theta0, net.flat, kept, method=method, resurrect=resurrect,
                    progress=report,
                )  # fmt: skip
                records = []
            else:
                score_fn = _score_fn(
                    method, model, prunable, net, stream, num_batches, seed, temperature,
                    grad_reduce, input_shape,
                )  # fmt: skip
                final, records = run_steps(
                    score_fn,
                    kept,
                    names,
                    shapes,
                    device,
                    method=method,
                    resurrect=resurrect,
                    dtype=torch.float64 if method == "synflow" else torch.float32,
                    record=record,
                    score_is_saliency=method in GRADIENT,
                    final_saliency=saliency if net is not None else None,
                    progress=report,
                    # the scores of a step overwrite its effective weights, no longer needed
                    buffer=net.flat if net is not None and method in GRADIENT else None,
                )
            masks = {n: m.clone() for n, m in zip(names, final, strict=True)}
            if device.type == "cuda":
                torch.cuda.synchronize(device)
    finally:
        if bar is not None:
            bar.close()
    return PruningResult(masks=masks, seconds=time.perf_counter() - start, steps=records)


def compute_masks(
    model: nn.Module,
    data: Iterable[tuple[Tensor, Tensor]] | None,
    method: str,
    sparsity: float,
    **kwargs,
) -> dict[str, Tensor]:
    """The mask (name -> bool tensor, True = kept) of ``method`` at ``sparsity``.

    Same arguments as :func:`run_pruning` (except ``record``); see there.
    """
    if "record" in kwargs:
        raise ConfigError("compute_masks does not record steps: use run_pruning(record=True).")
    return run_pruning(model, data, method, sparsity, **kwargs).masks


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


def _score_fn(
    method: str,
    model: nn.Module,
    prunable: dict[str, nn.Parameter],
    net: MaskedNetwork | None,
    stream: BatchStream | None,
    num_batches: int,
    seed: int,
    temperature: float,
    grad_reduce: GradReduce | None,
    input_shape: Sequence[int] | None,
):
    """The per-step score writer of ``method`` (see progressive.ScoreFn)."""
    theta0 = [p.detach() for p in prunable.values()]

    if method == "random":
        numel = sum(t.numel() for t in theta0)

        def random_step(t, prev, views):
            flat = random_scores(numel, seed).to(theta0[0].device)
            offset = 0
            for v in views:
                v.copy_(flat[offset : offset + v.numel()].view(v.shape))
                offset += v.numel()

        return random_step

    if method == "magnitude":

        def magnitude_step(t, prev, views):
            for v, th in zip(views, theta0, strict=True):
                torch.abs(th, out=v)

        return magnitude_step

    if method == "synflow":
        if input_shape is None:
            assert stream is not None  # validated: synflow needs data or input_shape
            input_shape = tuple(stream.next()[0].shape[1:])
        synflow = SynFlowNetwork(model, prunable, input_shape)

        def synflow_step(t, prev, views):
            for v, s in zip(views, synflow.scores(prev), strict=True):
                v.copy_(s)

        return synflow_step

    assert net is not None and stream is not None
    if method == "grasp":

        def grasp_step(t, prev, views):
            hg = grasp_hessian_gradient(net, stream.take(num_batches), temperature, grad_reduce)
            with torch.no_grad():  # rank theta0 * Hg = -score: keeps the k smallest scores
                for v, th, h in zip(views, theta0, hg, strict=True):
                    torch.mul(th, h, out=v)

        return grasp_step

    def gradient_step(t, prev, views):  # snip, iter_snip, force: |theta0 * dL/dw| at theta0 * m
        net.load(prev)
        grads = _gradients(net, stream, num_batches, grad_reduce)
        with torch.no_grad():
            for v, th, g in zip(views, theta0, grads, strict=True):
                torch.mul(th, g, out=v)
                v.abs_()

    return gradient_step


def _gradients(
    net: MaskedNetwork, stream: BatchStream, num_batches: int, grad_reduce: GradReduce | None
) -> list[Tensor]:
    """dL/dw at the current effective weights on the next batches (all-reduced under DDP)."""
    grads = net.gradients(stream.take(num_batches))
    if grad_reduce is not None:
        grad_reduce(grads)
    return grads


def validate_options(
    method: str,
    sparsity: float,
    steps: int | None = None,
    schedule: str = "exp",
    num_batches: int = 1,
    seed: int = 0,
    temperature: float = 200.0,
    amp_dtype: torch.dtype | None = None,
    progress: bool | Callable[[int, int], None] = False,
    input_shape: Sequence[int] | None = None,
) -> int:
    """Check the options of :func:`run_pruning` without any model or data; return T.

    Callers that configure pruning ahead of time (the Lightning callback) call it at
    construction, so a bad option fails before any training starts.
    """
    if not isinstance(method, str) or method not in METHODS:
        raise ConfigError(
            f"Unknown pruning method {method!r}. Choose one of: {', '.join(METHODS)}."
        )
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
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ConfigError(
            f"steps must be an integer >= 1 (the number of pruning iterations T), got {steps!r}."
        )
    if method not in PROGRESSIVE and steps is not None and steps > 1:
        raise ConfigError(
            f"steps={steps} only applies to force/iter_snip/synflow; '{method}' is one-shot: "
            "leave steps unset (or 1), or pick a progressive method."
        )
    if schedule not in SCHEDULES:
        raise ConfigError(f"Unknown schedule {schedule!r}. Choose one of: {', '.join(SCHEDULES)}.")
    if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
        raise ConfigError(
            f"num_batches must be an integer >= 1 (batches averaged per gradient), "
            f"got {num_batches!r}."
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, got {seed!r}.")
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not math.isfinite(temperature)
        or temperature <= 0
    ):
        raise ConfigError(
            f"temperature must be a positive number (GRASP divides the logits by it; the paper "
            f"uses 200), got {temperature!r}."
        )
    if amp_dtype is not None and amp_dtype not in AMP_DTYPES:
        raise ConfigError(
            f"amp_dtype must be None, torch.float16 or torch.bfloat16, got {amp_dtype!r}."
        )
    if not (isinstance(progress, bool) or callable(progress)):
        raise ConfigError(
            f"progress must be True/False or a callable (step, total), got {progress!r}."
        )
    if input_shape is not None and (
        isinstance(input_shape, str | bytes)
        or not isinstance(input_shape, Sequence)
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in input_shape)
    ):
        raise ConfigError(
            f"input_shape must be the shape of one example as positive integers, e.g. "
            f"(3, 32, 32), got {input_shape!r}."
        )
    if steps is None:
        steps = DEFAULT_STEPS.get(method, 1)
    return steps
