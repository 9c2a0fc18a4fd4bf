"""Scores of each criterion against independent computations on tiny hand-set networks."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from pruning_lightning import compute_masks
from pruning_lightning.pruning import (
    PruningConfig,
    global_topk_masks,
    kept_counts,
    prunable_parameters,
    run_pruning,
)
from pruning_lightning.pruning.criteria import (
    grasp_scores,
    magnitude_scores,
    snip_scores,
    synflow_scores,
)
from pruning_lightning.pruning.progressive import kept_schedule


def hand_net() -> nn.Sequential:
    """Conv-BN-ReLU-Linear with deterministic, distinct, hand-set weights (no RNG)."""
    net = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Conv2d(3, 2, 1, bias=False),
        nn.Flatten(),
        nn.Linear(2 * 4 * 4, 3),
    )
    with torch.no_grad():
        for i, p in enumerate(net.parameters()):
            n = p.numel()
            p.copy_(torch.sin(torch.arange(n, dtype=torch.float32) * 0.7 + i).view(p.shape) * 0.5)
    return net


def hand_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.cos(torch.arange(6 * 2 * 4 * 4, dtype=torch.float32) * (0.3 + seed)).view(6, 2, 4, 4)
    return x, torch.tensor([0, 1, 2, 0, 1, 2])


def flat(scores: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([s.reshape(-1) for s in scores.values()])


def assert_keeps_top_k(masks, expected: dict[str, torch.Tensor], k: int, tol: float) -> None:
    """``masks`` keep ``k`` weights: every one whose reference score beats the (k+1)-th largest
    by more than ``2 * tol``, none that trails the k-th by more than that.

    If the mask's scores are within ``tol`` of the reference (as the allclose above checks for
    the same computation), this holds for any rounding: a weight ``2 * tol`` above the (k+1)-th
    reference score is beaten only by weights above that score, at most k - 1 others. Weights
    nearer the threshold may swap with rounding (another CPU, another summation order): they are
    left free, and the test asserts they are few.
    """
    kept, ref = flat(masks), flat(expected).detach().double()
    assert kept.dtype == torch.bool and int(kept.sum()) == k
    ordered = ref.sort(descending=True).values
    clear_in, clear_out = ref > ordered[k] + 2 * tol, ref < ordered[k - 1] - 2 * tol
    assert kept[clear_in].all() and not kept[clear_out].any()
    free = int((~(clear_in | clear_out)).sum())
    assert free <= 0.2 * ref.numel(), f"{free} of {ref.numel()} scores within 2 tol of the k-th"


# --- SNIP -------------------------------------------------------------------------------------


def test_snip_linear_layer_closed_form():
    """One bias-free Linear, L = 0.5 ||Wx - y||^2: dL/dW = (Wx - y) x^T, by hand."""
    net = nn.Sequential(nn.Linear(3, 2, bias=False))
    w = torch.tensor([[1.0, -2.0, 0.5], [0.25, 3.0, -1.0]])
    with torch.no_grad():
        net[0].weight.copy_(w)
    x, y = torch.tensor([[1.0, 2.0, -1.0]]), torch.tensor([[0.0, 1.0]])

    def loss(out, target):
        return 0.5 * ((out - target) ** 2).sum()

    residual = w @ x[0] - y[0]  # [-3.5, 6.25]
    expected = (w * torch.outer(residual, x[0])).abs()
    scores = snip_scores(net, [(x, y)], loss_fn=loss)
    assert torch.allclose(scores["0.weight"], expected)
    assert expected[1, 1] == pytest.approx(3.0 * 6.25 * 2.0)


def autograd_snip(net: nn.Module, batches) -> dict[str, torch.Tensor]:
    """Plain autograd on a copy of the model: |w * dL/dw|, gradients averaged over batches."""
    ref = copy.deepcopy(net).train()
    ref.zero_grad()
    for x, y in batches:
        (F.cross_entropy(ref(x), y) / len(batches)).backward()
    return {n: (p * p.grad).abs() for n, p in prunable_parameters(ref).items()}


@pytest.mark.parametrize("num_batches", [1, 2])
def test_snip_scores_match_plain_autograd(num_batches):
    net = hand_net()
    batches = [hand_batch(i) for i in range(num_batches)]
    expected = autograd_snip(net, batches)
    got = snip_scores(net, batches)
    atol, rtol = 1e-7, 1e-5
    for name in expected:
        assert torch.allclose(got[name], expected[name], atol=atol, rtol=rtol), name
    tol = atol + rtol * float(flat(expected).detach().abs().max())
    for sparsity in [0.3, 0.7, 0.9]:
        k = round((1 - sparsity) * flat(expected).numel())
        masks = run_pruning(
            net, batches, PruningConfig("snip", sparsity, num_batches=num_batches)
        ).masks
        assert_keeps_top_k(masks, expected, k, tol)


@pytest.mark.parametrize("method", ["force", "iter_snip"])
def test_one_step_progressive_is_snip(method):
    net, batch = hand_net(), hand_batch()
    for sparsity in [0.5, 0.9]:
        snip = run_pruning(net, [batch], PruningConfig("snip", sparsity)).masks
        other = run_pruning(net, [batch], PruningConfig(method, sparsity, steps=1)).masks
        assert all(torch.equal(snip[n], other[n]) for n in snip)


# --- GraSP-It ---------------------------------------------------------------------------------


def test_grasp_it_linear_layer_closed_form():
    """One bias-free Linear, L = 0.5 ||Wx - y||^2: the score is ((Wx - y) x^T)^2, by hand."""
    net = nn.Sequential(nn.Linear(3, 2, bias=False))
    w = torch.tensor([[1.0, -2.0, 0.5], [0.25, 3.0, -1.0]])
    with torch.no_grad():
        net[0].weight.copy_(w)
    x, y = torch.tensor([[1.0, 2.0, -1.0]]), torch.tensor([[0.0, 1.0]])

    def loss(out, target):
        return 0.5 * ((out - target) ** 2).sum()

    # residual [-3.5, 6.25]; gradient rows -3.5 * x and 6.25 * x; squares:
    # [[12.25, 49, 12.25], [39.06, 156.25, 39.06]]: keep 3: 156.25, 49, then one of the tied
    # 39.06, the earlier position (1, 0)
    masks = compute_masks(net, [(x, y)], "grasp_it", 0.5, steps=1, loss_fn=loss)
    expected = torch.tensor([[False, True, False], [True, True, False]])
    assert torch.equal(masks["0.weight"], expected)


def autograd_grad(net: nn.Module, batch, masks=None) -> dict[str, torch.Tensor]:
    """dL/dw on a copy of the model whose prunable weights are theta0 * m, plain autograd."""
    ref = copy.deepcopy(net).train()
    prunable = prunable_parameters(ref)
    if masks is not None:
        with torch.no_grad():
            for n, p in prunable.items():
                p.mul_(masks[n])
    ref.zero_grad()
    F.cross_entropy(ref(batch[0]), batch[1]).backward()
    return {n: p.grad.clone() for n, p in prunable.items()}


def test_grasp_it_steps_match_autograd_and_never_resurrect():
    """Each step t keeps the top k_t of (dL/dw)^2 at theta0 * m_{t-1}, on step t's fresh batch,
    among the weights of m_{t-1}; checked step by step from the run's own m_{t-1}."""
    net, data = hand_net(), [hand_batch(i) for i in range(3)]
    total = sum(p.numel() for p in prunable_parameters(net).values())
    steps: list[dict[str, torch.Tensor]] = []
    config = PruningConfig("grasp_it", 0.8, steps=3)
    run_pruning(net, data, config, on_step=lambda e: steps.append(
        {n: m.clone() for n, m in e.masks.items()}))  # fmt: skip
    kept = kept_schedule(total, 0.2, 3)
    prev = None
    for t, mask in enumerate(steps):
        grads = autograd_grad(net, data[t], prev)
        expected = {n: g**2 if prev is None else torch.where(prev[n], g**2, -1.0)
                    for n, g in grads.items()}  # fmt: skip
        tol = 1e-6 * float(flat(expected).abs().max())
        assert_keeps_top_k(mask, expected, kept[t], tol)
        if prev is not None:
            assert all(bool((mask[n] <= prev[n]).all()) for n in mask)  # no weight returns
        prev = mask


