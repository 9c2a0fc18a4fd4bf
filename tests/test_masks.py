"""Prunable tensors, exact global top-k, mask bookkeeping, and the input-output path check."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pruning_lightning.errors import ConfigError
from pruning_lightning.pruning import (
    apply_masks,
    check_masks,
    collapsed_layers,
    global_topk_masks,
    has_input_output_path,
    kept_counts,
    prunable_parameters,
)
from pruning_lightning.pruning.masks import _SMALL, TopKSelector


def tiny_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Conv2d(3, 4, 1, bias=False),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 5),
    )


def reference_topk(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest, ties to the earliest position: a stable descending sort."""
    mask = torch.zeros(x.numel(), dtype=torch.bool)
    mask[torch.sort(x, descending=True, stable=True).indices[:k]] = True
    return mask


# --- prunable_parameters ----------------------------------------------------------------------


def test_prunable_parameters_are_conv_and_linear_weights_in_order():
    net = tiny_net()
    assert list(prunable_parameters(net)) == ["0.weight", "3.weight", "5.weight"]
    assert prunable_parameters(net)["0.weight"] is net[0].weight


def test_prunable_parameters_include_exclude():
    net = tiny_net()
    assert list(prunable_parameters(net, include=["0.*", "5.*"])) == ["0.weight", "5.weight"]
    assert list(prunable_parameters(net, exclude=["5.weight"])) == ["0.weight", "3.weight"]
    assert list(prunable_parameters(net, include=["*"], exclude=["0.*"])) == [
        "3.weight",
        "5.weight",
    ]


def test_shared_weight_is_listed_once():
    a = nn.Linear(4, 4, bias=False)
    net = nn.Sequential(a, nn.ReLU(), a)
    assert list(prunable_parameters(net)) == ["0.weight"]


@pytest.mark.parametrize(
    "model, kwargs",
    [
        (nn.Sequential(nn.BatchNorm2d(3), nn.ReLU()), {}),
        (tiny_net(), {"exclude": ["*"]}),
        (tiny_net(), {"include": ["nothing.*"]}),
    ],
)
def test_no_prunable_layer_is_a_config_error(model, kwargs):
    with pytest.raises(ConfigError, match="no prunable layer"):
        prunable_parameters(model, **kwargs)


# --- global top-k -----------------------------------------------------------------------------


def split_scores(flat: torch.Tensor, sizes: list[int]) -> dict[str, torch.Tensor]:
    return {f"t{i}": part.clone() for i, part in enumerate(torch.split(flat, sizes))}


