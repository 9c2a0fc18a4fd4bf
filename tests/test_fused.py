"""The fused CPU path of the gradient criteria gives exactly the torch path's masks and weights."""

from __future__ import annotations

import subprocess
import sys
from functools import partial

import pytest
import torch
from conftest import batches
from torch import nn

from pruning_lightning.errors import ConfigError
from pruning_lightning.pruning import engine, fused, run_pruning
from pruning_lightning.pruning.masks import _SMALL, TopKSelector

SHAPES = [(7, 3, 3, 3), (40, 7, 3, 3), (300, 513), (10, 300)]  # 170k weights: sampled bracket
SMALL_SHAPES = [(4, 3, 3, 3), (5, 4), (3, 5)]


def problem(shapes, seed: int, levels: int | None = None):
    """theta and gradients; with ``levels``, scores take few distinct values (many ties)."""
    gen = torch.Generator().manual_seed(seed)
    theta = [torch.randn(s, generator=gen) for s in shapes]
    grads = [torch.randn(s, generator=gen) for s in shapes]
    if levels is not None:
        theta = [torch.randint(-levels, levels + 1, s, generator=gen).float() for s in shapes]
        grads = [torch.randint(-2, 3, s, generator=gen).float() * 0.5 for s in shapes]
    return theta, grads


def expected(theta, grads, k, allowed=None) -> torch.Tensor:
    """TopKSelector on the stored scores |theta * grad|: the torch path."""
    scores = torch.cat([(t * g).abs().reshape(-1) for t, g in zip(theta, grads, strict=True)])
    selector = TopKSelector(scores.numel(), torch.device("cpu"))
    selector.scores.copy_(scores)
    out = torch.empty(scores.numel(), dtype=torch.bool)
    selector.select(k, out, allowed=allowed)
    return out


def run_fused(theta, grads, k, allowed=None, with_mask=True):
    total = sum(t.numel() for t in theta)
    weights = torch.full((total,), float("nan"))
    out = torch.empty(total, dtype=torch.bool) if with_mask else None
    n_allowed = None if allowed is None else int(allowed.sum())
    selector = fused.FusedTopK(theta, weights)
    selector.step(grads, k, "force", out=out, allowed=allowed, n_allowed=n_allowed)
    return out, weights