def test_grasp_it_records_the_force_saliency_for_free():
    net, data = hand_net(), [hand_batch(i) for i in range(4)]
    res = run_pruning(net, data, PruningConfig("grasp_it", 0.7, steps=3), record=True)
    assert [r.recovered for r in res.steps] == [0, 0, 0]
    assert all(r.saliency is not None and r.saliency > 0 for r in res.steps)


# --- GRASP ------------------------------------------------------------------------------------


def func_grasp(net: nn.Module, batches, temperature: float) -> dict[str, torch.Tensor]:
    """-theta * Hg by forward-over-reverse (torch.func.jvp of torch.func.grad), no double backward.

    BatchNorm is switched to batch statistics without buffers (the same train-mode output), so
    that the transforms need not mutate running statistics.
    """
    ref = copy.deepcopy(net).train()
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.track_running_stats, m.running_mean, m.running_var = False, None, None
    names = list(prunable_parameters(ref))
    fixed = {n: p.detach() for n, p in ref.named_parameters() if n not in names}
    theta = tuple(p.detach() for n, p in ref.named_parameters() if n in names)

    def loss(ws, x, y):
        out = functional_call(ref, {**fixed, **dict(zip(names, ws, strict=True))}, (x,))
        return F.cross_entropy(out / temperature, y)

    def mean_grad(ws):
        grads = [torch.func.grad(loss)(ws, x, y) for x, y in batches]
        return tuple(sum(gs) / len(batches) for gs in zip(*grads, strict=True))

    g = mean_grad(theta)
    _, hg = torch.func.jvp(mean_grad, (theta,), (g,))
    return {n: -t * h for n, t, h in zip(names, theta, hg, strict=True)}


