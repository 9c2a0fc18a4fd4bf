"""PHEW (``phew``): hop frequencies against probabilities worked by hand on tiny networks, the
branch a walk takes at a residual block, the exact kept count, every kept weight on an
input-output path (VGG and ResNet), the seed, an untouched model, the refusals, and the command
line (the quickstart's ResNet-18, pruning-sweep, DDP on 2 CPU ranks)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import conv_net
from torch import nn

from pruning_lightning import ConfigError, compute_masks
from pruning_lightning.cli import main
from pruning_lightning.models import resnet18, resnet50, vgg16, vgg19
from pruning_lightning.models.resnet import BasicBlock
from pruning_lightning.pruning import effective_masks, get_criterion, prunable_parameters
from pruning_lightning.pruning.phew import draw_walks, new_weights, trace_network

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
SHORT = [
    "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
    "--trainer.limit_test_batches=1", "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]  # fmt: skip


def mlp() -> nn.Sequential:
    """Linear(2 -> 3), ReLU, Linear(3 -> 2) with hand-picked weights (negative ones too)."""
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 3.0], [-2.0, 1.0], [5.0, -4.0]]))
        net[2].weight.copy_(torch.tensor([[1.0, -1.0, 3.0], [3.0, 3.0, -1.0]]))
    return net


def frequencies(idx: torch.Tensor, size: int) -> torch.Tensor:
    return torch.bincount(idx[idx >= 0], minlength=size).double() / idx.shape[0]


# --- the walks, by hand -------------------------------------------------------------------------


def test_hop_frequencies_follow_the_weight_magnitudes():
    """40,000 walks on mlp(): a forward walk from input i takes hidden j with probability
    |W1[j, i]| / sum_j |W1[j, i]|, then output o with |W2[o, j]| / sum_o |W2[o, j]|; a backward
    walk from output o takes j with |W2[o, j]| / sum_j |W2[o, j]|, then input i with
    |W1[j, i]| / sum_i |W1[j, i]|. Forward walks are the even ones, from inputs 0, 1, 0, ...;
    backward walks the odd ones, from outputs 0, 1, 0, ..."""
    net = mlp()
    hops = trace_network(net, prunable_parameters(net), (2,))
    n = 40_000
    idx = draw_walks(hops, 0, n, torch.Generator().manual_seed(0))
    w1, w2 = net[0].weight.detach().abs().double(), net[2].weight.detach().abs().double()
    # flat mask: W1 at 0..5 ([j, i] -> 2j + i), W2 at 6..11 ([o, j] -> 6 + 3o + j)
    fwd, bwd = idx[0::2], idx[1::2]
    for start in (0, 1):
        walks = fwd[start::2]
        p_hidden = w1[:, start] / w1[:, start].sum()
        got = frequencies(walks[:, 0], 6).view(3, 2)[:, start]
        assert torch.allclose(got, p_hidden, atol=0.02)  # 4 sigma at 10,000 walks is 0.02
        p_out = (w2 / w2.sum(0)) @ p_hidden  # P(o) = sum_j P(j) P(o | j)
        assert torch.allclose(frequencies(walks[:, 1] - 6, 6).view(2, 3).sum(1), p_out, atol=0.02)
    for start in (0, 1):
        walks = bwd[start::2]
        p_hidden = w2[start] / w2[start].sum()
        assert torch.allclose(
            frequencies(walks[:, 1] - 6, 6).view(2, 3)[start], p_hidden, atol=0.02
        )
        p_in = p_hidden @ (w1 / w1.sum(1, keepdim=True))
        assert torch.allclose(frequencies(walks[:, 0], 6).view(3, 2).sum(0), p_in, atol=0.02)


def test_conv_taps_follow_magnitudes_and_stay_on_the_map():
    """One conv (1 -> 2 channels, 3x3, padding 1) then a pool and a Linear: a forward walk picks
    (channel, tap) jointly in proportion to |w| on a 5x5 map, where every tap meets the image;
    on a 1x1 map only the centre tap does, and the walks keep exactly the centre taps."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1, bias=False), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(2, 2),
    )  # fmt: skip
    prunable = prunable_parameters(net)
    idx = draw_walks(trace_network(net, prunable, (1, 5, 5)), 0, 40_000, torch.Generator())
    w = net[0].weight.detach().abs().double().reshape(-1)
    assert torch.allclose(frequencies(idx[0::2, 0], 18), w / w.sum(), atol=0.02)

    idx = draw_walks(trace_network(net, prunable, (1, 1, 1)), 0, 2_000, torch.Generator())
    taps = idx[:, 0] % 9
    assert bool((taps == 4).all())  # [kh, kw] = [1, 1]: the centre
    masks = compute_masks(net, None, "phew", 0.75, input_shape=(1, 1, 1))  # k = 6 of 22
    assert masks["0.weight"].sum() == 2 and masks["0.weight"][:, :, 1, 1].all()


