"""Regression pin: the masks `compute_masks` returns on a fixed network and batches, by checksum.

Any change of behaviour, however small, changes a checksum; if an intended change moves a mask,
re-record the value and say why in the commit.

The pins hold on every machine and at every thread count because the network computes exactly:
its weights, biases, inputs and targets are small integers, the loss is a squared error and every
other constant (GRASP's temperature, the mean over two batches) is a power of two. So every value
an operation produces is a multiple of a small power of two far inside the float's range of exact
integers, and every sum comes out exact whatever order a kernel adds in (threads, SIMD width,
BLAS blocking, fused multiply-adds): the masks are a function of the integers alone, ties
included (broken by position). :func:`test_the_arithmetic_is_exact` checks that bound. GRASP's
Hessian-gradient products outgrow float32's exact integers, so its network runs in float64 (its
exact scores are then rounded once into the float32 score buffer: deterministic too).

A real network (BatchNorm, cross-entropy, random weights) computes with rounding, and its
progressive masks are chaotic: the last bits of one CPU's rounding against another's flip them.
No pin is taken there; test_criteria.py checks the criteria on such networks against independent
computations, with margins that rounding cannot cross.
"""

from __future__ import annotations

import hashlib
import math

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from pruning_lightning.pruning import compute_masks
from pruning_lightning.pruning.criteria import grasp_scores, snip_scores, synflow_scores

CASES = {
    # (method, sparsity, seed, steps): sha256 of the masks, in parameter order, as bytes
    ("random", 0.9, 0, None): "3370e0f9432dd0e1",
    ("magnitude", 0.8, 0, None): "515d1ed65ecdae02",
    ("snip", 0.8, 0, None): "d2b9ecfff6031f2b",
    ("snip", 0.9, 1, None): "cc397e9f8bfd2264",
    ("grasp", 0.8, 0, None): "3277739c9eba43d5",
    ("grasp", 0.9, 1, None): "320f2ae4ad2c3d2b",
    ("iter_snip", 0.9, 0, 5): "ea1bfcba464e212a",
    ("iter_snip", 0.8, 1, 3): "e6ad86ccabf3a57a",
    ("force", 0.9, 0, 5): "5f0c76460444acf0",
    ("force", 0.9, 1, 3): "312a8187aa16bc86",
    ("synflow", 0.9, 0, 5): "ef97b1d0649b25ab",
    ("synflow", 0.8, 1, 3): "e7c74c82bee05e4b",
}
GRASP = {"temperature": 2.0}  # a power of two: out / T is exact
NUM_BATCHES = 2  # the gradient is a mean over two batches: a halving, exact


def integers(index: torch.Tensor, bound: int) -> torch.Tensor:
    """Non-zero integers in [-bound, bound], a fixed pattern of ``index``."""
    v = index % (2 * bound)
    return torch.where(v < bound, v - bound, v - bound + 1).float()


class ExactNet(nn.Module):
    """Linear(4, 6), ReLU, a residual Linear(6, 6) + ReLU, Linear(6, 3); integer parameters.

    ``bound=True`` is the network that bounds every value of the real one (see
    :func:`test_the_arithmetic_is_exact`): absolute parameters and no ReLU.
    """

    def __init__(self, seed: int, bound: bool = False) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 3)
        self.act = nn.Identity() if bound else nn.ReLU()
        with torch.no_grad():
            for i, p in enumerate(self.parameters()):
                index = torch.arange(p.numel())
                if p.dim() > 1:  # weights: non-zero, in [-2, 2]
                    value = integers(index * (5 + 2 * i) + 3 * seed + i, 2)
                else:  # biases: -1, 0, 1
                    value = ((index + seed + i) % 3 - 1).float()
                p.copy_(value.view(p.shape).abs() if bound else value.view(p.shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc1(x))
        h = h + self.act(self.fc2(h))
        return self.fc3(h)


def exact_batches(seed: int, bound: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Four batches of two: inputs non-zero integers in [-2, 2], targets in {-1, 0, 1}.

    ``bound=True``: |inputs| and -|targets|, so that out - y is the bound |out| + |y|.
    """
    out = []
    for b in range(4):
        i = torch.arange(8) + 8 * b + 7 * seed
        x = integers(3 * i * i + i, 2).view(2, 4)
        j = torch.arange(6) + 6 * b + seed
        y = ((7 * j) % 3 - 1).float().view(2, 3)
        out.append((x.abs(), -y.abs()) if bound else (x, y))
    return out


def squared_error(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    d = out - target
    return (d * d).sum() / 2


def double(batches):
    return [(x.double(), y.double()) for x, y in batches]


def masks_of(method: str, sparsity: float, seed: int, steps: int | None):
    model, data = ExactNet(seed), exact_batches(seed)
    options: dict = {"steps": steps, "seed": seed}
    if method in ("snip", "grasp", "iter_snip", "force"):
        options.update(loss_fn=squared_error, num_batches=NUM_BATCHES)
    if method == "grasp":
        model, data = model.double(), double(data)
        options.update(GRASP)
    return compute_masks(model, data, method, sparsity, **options)


def checksum(masks: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name, mask in masks.items():
        digest.update(name.encode())
        digest.update(mask.to(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


@pytest.mark.parametrize("case", list(CASES), ids=lambda c: "-".join(map(str, c)))
def test_masks_are_pinned(case):
    method, sparsity, seed, steps = case
    masks = masks_of(method, sparsity, seed, steps)
    assert sum(int(m.sum()) for m in masks.values()) == round((1 - sparsity) * 78)
    assert checksum(masks) == CASES[case]


class Extremes(TorchDispatchMode):
    """The largest |value| and the most fractional bits of any float an operation produces."""

    def __init__(self) -> None:
        super().__init__()
        self.largest, self.bits = 0.0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if "empty" in func.__name__:  # uninitialised memory, written before it is read
            return out
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel():
                t = t.detach()
                self.largest = max(self.largest, float(t.abs().max()))
                bits = next((q for q in range(17) if torch.equal(t * 2**q, (t * 2**q).round())), 99)
                self.bits = max(self.bits, bits)
        return out


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("kind", ["gradient", "grasp", "synflow"])
def test_the_arithmetic_is_exact(kind, seed):
    """Every value of the pinned computations, partial sums included, is exact, for any mask.

    The bound network (|parameters|, |inputs|, ReLU removed, out - y = |out| + |y|) adds only
    non-negative terms, each at least as large as the real network's under any mask (a ReLU's
    slope and a mask entry are 0 or 1), so the largest value it produces bounds every partial sum
    of the real computation. A float holds every multiple of 2**-bits below 2**(mantissa - bits)
    exactly: with the bound below that, no sum rounds, in any order. (SynFlow's linearised network
    is its own bound network: absolute values, an all-ones input.)
    """
    net, data = ExactNet(seed, bound=True), exact_batches(seed, bound=True)[:NUM_BATCHES]
    if kind == "grasp":
        net, data = net.double(), double(data)
    elif kind == "synflow":
        net = ExactNet(seed)
    with Extremes() as seen:
        if kind == "gradient":  # SNIP, Iterative SNIP, FORCE: float32
            snip_scores(net, data, loss_fn=squared_error)
        elif kind == "grasp":  # float64
            grasp_scores(net, data, loss_fn=squared_error, **GRASP)
        else:  # float64
            synflow_scores(net, (4,))
    mantissa = 24 if kind == "gradient" else 53
    assert seen.bits <= 8 and seen.largest > 0
    assert math.log2(seen.largest) + seen.bits < mantissa