@pytest.mark.parametrize("temperature, num_batches", [(1.0, 1), (200.0, 1), (3.0, 2)])
def test_grasp_scores_match_forward_over_reverse(temperature, num_batches):
    net = hand_net()
    batches = [hand_batch(i) for i in range(num_batches)]
    expected = func_grasp(net, batches, temperature)
    got = grasp_scores(net, batches, temperature=temperature)
    scale = float(flat(expected).abs().max())
    assert scale > 0
    atol, rtol = 1e-5 * scale, 1e-4
    for name in expected:
        assert torch.allclose(got[name], expected[name], atol=atol, rtol=rtol), name
    # GRASP keeps the k SMALLEST scores: the top-k of the negated reference.
    for sparsity in [0.5, 0.8]:
        k = round((1 - sparsity) * flat(expected).numel())
        masks = run_pruning(
            net,
            batches,
            PruningConfig("grasp", sparsity, temperature=temperature, num_batches=num_batches),
        ).masks
        negated = {n: -s for n, s in expected.items()}
        assert_keeps_top_k(masks, negated, k, atol + rtol * scale)


# --- magnitude, random ------------------------------------------------------------------------


def test_magnitude_keeps_the_largest_weights():
    net = hand_net()
    expected = {n: p.detach().abs() for n, p in prunable_parameters(net).items()}
    assert all(torch.equal(magnitude_scores(net)[n], expected[n]) for n in expected)
    masks = run_pruning(net, None, PruningConfig("magnitude", 0.75)).masks
    kept = torch.cat([p.detach().abs().reshape(-1)[masks[n].reshape(-1)] for n, p in
                      prunable_parameters(net).items()])  # fmt: skip
    dropped = torch.cat([p.detach().abs().reshape(-1)[~masks[n].reshape(-1)] for n, p in
                         prunable_parameters(net).items()])  # fmt: skip
    assert kept.numel() == round(0.25 * (kept.numel() + dropped.numel()))
    assert kept.min() >= dropped.max()


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_magnitude_scores_a_model_of_another_dtype(dtype):
    net = hand_net().to(dtype)
    masks = run_pruning(net, None, PruningConfig("magnitude", 0.75)).masks
    as_float = copy.deepcopy(net).float()  # the same values where they fit a float32
    expected = run_pruning(as_float, None, PruningConfig("magnitude", 0.75)).masks
    assert all(torch.equal(masks[n], expected[n]) for n in expected)