def test_new_weights_counts_each_weight_once_in_walk_order():
    idx = torch.tensor([[0, 5], [0, 6], [-1, 7], [1, 5]])
    mask = torch.zeros(8, dtype=torch.bool)
    mask[7] = True
    assert new_weights(idx, mask).tolist() == [
        [True, True], [False, True], [False, False], [True, False],
    ]  # fmt: skip


class TinyResNet(nn.Module):
    """Stem conv (1 -> 4), one BasicBlock (4 -> 8, stride 2: a 1x1-conv projection shortcut),
    one BasicBlock (8 -> 8: identity), global pool, Linear(8, 2); on 1x8x8 inputs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.down, self.same = BasicBlock(4, 8, 2), BasicBlock(8, 8, 1)
        self.pool, self.head = nn.AdaptiveAvgPool2d(1), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.same(self.down(torch.relu(self.stem(x))))
        return self.head(self.pool(x).flatten(1))


def columns(net: nn.Module) -> dict[str, int]:
    walkable = trace_network(net, prunable_parameters(net), (1, 8, 8))
    return {hop.name: hop.column for hop in walkable.hops}


def test_a_walk_takes_the_projection_shortcut_on_a_fair_coin_and_never_the_identity():
    """At the projection block a walk takes the main branch (conv1, conv2) or the shortcut conv,
    never both and never neither, each with probability 1/2 (the official ``random.choice``),
    forward and backward; the identity block's shortcut is never taken (its convs always are)."""
    net = TinyResNet()
    col = columns(net)
    idx = draw_walks(trace_network(net, prunable_parameters(net), (1, 8, 8)), 0, 20_000,
                     torch.Generator().manual_seed(0))  # fmt: skip
    alive = idx[:, col["stem.weight"]] >= 0
    assert float(alive.float().mean()) > 0.99
    idx = idx[alive]
    main = idx[:, col["down.conv1.weight"]] >= 0
    assert torch.equal(main, idx[:, col["down.conv2.weight"]] >= 0)
    assert torch.equal(~main, idx[:, col["down.shortcut.0.weight"]] >= 0)
    for side in (idx[0::2], idx[1::2]):  # forward, backward (4 sigma at 10,000 walks: 0.02)
        assert abs(float((side[:, col["down.shortcut.0.weight"]] >= 0).float().mean()) - 0.5) < 0.02
    assert bool((idx[:, col["same.conv1.weight"]] >= 0).all())
    assert bool((idx[:, col["same.conv2.weight"]] >= 0).all())


@pytest.mark.parametrize(
    "zero", ["down.shortcut.0.weight", "down.conv1.weight", "down.conv2.weight"]
)
def test_a_branch_with_zero_weights_is_never_walked(zero):
    """With the shortcut's weights zero every walk takes the main branch, and the mask keeps no
    shortcut weight; with the main branch's first conv zero every forward walk takes the shortcut
    (backward walks reach that conv last, after the choice); with its last conv zero every
    backward walk does."""
    net = TinyResNet()
    with torch.no_grad():
        net.get_submodule(zero.removesuffix(".weight")).weight.zero_()
    col = columns(net)
    idx = draw_walks(trace_network(net, prunable_parameters(net), (1, 8, 8)), 0, 4_000,
                     torch.Generator().manual_seed(0))  # fmt: skip
    short = idx[:, col["down.shortcut.0.weight"]] >= 0
    walks = {"down.shortcut.0.weight": idx, "down.conv1.weight": idx[0::2],
             "down.conv2.weight": idx[1::2]}[zero]  # fmt: skip
    assert not bool((walks[:, col[zero]] >= 0).any())
    if zero != "down.shortcut.0.weight":
        assert bool((short[0::2] if zero == "down.conv1.weight" else short[1::2]).all())
    masks = compute_masks(net, None, "phew", 0.9, input_shape=(1, 8, 8))
    if zero == "down.shortcut.0.weight":
        assert not masks[zero].any()