@pytest.mark.parametrize("kind", ["continuous", "few_values", "all_equal", "mostly_zero"])
def test_global_topk_exact_count_and_ties(kind):
    gen = torch.Generator().manual_seed(3)
    for n in [1, 2, 7, 100, 1000, 3001]:
        if kind == "continuous":
            flat = torch.randn(n, generator=gen)
        elif kind == "few_values":
            flat = torch.randint(0, 3, (n,), generator=gen).float()
        elif kind == "all_equal":
            flat = torch.full((n,), 0.5)
        else:
            flat = torch.rand(n, generator=gen) * (torch.rand(n, generator=gen) < 0.2)
        sizes = [n // 3, n - n // 3 - n // 4, n // 4]
        for sparsity in [0.0, 0.1, 0.5, 0.9, 0.99, 0.999]:
            k = round((1 - sparsity) * n)
            masks = global_topk_masks(split_scores(flat, sizes), k)
            got = torch.cat([m.reshape(-1) for m in masks.values()])
            assert got.dtype == torch.bool
            assert int(got.sum()) == k
            assert torch.equal(got, reference_topk(flat, k))


def test_all_equal_scores_keep_the_earliest():
    masks = global_topk_masks({"a": torch.ones(2, 3), "b": torch.ones(4)}, 7)
    assert masks["a"].all() and masks["b"].tolist() == [True, False, False, False]


def test_global_topk_keeps_shapes_and_k_bounds():
    scores = {"a": torch.rand(3, 2, 2, 2), "b": torch.rand(5, 4)}
    masks = global_topk_masks(scores, 0)
    assert {n: m.shape for n, m in masks.items()} == {n: s.shape for n, s in scores.items()}
    assert not any(m.any() for m in masks.values())
    assert all(m.all() for m in global_topk_masks(scores, 44).values())
    for bad in (-1, 45, 2.0):
        with pytest.raises(ConfigError, match="k must be an integer"):
            global_topk_masks(scores, bad)


def test_global_topk_rejects_nan():
    with pytest.raises(ConfigError, match="non-finite"):
        global_topk_masks({"a": torch.tensor([1.0, float("nan"), 2.0])}, 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_selection_with_ties_at_the_threshold(dtype):
    """The sampled-bracket path (N > _SMALL), with a block of ties straddling the threshold."""
    n = 3 * _SMALL + 17
    gen = torch.Generator().manual_seed(0)
    flat = torch.rand(n, generator=gen, dtype=dtype)
    flat[torch.randperm(n, generator=gen)[: n // 10]] = 0.5  # 10% ties at the median
    for k in [1, 37, n // 100, n // 2, n // 2 + 1000, n - 5, n - 1]:
        selector = TopKSelector(n, torch.device("cpu"), dtype)
        selector.scores.copy_(flat)
        out = torch.empty(n, dtype=torch.bool)
        selector.select(k, out)
        assert torch.equal(out, reference_topk(flat, k)), k


@pytest.mark.parametrize("where", ["above", "below", "inside"])
def test_selection_is_exact_when_the_bracket_misses(where):
    n = 2 * _SMALL
    flat = torch.randn(n, generator=torch.Generator().manual_seed(1))
    k = n // 3
    kth = torch.sort(flat, descending=True).values[k - 1]
    lo, hi = {
        "above": (kth + 0.5, kth + 1.0),  # the k-th largest is below the bracket
        "below": (kth - 1.0, kth - 0.5),  # ... above it
        "inside": (kth - 0.1, kth + 0.1),
    }[where]
    selector = TopKSelector(n, torch.device("cpu"))
    selector.scores.copy_(flat)
    out = torch.empty(n, dtype=torch.bool)
    selector._select_in(k, out, lo, hi)
    assert torch.equal(out, reference_topk(flat, k))


@pytest.mark.parametrize("n", [1000, 3 * _SMALL + 5])
def test_selection_restricted_to_allowed_positions_matches_reference(n):
    gen = torch.Generator().manual_seed(2)
    flat = torch.randint(0, 50, (n,), generator=gen).float()  # many ties
    allowed = torch.rand(n, generator=gen) < 0.3
    n_allowed = int(allowed.sum())
    for k in [0, 1, n_allowed // 7, n_allowed // 2, n_allowed - 1, n_allowed]:
        selector = TopKSelector(n, torch.device("cpu"))
        selector.scores.copy_(flat)
        out = torch.empty(n, dtype=torch.bool)
        selector.select(k, out, allowed=allowed)
        expected = reference_topk(torch.where(allowed, flat, -1.0), k)
        assert torch.equal(out, expected), k
    with pytest.raises(ValueError, match="cannot keep"):
        selector.select(n_allowed + 1, out, allowed=allowed)


def test_selection_restricted_to_allowed_positions():
    flat = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    allowed = torch.tensor([False, True, False, True, True])
    selector = TopKSelector(5, torch.device("cpu"))
    selector.scores.copy_(flat)
    out = torch.empty(5, dtype=torch.bool)
    selector.select(2, out, allowed=allowed)
    assert out.tolist() == [False, True, False, True, False]


# --- bookkeeping ------------------------------------------------------------------------------


def test_apply_kept_counts_collapsed():
    net = tiny_net()
    prunable = prunable_parameters(net)
    masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in prunable.items()}
    masks["3.weight"][:] = False
    masks["0.weight"][0] = False
    before = net[0].weight.detach().clone()
    apply_masks(net, masks)
    assert torch.equal(net[0].weight[0], torch.zeros_like(before[0]))
    assert torch.equal(net[0].weight[1:], before[1:])
    assert not net[3].weight.any()
    assert kept_counts(masks) == {"0.weight": (36, 54), "3.weight": (0, 12), "5.weight": (320, 320)}
    assert collapsed_layers(masks) == ["3.weight"]
    with pytest.raises(ConfigError, match="not a parameter"):
        apply_masks(net, {"9.weight": torch.ones(1, dtype=torch.bool)})


def test_check_masks():
    net = tiny_net()
    good = {n: torch.ones_like(p, dtype=torch.bool) for n, p in prunable_parameters(net).items()}
    check_masks(net, good)
    missing = dict(good)
    del missing["3.weight"]
    with pytest.raises(ConfigError, match=r"missing masks for 3\.weight"):
        check_masks(net, missing)
    with pytest.raises(ConfigError, match=r"not prunable here: 0\.bias"):
        check_masks(net, {**good, "0.bias": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ConfigError, match="has shape"):
        check_masks(net, {**good, "5.weight": torch.ones(5, 3, dtype=torch.bool)})
    with pytest.raises(ConfigError, match="must be torch.bool"):
        check_masks(net, {**good, "5.weight": torch.ones(5, 64)})
    with pytest.raises(ConfigError, match="dict of parameter name"):
        check_masks(net, [good])
    with pytest.raises(ConfigError, match=r"missing masks for 0\.weight"):
        check_masks(net, {"3.weight": good["3.weight"]}, exclude=["5.*"])
    check_masks(net, {"3.weight": good["3.weight"]}, include=["3.*"])


# --- input-output path ------------------------------------------------------------------------


class Residual(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv_a = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.conv_b = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return torch.relu(x + self.conv_b(torch.relu(self.bn(self.conv_a(x)))))


def residual_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        Residual(4),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )


def full_masks(net: nn.Module) -> dict[str, torch.Tensor]:
    return {n: torch.ones_like(p, dtype=torch.bool) for n, p in prunable_parameters(net).items()}


def test_residual_branch_pruned_is_still_connected():
    net = residual_net()
    with torch.no_grad():  # weights chosen so a plain forward would cancel to exactly zero
        for p in net.parameters():
            p.fill_(-1.0)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    masks = full_masks(net)
    masks["3.conv_a.weight"][:] = False
    assert collapsed_layers(masks) == ["3.conv_a.weight"]
    assert has_input_output_path(net, masks, (3, 8, 8))
    masks["6.weight"][:] = False
    assert not has_input_output_path(net, masks, (3, 8, 8))
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    assert not any(m._forward_hooks for m in net.modules())
    assert net.training


def test_chain_with_a_pruned_layer_is_disconnected():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3), nn.Flatten())
    masks = full_masks(net)
    assert has_input_output_path(net, masks, (1, 6, 6))
    masks["2.weight"][:] = False
    assert not has_input_output_path(net, masks, (1, 6, 6))


def test_partly_pruned_layers_without_an_aligned_path_are_disconnected():
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    first = torch.tensor([[True, False], [False, False]])  # input 0 -> hidden 0 only
    for hidden, connected in [(1, False), (0, True)]:
        second = torch.zeros(2, 2, dtype=torch.bool)
        second[1, hidden] = True  # hidden -> output 1
        masks = {"0.weight": first, "2.weight": second}
        assert collapsed_layers(masks) == []
        assert has_input_output_path(net, masks, (2,)) is connected
    with pytest.raises(ConfigError, match="has shape"):
        has_input_output_path(net, {"0.weight": torch.ones(3, 2, dtype=torch.bool)}, (2,))
    with pytest.raises(ConfigError, match="not prunable here: 9.weight"):
        has_input_output_path(net, {"9.weight": torch.ones(2, 2, dtype=torch.bool)}, (2,))