def test_random_is_seeded_exact_and_uniform_across_layers():
    net = nn.Sequential(nn.Linear(100, 100), nn.Linear(100, 300))
    a = run_pruning(net, None, PruningConfig("random", 0.8, seed=1)).masks
    b = run_pruning(net, None, PruningConfig("random", 0.8, seed=1)).masks
    c = run_pruning(net, None, PruningConfig("random", 0.8, seed=2)).masks
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not all(torch.equal(a[n], c[n]) for n in a)
    counts = kept_counts(a)
    assert sum(k for k, _ in counts.values()) == 8000
    for kept, total in counts.values():  # ~binomial: within 5 standard deviations of 20%
        assert abs(kept / total - 0.2) < 5 * (0.2 * 0.8 / total) ** 0.5


# --- SynFlow ----------------------------------------------------------------------------------


def test_synflow_closed_form_on_a_linear_chain():
    """R = 1^T |W2| |W1| 1, so dR/dW1[i, j] = colsum(|W2|)[i] and dR/dW2[i, j] = rowsum(|W1|)[j]."""
    net = nn.Sequential(nn.Linear(3, 2, bias=False), nn.ReLU(), nn.Linear(2, 2, bias=False))
    w1 = torch.tensor([[1.0, -2.0, 0.5], [-0.25, 3.0, -1.0]])
    w2 = torch.tensor([[2.0, -1.0], [0.5, 4.0]])
    with torch.no_grad():
        net[0].weight.copy_(w1)
        net[2].weight.copy_(w2)
    scores = synflow_scores(net, (3,))
    expected1 = w1.abs() * w2.abs().sum(0)[:, None]
    expected2 = w2.abs() * w1.abs().sum(1)[None, :]
    assert scores["0.weight"].dtype == torch.float64
    assert torch.allclose(scores["0.weight"].float(), expected1)
    assert torch.allclose(scores["2.weight"].float(), expected2)
    # With w1[1, :] pruned, hidden unit 1 is dead: W2's column 1 scores 0.
    masks = {"0.weight": torch.tensor([[True] * 3, [False] * 3]), "2.weight": torch.ones(2, 2) > 0}
    pruned = synflow_scores(net, (3,), masks)
    assert torch.equal(pruned["2.weight"][:, 1], torch.zeros(2, dtype=torch.float64))
    assert torch.equal(pruned["0.weight"][1], torch.zeros(3, dtype=torch.float64))


def test_synflow_is_data_free_and_uses_eval_mode():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 2)
    )
    masks = run_pruning(
        net, None, PruningConfig("synflow", 0.9, steps=4, input_shape=(3, 6, 6))
    ).masks
    assert sum(k for k, _ in kept_counts(masks).values()) == round(0.1 * (108 + 128))
    data = [(torch.randn(2, 3, 6, 6), torch.tensor([0, 1]))]
    from_data = run_pruning(net, data, PruningConfig("synflow", 0.9, steps=4)).masks
    assert all(torch.equal(masks[n], from_data[n]) for n in masks)
    # one step = top-k of the closed-form-free score on the all-kept net
    one = run_pruning(
        net, None, PruningConfig("synflow", 0.9, steps=1, input_shape=(3, 6, 6))
    ).masks
    reference = global_topk_masks(synflow_scores(net, (3, 6, 6)), round(0.1 * 236))
    assert all(torch.equal(one[n], reference[n]) for n in one)
    # eval mode: BatchNorm normalises with its running statistics (in train mode, a batch of one
    # constant image would have zero variance and the conv scores would not see running_var)
    before = synflow_scores(net, (3, 6, 6))["0.weight"]
    with torch.no_grad():
        net[1].running_var.fill_(4.0)
    after = synflow_scores(net, (3, 6, 6))["0.weight"]
    assert torch.allclose(after, before / 2, rtol=1e-4)  # 1 / sqrt(var + eps): halved
    assert net.training  # the model's own mode is left alone