@pytest.mark.parametrize("shapes", [SHAPES, SMALL_SHAPES], ids=["sampled", "small"])
@pytest.mark.parametrize("levels", [None, 3], ids=["distinct", "ties"])
def test_fused_step_matches_the_torch_path(shapes, levels):
    theta, grads = problem(shapes, seed=0, levels=levels)
    total = sum(t.numel() for t in theta)
    assert (total > _SMALL) == (shapes is SHAPES)
    flat_theta = torch.cat([t.reshape(-1) for t in theta])
    for k in [0, 1, 7, total // 100, total // 3, total // 2 + 11, total - 1, total]:
        out, weights = run_fused(theta, grads, k)
        ref = expected(theta, grads, k)
        assert torch.equal(out, ref), k
        assert int(out.sum()) == k
        assert torch.equal(weights, flat_theta * ref), k  # the next effective weights


@pytest.mark.parametrize("shapes", [SHAPES, SMALL_SHAPES], ids=["sampled", "small"])
def test_fused_step_restricted_to_allowed(shapes):
    theta, grads = problem(shapes, seed=1, levels=2)
    total = sum(t.numel() for t in theta)
    allowed = torch.rand(total, generator=torch.Generator().manual_seed(3)) < 0.3
    n = int(allowed.sum())
    for k in [0, 1, n // 10, n // 2, n - 1, n]:
        out, weights = run_fused(theta, grads, k, allowed)
        ref = expected(theta, grads, k, allowed)
        assert torch.equal(out, ref), k
        assert not bool((out & ~allowed).any())


def test_fused_step_without_a_mask_still_sets_the_weights():
    theta, grads = problem(SHAPES, seed=2)
    k = 5000
    _, weights = run_fused(theta, grads, k, with_mask=False)
    ref = expected(theta, grads, k)
    assert torch.equal(weights, torch.cat([t.reshape(-1) for t in theta]) * ref)


@pytest.mark.parametrize("where", ["above", "below", "inside"])
def test_fused_step_is_exact_when_the_bracket_misses(where, monkeypatch):
    theta, grads = problem(SHAPES, seed=4)
    scores = torch.cat([(t * g).abs().reshape(-1) for t, g in zip(theta, grads, strict=True)])
    k = scores.numel() // 3
    kth = torch.sort(scores, descending=True).values[k - 1]
    lo, hi = {
        "above": (kth * 1.5, kth * 2.0),  # the k-th largest is below the bracket
        "below": (kth * 0.25, kth * 0.5),  # ... above it
        "inside": (kth * 0.9, kth * 1.1),
    }[where]
    monkeypatch.setattr(fused, "sample_bracket", lambda sample, k, n: (lo, hi))
    out, _ = run_fused(theta, grads, k)
    assert torch.equal(out, expected(theta, grads, k))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_fused_step_rejects_non_finite_scores(bad):
    theta, grads = problem(SHAPES, seed=5)
    grads[2][17, 3] = bad
    with pytest.raises(ConfigError, match="non-finite"):
        run_fused(theta, grads, 1000)


# --- through run_pruning ----------------------------------------------------------------------


def mlp(seed: int, dead: bool = False) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(108, 600), nn.ReLU(), nn.Linear(600, 120),
                        nn.ReLU(), nn.Linear(120, 4))  # fmt: skip
    if dead:  # zero weights score zero: ties at the threshold once few weights are kept
        with torch.no_grad():
            net[3].weight[:, 300:] = 0.0
    return net


data = partial(batches, 3, batch_size=8)  # three seeded batches of eight (3, 6, 6) images


@pytest.mark.parametrize("method", ["snip", "iter_snip", "force"])
@pytest.mark.parametrize("sparsity", [0.5, 0.99, 0.9995])
@pytest.mark.parametrize("dead", [False, True])
def test_run_pruning_fused_equals_torch_path(method, sparsity, dead, monkeypatch):
    steps = None if method == "snip" else 4
    kwargs = dict(steps=steps, num_batches=2, seed=3)
    calls = []
    original = fused.FusedTopK.step
    monkeypatch.setattr(fused.FusedTopK, "step", lambda self, *a, **k: calls.append(1)
                        or original(self, *a, **k))  # fmt: skip
    fast = run_pruning(mlp(0, dead), data(), method, sparsity, **kwargs).masks
    assert len(calls) == (steps or 1)  # the fused path ran
    monkeypatch.setattr(engine, "fused", None)
    slow = run_pruning(mlp(0, dead), data(), method, sparsity, **kwargs).masks
    assert fast.keys() == slow.keys()
    for name in fast:
        assert torch.equal(fast[name], slow[name]), name


def test_recording_takes_the_torch_path(monkeypatch):
    monkeypatch.setattr(fused.FusedTopK, "step", lambda *a, **k: pytest.fail("fused"))
    result = run_pruning(mlp(0), data(), "force", 0.9, steps=3, record=True)
    assert len(result.steps) == 3


class WithUnusedLayer(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.used = nn.Linear(108, 4)
        self.unused = nn.Linear(5, 5)  # prunable, but the loss never reaches it

    def forward(self, x):
        return self.used(x.flatten(1))


@pytest.mark.parametrize("method", ["snip", "force"])
def test_a_weight_the_loss_does_not_use_scores_zero(method):
    """Its gradient is zero, so it is pruned before any weight with a positive score."""
    steps = None if method == "snip" else 3
    masks = run_pruning(WithUnusedLayer(), data(), method, 0.5, steps=steps).masks
    assert not bool(masks["unused.weight"].any())
    assert int(masks["used.weight"].sum()) == round(0.5 * (432 + 25))


def test_fused_step_without_reload_leaves_the_weights():
    theta, grads = problem(SHAPES, seed=6)
    total = sum(t.numel() for t in theta)
    weights = torch.full((total,), float("nan"))
    out = torch.empty(total, dtype=torch.bool)
    fused.FusedTopK(theta, weights).step(grads, 3000, "force", out=out, reload=False)
    assert torch.equal(out, expected(theta, grads, 3000))
    assert bool(weights.isnan().all())


def test_without_numba_the_torch_path_serves_with_a_warning():
    code = """
import sys, warnings
sys.modules["numba"] = None  # as if numba could not be imported
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import pruning_lightning
print("warned:", any("fused CPU kernels are unavailable" in str(w.message) for w in caught))
import torch
from torch import nn
from pruning_lightning import compute_masks
from pruning_lightning.pruning import engine
net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
data = [(torch.randn(4, 12), torch.tensor([0, 1, 2, 0]))]
masks = compute_masks(net, data, "force", 0.5, steps=2)
print("fused:", engine.fused, "kept:", int(masks["1.weight"].sum()))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "warned: True" in out.stdout
    assert "fused: None kept: 18" in out.stdout