def test_torchvision_blocks_with_downsample_and_a_max_pool_stem():
    """torchvision's ResNet-18 (``downsample`` shortcuts, ``None`` for the identity, a max-pool
    before the first block): exactly k, all effective."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10)
    masks = compute_masks(net, None, "phew", 0.999, input_shape=(3, 32, 32))
    total = sum(p.numel() for p in prunable_parameters(net).values())
    assert sum(int(m.sum()) for m in masks.values()) == round(0.001 * total)
    effective = effective_masks(net, masks, (3, 32, 32))
    assert all(torch.equal(effective[n], m) for n, m in masks.items())


# --- the mask -----------------------------------------------------------------------------------


def nets():
    return [
        ("conv_net", conv_net(), (3, 6, 6)),
        ("vgg16_digits", vgg16(10, 1, 8, 4), (1, 8, 8)),  # 1x1 maps in its last two stages
        ("vgg19_cifar", vgg19(10, 3, 32, 4), (3, 32, 32)),
        ("resnet18_digits", resnet18(10, 1, 8, 4), (1, 8, 8)),  # identity + projection blocks
        ("resnet50_small", resnet50(10, 3, 16, 4), (3, 16, 16)),  # Bottlenecks
    ]


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.99])
@pytest.mark.parametrize("which", range(5), ids=lambda i: nets()[i][0])
def test_exactly_k_kept_and_every_kept_weight_is_effective(which, sparsity):
    _, net, shape = nets()[which]
    total = sum(p.numel() for p in prunable_parameters(net).values())
    k = round((1 - sparsity) * total)
    if k < trace_network(net, prunable_parameters(net), shape).shortest:
        pytest.skip("fewer weights than one path")
    dense = {n: torch.ones_like(p, dtype=torch.bool) for n, p in prunable_parameters(net).items()}
    reachable = sum(int(m.sum()) for m in effective_masks(net, dense, shape).values())
    if k > reachable:  # vgg16 at 8x8 (1x1 maps: 8 of 9 taps on no path) at 50%
        with pytest.raises(ConfigError, match=f"{reachable} of the {total} prunable weights"):
            compute_masks(net, None, "phew", sparsity, input_shape=shape)
        return
    masks = compute_masks(net, None, "phew", sparsity, input_shape=shape)
    assert sum(int(m.sum()) for m in masks.values()) == k
    effective = effective_masks(net, masks, shape)
    assert all(torch.equal(effective[n], m) for n, m in masks.items())


def test_excluded_layers_are_crossed_but_not_counted():
    net = conv_net()
    masks = compute_masks(net, None, "phew", 0.9, input_shape=(3, 6, 6), exclude=["8.weight"])
    assert list(masks) == ["0.weight", "3.weight"]
    assert sum(int(m.sum()) for m in masks.values()) == round(0.1 * (162 + 324))
    effective = effective_masks(net, masks, (3, 6, 6))  # 8.weight counts as kept
    assert all(torch.equal(effective[n], m) for n, m in masks.items())


@pytest.mark.parametrize("build", [vgg16, resnet18])
def test_the_seed_fixes_the_mask_and_the_model_is_untouched(build):
    torch.manual_seed(0)
    net = build(10, 1, 8, 4)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    modes = [m.training for m in net.modules()]
    rng = torch.get_rng_state()
    a = compute_masks(net, None, "phew", 0.95, seed=3, input_shape=(1, 8, 8))
    b = compute_masks(net, None, "phew", 0.95, seed=3, input_shape=(1, 8, 8))
    c = compute_masks(net, None, "phew", 0.95, seed=4, input_shape=(1, 8, 8))
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    assert [m.training for m in net.modules()] == modes
    assert torch.equal(torch.get_rng_state(), rng)


def test_larger_weights_are_kept_more_often():
    """Over 30 seeds, the weights PHEW keeps are on average larger than the layer's average:
    the walks follow |w| (measured 1.32x on this net)."""
    net = conv_net()
    w = net[3].weight.detach().abs()
    kept = sum(
        compute_masks(net, None, "phew", 0.9, seed=s, input_shape=(3, 6, 6))["3.weight"].float()
        for s in range(30)
    )
    assert float((kept * w).sum() / kept.sum()) > 1.2 * float(w.mean())


# --- refusals -----------------------------------------------------------------------------------


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.body = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.body(x)
        return self.head(x.mean((2, 3)))


class GroupedBlock(nn.Module):
    """A residual block whose main branch holds a grouped conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(x) + self.shortcut(x)


