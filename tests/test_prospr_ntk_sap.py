"""ProsPr and NTK-SAP against independent computations on tiny networks.

ProsPr's meta-gradient is checked against central finite differences of the loss after K steps of
``torch.optim.SGD`` on a copy of the network (float64), its first-order variant against its
definition; NTK-SAP's gradient against the formula written out by hand, its BatchNorm handling
against the official recipe (momentum 1, a train-mode pass, then eval) on a copy, and its draws
(init, noise, deltas, rounds) against a replay. The invariants every method shares (exact kept
count, the model left bit-identical, determinism) run for both in tests/test_engine.py too.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import batches, conv_net
from torch import nn
from torch.func import functional_call

from pruning_lightning import ConfigError, compute_masks
from pruning_lightning.pruning import PruningConfig, global_topk_masks, prunable_parameters
from pruning_lightning.pruning.ablations import network_init
from pruning_lightning.pruning.criteria import ScoreContext
from pruning_lightning.pruning.network import module_modes
from pruning_lightning.pruning.ntk_sap import (
    DRAW_SEED_OFFSET,
    EPSILON,
    noise_batch_sizes,
    ntk_sap_gradient,
    ntk_sap_score,
)
from pruning_lightning.pruning.prospr import meta_gradient, prospr_scores


def set_weights(net: nn.Module) -> nn.Module:
    """Deterministic, distinct weights (no RNG), as float64."""
    with torch.no_grad():
        for i, p in enumerate(net.parameters()):
            n = p.numel()
            p.copy_(torch.sin(torch.arange(n, dtype=torch.float64) * 0.7 + i).view(p.shape) * 0.6)
    return net.double()


def mlp() -> nn.Module:
    return set_weights(nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)))


def conv() -> nn.Module:
    """Conv-BN-ReLU-Linear on (2, 3, 3) inputs: BatchNorm is trained in ProsPr's inner loop."""
    net = nn.Sequential(
        nn.Conv2d(2, 2, 2), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3)
    )
    return set_weights(net)


