"""Layer-wise random baselines (erk, er, uniform_plus, smart_ratio, smart_ratio_vgg): per-layer
counts against the formulas worked by hand on a tiny network, the exact global count, random
seeded positions, and the errors for budgets a formula cannot meet."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import conv_net
from torch import nn

from pruning_lightning import ConfigError, compute_masks
from pruning_lightning.pruning import PruningConfig, get_criterion, prunable_parameters
from pruning_lightning.pruning.layerwise import (
    apportion,
    erdos_renyi_densities,
    layer_counts,
    smart_ratio_targets,
)

LAYERWISE = ("erk", "er", "uniform_plus", "smart_ratio", "smart_ratio_vgg")


def tiny() -> nn.Sequential:
    """Prunable: conv1 [2, 1, 3, 3] (18), conv2 [4, 2, 3, 3] (72), linear [3, 4] (12); N = 102."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(2, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )


def wide() -> nn.Sequential:
    """Prunable: 108, 576, 4608 (conv), 320 (linear); N = 5612."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 16, 3), nn.ReLU(), nn.Conv2d(16, 32, 3),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )  # fmt: skip


def counts(method: str, sparsity: float, net: nn.Module | None = None, **kw) -> list[int]:
    masks = compute_masks(net or tiny(), None, method, sparsity, **kw)
    return [int(m.sum()) for m in masks.values()]


# --- the formulas, by hand on tiny() -------------------------------------------------------------
# Sparsity 0.5: k = round(0.5 * 102) = 51. Counts are the targets' floors plus the missing units
# to the largest fractional parts (apportion).


def test_erk_by_hand():
    # raw = sum(shape)/prod(shape): 9/18 = 1/2, 12/72 = 1/6, 7/12. rigl's budget: the ones left
    # by floor(0.5 n) zeros: 9 + 36 + 6 = 51; divisor 1/2*18 + 1/6*72 + 7/12*12 = 28; eps = 51/28;
    # 7/12 * 51/28 = 1.0625 > 1: the linear layer goes dense. Then rhs = 9 + 36 - 6 = 39, divisor
    # 21, eps = 13/7: densities 13/14, 13/42, 1 -> targets 16.71, 22.29, 12 -> 17, 22, 12.
    dens = erdos_renyi_densities([torch.Size(s) for s in ([2, 1, 3, 3], [4, 2, 3, 3], [3, 4])], 0.5)
    assert dens == pytest.approx([13 / 14, 13 / 42, 1.0])
    assert counts("erk", 0.5) == [17, 22, 12]


def test_er_by_hand():
    # raw = (n_in + n_out)/(n_in n_out) of the channels: 3/2, 6/8, 7/12; divisor 27 + 54 + 7 = 88;
    # eps = 51/88 (1.5 * 51/88 = 0.87 <= 1, nothing dense): targets 15.65, 31.30, 4.06 -> 16, 31, 4
    assert counts("er", 0.5) == [16, 31, 4]


def test_uniform_plus_by_hand():
    # first dense (18); the rest shares (51 - 18)/(72 + 12) = 33/84: 28.29, 4.71 >= ceil(12/5) = 3
    assert counts("uniform_plus", 0.5) == [18, 28, 5]
    # sparsity 0.7: k = round(30.6) = 31; 13/84 * 12 = 1.86 < 3, so the last keeps 3 (80% sparse)
    # and the middle 31 - 18 - 3 = 10
    assert counts("uniform_plus", 0.7) == [18, 10, 3]


def test_smart_ratio_by_hand():
    # sparsity 0.6: k = round(40.8) = 41; the linear layer keeps 0.3 * 12 = 3.6; the convs share
    # 37.4 in proportion to ((L-l+1)^2 + (L-l+1)) n_l with L = 3: 12 * 18 = 216 and 6 * 72 = 432:
    # 12.47, 24.93, 3.6 -> floors 12, 24, 3 and two units to the fractions .93 then .6
    assert counts("smart_ratio", 0.6) == [12, 25, 4]


def test_smart_ratio_vgg_by_hand_carries_the_excess():
    # VGG scaling divides by l^2: 12/1 and 6/4; 37.4 / (12 * 18 + 1.5 * 72) = 37.4/324; conv1's
    # ratio 1.385 > 1 is clipped and its excess 0.385 * 18 = 6.93 goes to conv2: 12.47 + 6.93 =
    # 19.4; targets 18, 19.4, 3.6 -> 18, 19, 4
    assert counts("smart_ratio_vgg", 0.6) == [18, 19, 4]


def test_smart_ratio_matches_their_int_arithmetic_away_from_rounding():
    """Their code truncates with int() where we apportion: on a larger net the targets agree
    with their formula to within one weight per layer."""
    shapes = [torch.Size(s) for s in ([16, 3, 3, 3], [32, 16, 3, 3], [64, 32, 3, 3], [10, 64])]
    targets = smart_ratio_targets(shapes, 0.05)
    n = [math.prod(s) for s in shapes]
    raw = [(4 - i) ** 2 + (4 - i) for i in range(3)]  # 20, 12, 6
    goal = round(0.05 * sum(n)) - 0.3 * n[3]
    scale = goal / sum(r * m for r, m in zip(raw, n[:3], strict=True))
    assert targets == pytest.approx([raw[i] * scale * n[i] for i in range(3)] + [0.3 * n[3]])


# --- invariants ------------------------------------------------------------------------------


def test_apportion_is_exact_and_deterministic():
    assert apportion([1.5, 1.5, 1.5], [3, 3, 3], 5) == [2, 2, 1]  # ties: the earlier layer
    assert apportion([2.9, 0.2], [2, 5], 3) == [2, 1]  # a full layer passes its unit on
    assert apportion([4.0, 4.0], [4, 4], 6) == [3, 3]  # an excess comes off the smallest fractions
    with pytest.raises(ValueError):
        apportion([1.0], [1], 2)


@pytest.mark.parametrize("method", LAYERWISE)
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.77, 0.9])
def test_exact_global_and_per_layer_counts(method, sparsity):
    net = wide()
    masks = compute_masks(net, None, method, sparsity)
    shapes = [p.shape for p in prunable_parameters(net).values()]
    expected = layer_counts(_targets(method), shapes, 1 - sparsity)
    assert [int(m.sum()) for m in masks.values()] == expected
    assert sum(expected) == round((1 - sparsity) * 5612)


def _targets(method: str):
    from pruning_lightning.pruning import layerwise

    return {
        "erk": layerwise.erk_targets,
        "er": layerwise.er_targets,
        "uniform_plus": layerwise.uniform_plus_targets,
        "smart_ratio": layerwise.smart_ratio_targets,
        "smart_ratio_vgg": layerwise.smart_ratio_vgg_targets,
    }[method]


@pytest.mark.parametrize("method", LAYERWISE)
def test_positions_are_seeded_random_and_the_model_untouched(method):
    net = tiny()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    a = compute_masks(net, None, method, 0.6, seed=3)
    b = compute_masks(net, None, method, 0.6, seed=3)
    c = compute_masks(net, None, method, 0.6, seed=4)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert [int(m.sum()) for m in a.values()] == [int(m.sum()) for m in c.values()]
    assert any(not torch.equal(a[n], c[n]) for n in a if 0 < int(a[n].sum()) < a[n].numel())
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)


def test_positions_ignore_the_weights():
    """Random positions: the mask depends on the shapes and the seed only, never on values."""
    a, b = tiny(), tiny()
    with torch.no_grad():
        for p in b.parameters():
            p.mul_(-3.0).add_(1.0)
    ma, mb = compute_masks(a, None, "erk", 0.6), compute_masks(b, None, "erk", 0.6)
    assert all(torch.equal(ma[n], mb[n]) for n in ma)


def test_each_layer_is_a_uniform_draw():
    """Over many seeds every position of a half-kept layer is kept about half the time."""
    net = tiny()
    hits = sum(compute_masks(net, None, "er", 0.5, seed=s)["2.weight"].float() for s in range(400))
    rate = hits / 400  # 31 of 72 kept per draw: 0.43
    assert float((rate - 31 / 72).abs().max()) < 0.12


@pytest.mark.parametrize("method", LAYERWISE)
def test_invert_is_refused_and_no_data_needed(method):
    with pytest.raises(ConfigError, match="needs a ranking"):
        PruningConfig(method, 0.5, ablation="invert")
    with pytest.raises(ConfigError, match="uses no data"):
        PruningConfig(method, 0.5, saliency_data="random_labels")
    assert not get_criterion(method).needs_data and not get_criterion(method).ranked


def test_impossible_budgets():
    with pytest.raises(ConfigError, match=r"uniform_plus keeps the first layer dense .* sparsity"):
        compute_masks(tiny(), None, "uniform_plus", 0.85)  # k = 15 < 18 + 3
    with pytest.raises(ConfigError, match="at least two prunable layers"):
        compute_masks(nn.Sequential(nn.Linear(4, 3)), None, "uniform_plus", 0.5)
    with pytest.raises(ConfigError, match="smart_ratio keeps 30% of every Linear layer"):
        compute_masks(nn.Sequential(nn.Linear(4, 3)), None, "smart_ratio", 0.5)


def test_erk_gives_small_layers_more_density_and_respects_exclude():
    net = conv_net(seed=2)
    masks = compute_masks(net, None, "erk", 0.9, exclude=["8.weight"])
    assert list(masks) == ["0.weight", "3.weight"]
    kept = {n: int(m.sum()) / m.numel() for n, m in masks.items()}
    assert kept["0.weight"] > kept["3.weight"]
    assert sum(int(m.sum()) for m in masks.values()) == round(0.1 * (162 + 324))