class TwoRoutes(nn.Module):
    """A 'block' whose output also reads a second conv beside its main branch and shortcut."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.side = nn.Conv2d(4, 4, 1)
        self.shortcut = nn.Sequential(nn.Conv2d(4, 4, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(x) + self.shortcut(x) + self.side(x)


class UnusedShortcut(nn.Module):
    """A 'block' with a shortcut child that its forward never adds: nothing bypasses conv1."""

    def __init__(self, add: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.shortcut = nn.Identity()
        self.add = add

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(x) + self.shortcut(x) if self.add else self.conv1(x)


def blocked(*blocks: nn.Module) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(4, 4, 3, padding=1), *blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, 2),
    )  # fmt: skip


@pytest.mark.parametrize(
    "net, match",
    [
        (Residual(), "body.weight is not on every input-output path"),
        (nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.Linear(16, 2)), "grouped"),
        (blocked(GroupedBlock()), "1.conv1.weight is a grouped or depthwise conv"),
        (blocked(TwoRoutes()), "1 has a route other than its main branch and its shortcut"),
        (blocked(UnusedShortcut(True), UnusedShortcut(False), UnusedShortcut(True)),
         "the main branch of 2 is not bypassed by its shortcut"),
        (nn.Sequential(nn.Conv2d(4, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()),
         "last Linear"),
        (nn.Sequential(nn.Flatten(), nn.Linear(64, 4), nn.ReLU(), nn.Unflatten(1, (4, 1, 1)),
                       nn.Conv2d(4, 2, 1), nn.Flatten(), nn.Linear(2, 2)),
         "cannot follow Unflatten"),
    ],
    ids=[
        "residual", "grouped", "grouped_in_block", "two_routes", "not_bypassed", "conv_last",
        "unflatten",
    ],
)  # fmt: skip
def test_networks_it_cannot_walk_are_refused_in_one_line(net, match):
    with pytest.raises(ConfigError, match=match) as err:
        compute_masks(net, None, "phew", 0.5, input_shape=(4, 4, 4))
    assert "\n" not in str(err.value) and "phew walks chains" in str(err.value)


def test_budget_below_one_path_and_missing_input_shape():
    with pytest.raises(ConfigError, match="whole input-output paths"):
        compute_masks(conv_net(), None, "phew", 0.996, input_shape=(3, 6, 6))  # k = 2 < 3
    with pytest.raises(ConfigError, match="needs input_shape"):
        compute_masks(conv_net(), None, "phew", 0.9)


def test_record_says_data_free_unranked_layer_walk():
    phew = get_criterion("phew")
    assert not phew.needs_data and not phew.ranked and phew.layer_walk and not phew.progressive


# --- the command line ---------------------------------------------------------------------------


def record(root: Path) -> dict:
    (path,) = root.rglob("pruning.json")
    return json.loads(path.read_text())


def test_the_quickstart_resnet_runs_unchanged(tmp_path):
    """The acceptance command: the quickstart's ResNet-18 with only the method changed."""
    main([
        "fit", "--config", QUICKSTART, "--pruning.method=phew", *SHORT,
        "--trainer.accelerator=cpu", f"--trainer.default_root_dir={tmp_path}",
    ])  # fmt: skip
    got = record(tmp_path)
    assert got["method"] == "phew"
    assert got["global_sparsity"] == pytest.approx(0.9, abs=1e-5)
    assert got["effective_sparsity"] == got["global_sparsity"]


def test_pruning_sweep_runs_phew(tmp_path):
    out = tmp_path / "sweep"
    command = [
        sys.executable, "-m", "pruning_lightning.analysis.sweep", "--config", QUICKSTART,
        "--methods", "phew", "--sparsities", "0.9", "--seeds", "0", "--out", str(out),
        *(f"--set={a.removeprefix('--')}" for a in SHORT),
        "--set=pruning.log_figure=false",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    with (out / "results.csv").open(newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["method"] == "phew"
    assert float(row["global_sparsity"]) == pytest.approx(0.9, abs=1e-5)
    assert float(row["effective_sparsity"]) == float(row["global_sparsity"])


@pytest.mark.slow
def test_the_ranks_share_the_mask_under_ddp(tmp_path):
    """2 CPU ranks through the console script; the callback stops a run whose ranks' mask
    checksums differ, and the mask equals a single-process run's (it depends on the seed only)."""
    from test_ddp_cli import DDP, console

    ddp = tmp_path / "ddp"
    ddp.mkdir()
    console(
        "pruning-lightning", "fit", "--config", QUICKSTART, *DDP, *SHORT,
        "--pruning.method=phew", cwd=ddp,
    )  # fmt: skip
    got = record(ddp)
    assert got["method"] == "phew" and got["world_size"] == 2
    assert got["global_sparsity"] == pytest.approx(0.9, abs=1e-5)
    assert got["effective_sparsity"] == got["global_sparsity"]
    single = tmp_path / "single"
    main([
        "fit", "--config", QUICKSTART, *SHORT, "--pruning.method=phew",
        "--trainer.accelerator=cpu", f"--trainer.default_root_dir={single}",
    ])  # fmt: skip
    assert record(single)["mask_sha256"] == got["mask_sha256"]