def batch(net: nn.Module, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shape = (4,) if isinstance(net[0], nn.Linear) else (2, 3, 3)
    x = torch.randn(6, *shape, generator=gen, dtype=torch.float64)
    return x, torch.tensor([0, 1, 2, 0, 1, 2])


# --- ProsPr -----------------------------------------------------------------------------------


def loss_after_sgd(net, scale, inner, meta, lr, momentum=0.0) -> float:
    """L(theta_K) with theta_0 = theta0 * scale (prunable), by torch.optim.SGD on a copy."""
    model = copy.deepcopy(net).train()
    with torch.no_grad():
        for name, p in prunable_parameters(model).items():
            p.mul_(scale[name])
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    for x, y in inner:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    with torch.no_grad():
        return float(F.cross_entropy(model(meta[0]), meta[1]))


def split(data, inner_steps, new_batches):
    """(batches of each inner step, final batch), as ProsPr draws them."""
    if new_batches:
        return data[:inner_steps], data[inner_steps]
    return [data[0]] * inner_steps, data[0]


@pytest.mark.parametrize("make", [mlp, conv], ids=["mlp", "conv_bn"])
@pytest.mark.parametrize(
    "inner_steps, new_batches, momentum",
    [(1, False, 0.0), (2, False, 0.0), (2, True, 0.0), (2, False, 0.9)],
    ids=["K1", "K2", "K2_new_batches", "K2_momentum"],
)
def test_prospr_meta_gradient_matches_finite_differences(make, inner_steps, new_batches, momentum):
    net = make()
    data = [batch(net, s) for s in range(inner_steps + 1)]
    inner, meta = split(data, inner_steps, new_batches)
    prunable = prunable_parameters(net)
    with torch.enable_grad(), module_modes(net, True):
        got = meta_gradient(net, prunable, [[b] for b in inner], [meta], lr=0.1, momentum=momentum)
    h = 1e-6
    for (name, p), g in zip(prunable.items(), got, strict=True):
        checked = range(0, p.numel(), max(1, p.numel() // 10))  # about 10 entries per tensor
        fd = g.detach().clone().reshape(-1)
        for j in checked:
            scale = {n: torch.ones_like(q) for n, q in prunable.items()}
            scale[name].view(-1)[j] = 1 + h
            up = loss_after_sgd(net, scale, inner, meta, 0.1, momentum)
            scale[name].view(-1)[j] = 1 - h
            down = loss_after_sgd(net, scale, inner, meta, 0.1, momentum)
            fd[j] = (up - down) / (2 * h)
        assert torch.allclose(g.reshape(-1), fd, rtol=1e-5, atol=1e-8), name
        assert float(fd[list(checked)].abs().max()) > 1e-3  # not a comparison of zeros


@pytest.mark.parametrize("make", [mlp, conv], ids=["mlp", "conv_bn"])
def test_prospr_first_order_is_theta0_times_the_gradient_after_the_steps(make):
    """First order: the inner gradients are constants, so dL/dc = theta0 * dL/dtheta at theta_K."""
    net = make()
    data = [batch(net, 0)]
    model = copy.deepcopy(net).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(data[0][0]), data[0][1]).backward()
        opt.step()
    opt.zero_grad()
    F.cross_entropy(model(data[0][0]), data[0][1]).backward()
    theta0 = prunable_parameters(net)
    want = {n: (theta0[n] * p.grad).abs() for n, p in prunable_parameters(model).items()}
    got = prospr_scores(net, data, first_order=True)
    full = prospr_scores(net, data)
    for name in want:
        assert torch.allclose(got[name], want[name], rtol=1e-10, atol=1e-12), name
    assert any(not torch.allclose(full[n], got[n], rtol=1e-3) for n in want)  # it is a variant


def test_prospr_mask_is_the_top_k_of_its_scores_on_the_first_batch():
    net, data = conv_net(), batches(3)
    masks = compute_masks(net, data, "prospr", 0.8)
    k = sum(int(m.sum()) for m in masks.values())
    assert k == round(0.2 * sum(m.numel() for m in masks.values()))
    want = global_topk_masks(prospr_scores(net, data[:1]), k)
    assert all(torch.equal(masks[n], want[n]) for n in want)


def test_prospr_options_change_the_mask_and_belong_to_prospr():
    net, data = conv_net(), batches(6)
    base = compute_masks(net, data, "prospr", 0.8)
    for option in ("prospr_first_order", "prospr_new_batches"):
        other = compute_masks(net, data, "prospr", 0.8, **{option: True})
        assert any(not torch.equal(base[n], other[n]) for n in base), option
        with pytest.raises(ConfigError, match=f"{option} only applies to prospr") as err:
            PruningConfig("snip", 0.8, **{option: True})
        assert "\n" not in str(err.value)
        with pytest.raises(ConfigError, match=f"{option} must be true or false"):
            PruningConfig("prospr", 0.8, **{option: 1})


# --- NTK-SAP ----------------------------------------------------------------------------------


def objective_by_hand(w1, b1, w2, b2, x, deltas, m):
    """The MLP's ||f(x; theta * m) - f(x; (theta + eps delta) * m)||^2, written out."""

    def f(a, c):
        return torch.tanh(x @ (a * m[0]).T + b1) @ (c * m[1]).T + b2

    diff = f(w1, w2) - f(w1 + EPSILON * deltas[0], w2 + EPSILON * deltas[1])
    return (torch.linalg.vector_norm(diff, dim=-1) ** 2).sum()  # the official expression


def test_ntk_sap_gradient_is_the_formula_by_hand():
    net = mlp()
    gen = torch.Generator().manual_seed(3)
    names = list(prunable_parameters(net))
    params = dict(net.named_parameters())
    x = torch.randn(7, 4, generator=gen, dtype=torch.float64)
    deltas = [torch.randn(params[n].shape, generator=gen, dtype=torch.float64) for n in names]
    masks = [(torch.rand(params[n].shape, generator=gen) < 0.7).double() for n in names]
    got = ntk_sap_gradient(net, params, masks, names, x, deltas)
    m = [mask.clone().requires_grad_(True) for mask in masks]
    w1, b1, w2, b2 = (p.detach() for p in net.parameters())
    want = torch.autograd.grad(objective_by_hand(w1, b1, w2, b2, x, deltas, m), m)
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(g, w, rtol=1e-10, atol=1e-14)
    assert all(p.grad is None for p in net.parameters())


def test_ntk_sap_batchnorm_is_calibrated_on_the_noise_as_the_official_code():
    """The official recipe on a copy: BatchNorm momentum 1, reset, one train-mode pass of the
    unperturbed network, then both networks in eval mode on those statistics."""
    net = conv()
    net[1].running_mean.fill_(3.0)  # stale statistics must not leak in
    gen = torch.Generator().manual_seed(4)
    names = list(prunable_parameters(net))
    params = dict(net.named_parameters())
    x = torch.randn(8, 2, 3, 3, generator=gen, dtype=torch.float64)
    deltas = [torch.randn(params[n].shape, generator=gen, dtype=torch.float64) for n in names]
    masks = [(torch.rand(params[n].shape, generator=gen) < 0.6).double() for n in names]
    got = ntk_sap_gradient(net, params, masks, names, x, deltas)

    ref = copy.deepcopy(net)
    ref[1].momentum = 1.0
    ref[1].reset_running_stats()
    theta = {n: params[n].detach() for n in names}
    ref.train()
    with torch.no_grad():
        functional_call(ref, {n: theta[n] * mk for n, mk in zip(names, masks, strict=True)}, (x,))
    ref.eval()
    m = [mask.clone().requires_grad_(True) for mask in masks]
    out = functional_call(ref, {n: theta[n] * mi for n, mi in zip(names, m, strict=True)}, (x,))
    pert = {n: (theta[n] + EPSILON * d) * mi for n, d, mi in zip(names, deltas, m, strict=True)}
    out_mod = functional_call(ref, pert, (x,))
    want = torch.autograd.grad(((out - out_mod) ** 2).sum(), m)
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(g, w, rtol=1e-9, atol=1e-13)
    assert float(net[1].running_mean[0]) == 3.0 and int(net[1].num_batches_tracked) == 0


def test_ntk_sap_scores_the_seeded_draws_of_the_networks_init():
    """One step = |sum over R rounds of the official pruning set's batches| of the gradient at a
    fresh init, fresh noise and fresh deltas, drawn in that order from the seeded RNG."""
    net = mlp().float()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    config = PruningConfig("ntk_sap", 0.5, steps=1, num_batches=2, seed=7, input_shape=(4,))
    prunable = prunable_parameters(net)
    names = list(prunable)
    views = [torch.empty_like(p) for p in prunable.values()]
    with torch.random.fork_rng():
        ntk_sap_score(ScoreContext(net, prunable, config, None, None))(1, None, views)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())

    assert noise_batch_sizes(3) == [30]
    want = [torch.zeros_like(v, dtype=torch.float64) for v in views]
    with torch.random.fork_rng():
        torch.manual_seed(7 + DRAW_SEED_OFFSET)
        for _ in range(2):
            ref = copy.deepcopy(net)
            network_init(ref)(ref)
            x = torch.randn(30, 4)
            deltas = [torch.randn_like(dict(ref.named_parameters())[n]) for n in names]
            w1, b1, w2, b2 = (p.detach().double() for p in ref.parameters())
            m = [torch.ones_like(w1, requires_grad=True), torch.ones_like(w2, requires_grad=True)]
            obj = objective_by_hand(w1, b1, w2, b2, x.double(), [d.double() for d in deltas], m)
            for acc, g in zip(want, torch.autograd.grad(obj, m), strict=True):
                acc.add_(g)
    for v, w in zip(views, want, strict=True):
        assert torch.allclose(v.double(), w.abs(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("sparsity", [0.5, 0.937])
def test_ntk_sap_is_data_free_exact_and_independent_of_the_data(sparsity):
    net = conv_net()
    shape = (3, 6, 6)
    free = compute_masks(net, None, "ntk_sap", sparsity, steps=4, input_shape=shape)
    with_data = compute_masks(net, batches(2), "ntk_sap", sparsity, steps=4)
    total = sum(m.numel() for m in free.values())
    assert sum(int(m.sum()) for m in free.values()) == round((1 - sparsity) * total)
    assert all(torch.equal(free[n], with_data[n]) for n in free)  # the draws follow the seed only
    other = compute_masks(net, None, "ntk_sap", sparsity, steps=4, input_shape=shape, seed=1)
    assert any(not torch.equal(free[n], other[n]) for n in free)


def test_ntk_sap_without_data_or_shape_says_what_to_pass():
    with pytest.raises(ConfigError, match="ntk_sap without data needs input_shape"):
        compute_masks(conv_net(), None, "ntk_sap", 0.9)
