"""The score functions of the pruning methods, and analysis helpers that return their scores.

A method's score function (a :data:`ScoreFactory`) receives a :class:`ScoreContext` once and
returns the per-step writer ``step(t, previous mask or None, score views)`` the step loop calls
(:mod:`pruning_lightning.pruning.progressive`); :mod:`~pruning_lightning.pruning.registry` records
which factory each method uses. Convention: a larger score = more worth keeping. GRASP's paper score
``-theta0 * Hg`` keeps the k SMALLEST, so its step writes the negation ``theta0 * Hg``
(:func:`grasp_scores` returns the paper's score). The public ``*_scores`` functions return
``name -> tensor`` for analysis and tests from the same building blocks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.overrides import TorchFunctionMode

from pruning_lightning.errors import ConfigError
from pruning_lightning.pruning.batches import BatchStream, split_batch, to_device
from pruning_lightning.pruning.masks import prunable_parameters, split_flat
from pruning_lightning.pruning.network import (
    LossFn,
    MaskedNetwork,
    batch_mean,
    load_masked,
    module_modes,
)
from pruning_lightning.pruning.progressive import ScoreFn
from pruning_lightning.pruning.saliency import effective_saliency_

if TYPE_CHECKING:
    from pruning_lightning.pruning.config import PruningConfig

GradReduce = Callable[[list[Tensor]], None]


@dataclass
class ScoreContext:
    """What a score function may use: the model and its prunable tensors (theta0), the options,
    the network at masked weights and the stream of fresh training batches (both None when a
    data-free method runs without data)."""

    model: nn.Module
    prunable: dict[str, nn.Parameter]
    config: PruningConfig
    net: MaskedNetwork | None
    stream: BatchStream | None
    grad_reduce: GradReduce | None = None
    record: bool = False  # a step may return the FORCE saliency of m_{t-1} it gets on the way

    @property
    def theta0(self) -> list[Tensor]:
        return [p.detach() for p in self.prunable.values()]

    def batches(self, replay: bool = False) -> Iterable[tuple[Tensor, Tensor]]:
        """The next ``num_batches`` fresh batches, moved to the device one at a time
        (``replay``: re-iterable, see :meth:`BatchStream.take`)."""
        if self.stream is None:
            raise ConfigError(f"method '{self.config.method}' needs data.")
        return self.stream.take(self.config.num_batches, replay=replay)

    def gradients(self, masks: Sequence[Tensor] | None) -> list[Tensor]:
        """dL/dw at ``theta0 * m`` on fresh batches, averaged (and all-reduced under DDP)."""
        assert self.net is not None
        self.net.load(masks)
        grads = self.net.gradients(self.batches())
        if self.grad_reduce is not None:
            self.grad_reduce(grads)
        return grads


ScoreFactory = Callable[[ScoreContext], ScoreFn]


def gradient_score(ctx: ScoreContext) -> ScoreFn:
    """SNIP, Iterative SNIP, FORCE: ``|theta0 * dL/dw|`` at ``theta0 * m_{t-1}`` (the FORCE
    saliency's terms).

    When recording, the step also returns S(m_{t-1}), the sum of those terms over m_{t-1}, from
    the effective weights before the scores overwrite them (:func:`effective_saliency_`).
    """
    theta0 = ctx.theta0

    def write(views: list[Tensor], grads: list[Tensor]) -> None:
        for v, th, g in zip(views, theta0, grads, strict=True):
            torch.mul(th, g, out=v)
            v.abs_()

    return _gradient_step(ctx, write)


def _gradient_step(
    ctx: ScoreContext, write: Callable[[list[Tensor], list[Tensor]], None]
) -> ScoreFn:
    """A step that scores from dL/dw at ``theta0 * m_{t-1}``: ``write(views, grads)`` fills the
    scores; when recording, S(m_{t-1}) is taken from the same gradient first, before the scores
    overwrite the weights (they may share a buffer: ``Criterion.force_saliency_score``)."""
    assert ctx.net is not None
    weights = ctx.net.weights

    def step(t: int, prev: list[Tensor] | None, views: list[Tensor]) -> float | None:
        grads = ctx.gradients(prev)
        saliency = None
        with torch.no_grad():
            if ctx.record and prev is not None:
                saliency = effective_saliency_(weights, grads)
            write(views, grads)
        return saliency

    return step


def grasp_it_score(ctx: ScoreContext) -> ScoreFn:
    """GraSP-It (naver/force ``prune_method=2``): ``(dL/dw)^2`` at ``theta0 * m_{t-1}``.

    The squared gradient of each weight (their "gradient norm approximation"); with
    ``resurrect=False`` only the weights still kept are ranked, as Iterative SNIP. When
    recording, the step returns S(m_{t-1}) from the same gradient, as :func:`gradient_score`.
    """

    def write(views: list[Tensor], grads: list[Tensor]) -> None:
        for v, g in zip(views, grads, strict=True):
            torch.mul(g, g, out=v)

    return _gradient_step(ctx, write)


def grasp_score(ctx: ScoreContext) -> ScoreFn:
    """GRASP: ranks ``theta0 * Hg`` (the negated paper score), Hg at theta0."""
    theta0 = ctx.theta0
    assert ctx.net is not None

    def step(t: int, prev: list[Tensor] | None, views: list[Tensor]) -> None:
        hg = grasp_hessian_gradient(
            ctx.net, ctx.batches(replay=True), ctx.config.temperature, ctx.grad_reduce
        )
        with torch.no_grad():
            for v, th, h in zip(views, theta0, hg, strict=True):
                torch.mul(th, h, out=v)

    return step


def random_score(ctx: ScoreContext) -> ScoreFn:
    """Random: i.i.d. uniform scores from the seed, the same on any device."""
    numel = sum(p.numel() for p in ctx.prunable.values())

    def step(t: int, prev: list[Tensor] | None, views: list[Tensor]) -> None:
        flat = random_scores(numel, ctx.config.seed).to(views[0].device)
        for v, part in zip(views, split_flat(flat, [v.shape for v in views]), strict=True):
            v.copy_(part)

    return step


def magnitude_score(ctx: ScoreContext) -> ScoreFn:
    """Magnitude: ``|theta0|``."""
    theta0 = ctx.theta0

    def step(t: int, prev: list[Tensor] | None, views: list[Tensor]) -> None:
        for v, th in zip(views, theta0, strict=True):
            v.copy_(th).abs_()  # casts: a float64 or bf16 model scores into the float32 buffer

    return step


def example_shape(ctx: ScoreContext, method: str) -> tuple[int, ...]:
    """The shape of one example for a data-free method: ``input_shape`` if given, else read off
    one data batch (which it then consumes)."""
    if ctx.config.input_shape is not None:
        return tuple(ctx.config.input_shape)
    if ctx.stream is None:
        raise ConfigError(
            f"{method} without data needs input_shape, the shape of one example, e.g. "
            f"compute_masks(model, None, '{method}', 0.99, input_shape=(3, 32, 32))."
        )
    return tuple(ctx.stream.next()[0].shape[1:])


def synflow_score(ctx: ScoreContext) -> ScoreFn:
    """SynFlow: ``|w * dR/dw|`` of the linearised network at ``|theta0| * m_{t-1}``."""
    input_shape = example_shape(ctx, "synflow")
    synflow = SynFlowNetwork(ctx.model, ctx.prunable, input_shape)

    def step(t: int, prev: list[Tensor] | None, views: list[Tensor]) -> None:
        for v, score in zip(views, synflow.scores(prev), strict=True):
            v.copy_(score)

    return step


def random_scores(numel: int, seed: int) -> Tensor:
    """i.i.d. uniform scores from a seeded CPU generator: the same mask on any device."""
    return torch.rand(numel, generator=torch.Generator().manual_seed(seed))


def grasp_hessian_gradient(
    net: MaskedNetwork,
    batches: Iterable[tuple[Tensor, Tensor]],
    temperature: float,
    grad_reduce: GradReduce | None = None,
) -> list[Tensor]:
    """Hg at theta0 for GRASP, g = dL/dw of the temperature-scaled loss, averaged over batches.

    Hg comes from a second backward of ``g_detached . dL/dw`` (g fixed, the gradient built with
    ``create_graph``), one batch at a time, averaged. ``grad_reduce`` sees g, then Hg.
    ``batches`` is iterated twice (a list, or a replaying :meth:`BatchStream.take`).
    """
    net.load(None)
    g = net.gradients(batches, temperature)
    if grad_reduce is not None:
        grad_reduce(g)

    def hessian_gradient(x: Tensor, y: Tensor) -> tuple[Tensor, ...]:
        grads = torch.autograd.grad(net.loss(x, y, temperature), net.weights, create_graph=True)
        dot = sum((a * b).sum() for a, b in zip(g, grads, strict=True))
        return torch.autograd.grad(dot, net.weights)

    hg = batch_mean(hessian_gradient(x, y) for x, y in batches)
    if grad_reduce is not None:
        grad_reduce(hg)
    return hg


#: Elementwise activations whose positive branch is (or tends to) the identity: the ReLU family
#: and its smooth variants. Gates with a bounded range (sigmoid, tanh, hardsigmoid) are not here.
LINEARISED_ACTIVATIONS = (
    "relu", "relu6", "hardtanh", "leaky_relu", "rrelu", "elu", "celu", "gelu", "silu", "mish",
    "hardswish", "softplus", "prelu",
)  # fmt: skip


def _activation_functions() -> frozenset[Callable]:
    """Every callable, in-place variants included, through which torch runs those activations
    (``F.relu``, ``torch.relu_``, ``Tensor.relu``, ``torch._C._nn.hardtanh_``, ...)."""
    owners = (F, torch, Tensor, torch._C._nn)
    return frozenset(
        fn
        for name in LINEARISED_ACTIVATIONS
        for variant in (name, name + "_")
        for owner in owners
        if (fn := getattr(owner, variant, None)) is not None
    )


_ACTIVATION_FUNCTIONS = _activation_functions()


class LinearActivations(TorchFunctionMode):
    """While active, every activation of :data:`LINEARISED_ACTIVATIONS` returns its input.

    SynFlow's R is the path norm of the *linearised* network, where all values are positive and a
    ReLU is the identity; ReLU6 would clip them at 6 and Hardswish/SiLU/GELU would bend them. A
    torch-function mode sees every call, module or functional (``F.relu`` inside a ``forward``)
    alike, so no backbone needs its modules swapped. Pooling is left alone (see SynFlowNetwork).
    """

    def __torch_function__(
        self,
        func: Callable,
        types: Sequence[type],
        args: Sequence[object] = (),
        kwargs: dict[str, object] | None = None,
    ) -> object:
        kwargs = kwargs or {}
        if func in _ACTIVATION_FUNCTIONS:
            return args[0] if args else kwargs["input"]
        return func(*args, **kwargs)


class SynFlowNetwork:
    """SynFlow's linearised network: |parameters| in float64, eval mode, an all-ones input, every
    activation the identity (:class:`LinearActivations`).

    As in Tanaka et al.'s reference code every floating parameter and buffer is replaced by its
    absolute value (so no sign cancels, R > 0); the prunable weights are ``|theta0| * m``. Max-pool
    is evaluated as is, as in the reference: at the all-ones point each window passes on its
    largest unit (the first of tied ones), so R is the l1 path norm over the paths through those
    units. Max-pool is positively homogeneous, so without biases each layer that every path
    crosses still has scores summing to R (docs/METHODS.md, SynFlow).
    """

    def __init__(
        self, model: nn.Module, prunable: Mapping[str, nn.Parameter], input_shape: Sequence[int]
    ):
        self.model = model
        self.names = list(prunable)
        self.theta = [p.detach().abs().double() for p in prunable.values()]
        device = self.theta[0].device
        chosen = {id(p) for p in prunable.values()}

        def lin(t: Tensor) -> Tensor:
            return t.detach().abs().double() if t.is_floating_point() else t.detach().clone()

        self.fixed = {n: lin(p) for n, p in model.named_parameters() if id(p) not in chosen}
        self.fixed.update({n: lin(b) for n, b in model.named_buffers()})
        self.weights = [torch.empty_like(t) for t in self.theta]
        self.x = torch.ones((1, *input_shape), dtype=torch.float64, device=device)

    def scores(self, masks: Sequence[Tensor] | None) -> list[Tensor]:
        """``|w * dR/dw|`` at ``w = |theta0| * m`` (None = all kept), R = sum of the outputs."""
        load_masked(self.weights, self.theta, masks)
        params = {**self.fixed, **dict(zip(self.names, self.weights, strict=True))}
        with module_modes(self.model, False), LinearActivations():
            r = functional_call(self.model, params, (self.x,)).sum()
        grads = torch.autograd.grad(r, self.weights)
        with torch.no_grad():
            return [(w * g).abs_() for w, g in zip(self.weights, grads, strict=True)]


# --- public name -> score helpers (analysis, tests) -------------------------------------------


def _batches(data: Iterable, device: torch.device) -> list[tuple[Tensor, Tensor]]:
    out = [to_device(split_batch(b), device) for b in data]
    if not out:
        raise ConfigError("batches is empty: pass at least one (inputs, targets) batch.")
    return out


def magnitude_scores(model: nn.Module, **select) -> dict[str, Tensor]:
    """``|theta|`` per prunable tensor (``select``: include/exclude patterns)."""
    return {n: p.detach().abs() for n, p in prunable_parameters(model, **select).items()}


def snip_scores(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    loss_fn: LossFn | None = None,
    amp_dtype: torch.dtype | None = None,
    **select,
) -> dict[str, Tensor]:
    """SNIP: ``|theta0 * dL/dtheta|`` at theta0, gradient averaged over ``batches``, train mode."""
    prunable = prunable_parameters(model, **select)
    net = MaskedNetwork(model, prunable, loss_fn=loss_fn, amp_dtype=amp_dtype)
    with torch.enable_grad(), module_modes(model, True):
        net.load(None)
        grads = net.gradients(_batches(batches, net.device))
    return {n: (t * g).abs_() for n, t, g in zip(net.names, net.theta0, grads, strict=True)}


def grasp_scores(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    temperature: float = 200.0,
    loss_fn: LossFn | None = None,
    amp_dtype: torch.dtype | None = None,
    **select,
) -> dict[str, Tensor]:
    """GRASP's score ``-theta0 * Hg`` (the k SMALLEST are kept), train mode."""
    prunable = prunable_parameters(model, **select)
    net = MaskedNetwork(model, prunable, loss_fn=loss_fn, amp_dtype=amp_dtype)
    with torch.enable_grad(), module_modes(model, True):
        hg = grasp_hessian_gradient(net, _batches(batches, net.device), temperature)
    return {n: -t * h for n, t, h in zip(net.names, net.theta0, hg, strict=True)}


def synflow_scores(
    model: nn.Module,
    input_shape: Sequence[int],
    masks: Mapping[str, Tensor] | None = None,
    **select,
) -> dict[str, Tensor]:
    """One SynFlow score ``|w * dR/dw|`` (float64) at ``w = |theta0| * m`` (default: all kept)."""
    prunable = prunable_parameters(model, **select)
    net = SynFlowNetwork(model, prunable, input_shape)
    mask_list = None if masks is None else [masks[n].to(net.x.device) for n in net.names]
    with torch.enable_grad():
        scores = net.scores(mask_list)
    return dict(zip(net.names, scores, strict=True))
