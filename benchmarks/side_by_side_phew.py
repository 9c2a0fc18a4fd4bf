"""Side by side with the authors' PHEW code (ShreyasMalakarjunPatil/PHEW, ``Prune/phew_utils.py``)
on the same tiny network and the same theta0.

Point it at the fetched repository (a git directory or a checkout; nothing is vendored):

    python benchmarks/side_by_side_phew.py --phew /path/to/PHEW [--seeds 20] [--vgg] [--resnet]

Their ``phew_masks`` is imported and called as their ``Experiments/PHEW.py`` calls it
(``generate_probability`` on the network, zero masks from ``generate_masks``, then
``phew_masks(net, prune_perc, prob, reverse_prob, kernel_prob, weight_masks, bias_masks)``), with
``random``, ``numpy`` and ``torch`` seeded with the seed. Ours: ``compute_masks(net, None, "phew",
sparsity, seed=seed, input_shape=...)``.

Both draw their walks at random from different generators (theirs: Python's ``random`` and
``numpy.random.choice``, one walk at a time; ours: torch's ``multinomial``, thousands at once), so
two masks of one seed agree no better than two masks of different seeds; the comparison is of
distributions over seeds: per-layer kept counts, and the per-weight keep frequency (Pearson
correlation of theirs with ours, against that of ours with ours over disjoint seeds, the noise
floor). The network has 3x3 convs only (their walk skips any 1x1 conv as a ResNet shortcut) and
maps large enough that every kernel tap of every walk meets the image, where our position-aware
draw is their draw exactly. ``--vgg`` also counts how many of their kept weights lie on no
input-output path on the reduced protocol's VGG-19 (width 16, CIFAR 32x32: 2x2 maps in its last
stage), where ours keep none such by construction. ``--resnet`` compares the per-layer counts on
a tiny ResNet of the project's BasicBlocks (one identity block, one with a 1x1-conv projection
shortcut), against their code as it is and against their code with the forward walk's block
look-ahead moved from ``k + 3`` to ``k + 2`` (their index fits a Bottleneck's shortcut, three
layers after its first conv; a BasicBlock's is two after), which is our rule.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import random
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from side_by_side_layerwise import checkout  # noqa: E402

from pruning_lightning import compute_masks  # noqa: E402
from pruning_lightning.models import vgg19  # noqa: E402
from pruning_lightning.models.resnet import BasicBlock  # noqa: E402
from pruning_lightning.pruning import effective_masks, prunable_parameters  # noqa: E402

INPUT_SHAPE = (3, 16, 16)


def tiny_net(seed: int = 0) -> nn.Sequential:
    """A VGG-like chain: three 3x3 convs with BatchNorm, a max-pool, global pool, one Linear."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )  # fmt: skip


class _NumpyOne:
    """numpy for their module, with ``random.choice(..., 1, ...)`` returning its one draw as a
    0-d array: NumPy 2 refuses their ``int()`` of a 1-element array. The same numbers are drawn."""

    def __init__(self) -> None:
        self.random = self

    def __getattr__(self, name: str):
        return getattr(np.random if name in ("seed",) else np, name)

    def choice(self, *args, **kwargs):
        return np.random.choice(*args, **kwargs).reshape(())


def phew_utils(repo: Path):
    """Their ``Prune/phew_utils.py``, imported from the checkout (numpy shimmed: _NumpyOne)."""
    sys.path.insert(0, str(repo))
    import Prune.phew_utils as module  # noqa: PLC0415

    module.np = _NumpyOne()
    return module


#: Their forward walk's block look-ahead (``Prune/phew_utils.py``, ``phew_masks``), and the same
#: two layers ahead instead of three: the projection shortcut of a BasicBlock.
LOOKAHEAD = (
    """                    if k + 3 < len(weight_masks) and len(weight_masks[k+3].shape) == 4:
                        if weight_masks[k+3].shape[2] == 1:
                            k = k + random.choice([0,3])""",
    """                    if k + 2 < len(weight_masks) and len(weight_masks[k+2].shape) == 4:
                        if weight_masks[k+2].shape[2] == 1:
                            k = k + random.choice([0,2])""",
)


def phew_utils_basic(repo: Path):
    """Their ``Prune/phew_utils.py`` with the look-ahead of LOOKAHEAD moved to ``k + 2``."""
    source = (repo / "Prune" / "phew_utils.py").read_text()
    assert source.count(LOOKAHEAD[0]) == 1, "their phew_masks changed: update LOOKAHEAD"
    module = types.ModuleType("phew_utils_basic")
    sys.path.insert(0, str(repo))
    exec(compile(source.replace(*LOOKAHEAD), "phew_utils_basic.py", "exec"), module.__dict__)
    module.np = _NumpyOne()
    return module


class TinyResNet(nn.Module):
    """Stem 3x3 conv (3 -> 8), a BasicBlock 8 -> 8 (identity shortcut), a BasicBlock 8 -> 16 with
    stride 2 (1x1-conv projection shortcut), global pool, Linear(16, 10)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.block1, self.block2 = BasicBlock(8, 8, 1), BasicBlock(8, 16, 2)
        self.pool, self.linear = nn.AdaptiveAvgPool2d(1), nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(torch.relu(self.bn1(self.conv1(x)))))
        return self.linear(self.pool(x).flatten(1))


def compare_resnet(repo: Path, utils, sparsity: float, seeds: int) -> dict[str, float]:
    """Per-layer kept counts on TinyResNet: theirs, theirs with the BasicBlock look-ahead, ours;
    and the share of each one's kept weights that lie on an input-output path; returns the
    largest per-layer relative difference of ours from theirs k+2 and the shares on a path."""
    net = TinyResNet()
    fixed = phew_utils_basic(repo)
    names = list(prunable_parameters(net))
    runs = {
        "theirs": [theirs(utils, net, sparsity, s) for s in range(seeds)],
        "theirs k+2": [theirs(fixed, net, sparsity, s) for s in range(seeds)],
        "ours": [ours(net, sparsity, s) for s in range(seeds)],
    }
    total = sum(m.numel() for m in runs["ours"][0].values())
    print(f"\nTinyResNet at {sparsity}: N = {total}, k = {round((1 - sparsity) * total)}; "
          f"{seeds} seeds each")  # fmt: skip
    print(f"{'layer':<26}{'size':>6}" + "".join(f"{r:>13}" for r in runs))
    for n in names:
        means = [np.mean([float(m[n].sum()) for m in masks]) for masks in runs.values()]
        print(f"{n:<26}{runs['ours'][0][n].numel():>6}" + "".join(f"{v:>13.1f}" for v in means))
    got = {}
    for label, masks in runs.items():
        eff = np.mean([
            float(flat(effective_masks(net, m, INPUT_SHAPE)).sum() / flat(m).sum())
            for m in masks
        ])  # fmt: skip
        kept = [int(flat(m).sum()) for m in masks]
        print(f"{label}: kept {min(kept)}..{max(kept)}, on an input-output path {eff:.4f}")
        got[f"effective {label}"] = float(eff)
    layers = {r: np.array([[float(m[n].sum()) for n in names] for m in ms]).mean(0)
              for r, ms in runs.items()}  # fmt: skip
    diff = np.abs(layers["theirs k+2"] - layers["ours"]) / layers["ours"]
    got["layer_rel_diff"] = float(diff.max())
    return got


def theirs(utils, net: nn.Module, sparsity: float, seed: int) -> dict[str, torch.Tensor]:
    """Their mask of ``net`` (names as ours: their list follows ``net.parameters()`` order)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    with contextlib.redirect_stdout(io.StringIO()):
        prob, reverse_prob, kernel_prob = utils.generate_probability(net, verbose=False)
        zero = [p.detach().clone().zero_() for p in net.parameters()]
        weight_masks = [z.abs() > 0 for z in zero if z.dim() != 1]
        weight_masks = [m.float() for m in weight_masks]
        bias_masks = [torch.zeros(len(m)) for m in weight_masks]
        weight_masks, _ = utils.phew_masks(
            net, 100 * sparsity, prob, reverse_prob, kernel_prob, weight_masks, bias_masks,
            verbose=False,
        )  # fmt: skip
    names = list(prunable_parameters(net))
    return {n: m.bool() for n, m in zip(names, weight_masks, strict=True)}


def ours(net: nn.Module, sparsity: float, seed: int, shape=INPUT_SHAPE) -> dict[str, torch.Tensor]:
    return compute_masks(net, None, "phew", sparsity, seed=seed, input_shape=shape)


def flat(masks: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([m.reshape(-1) for m in masks.values()])


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum() / (a | b).sum())


def compare(utils, sparsity: float, seeds: int) -> dict[str, float]:
    """Print their and our per-layer counts, IoUs and keep-frequency correlations; return them."""
    net = tiny_net()
    names = list(prunable_parameters(net))
    theirs_ = [theirs(utils, net, sparsity, s) for s in range(seeds)]
    ours_ = [ours(net, sparsity, s) for s in range(seeds)]
    ours_b = [ours(net, sparsity, s) for s in range(seeds, 2 * seeds)]
    total = sum(m.numel() for m in ours_[0].values())
    k = round((1 - sparsity) * total)
    print(f"\nsparsity {sparsity}: N = {total}, k = {k}; {seeds} seeds each")
    print(f"{'layer':<12}{'size':>7}{'theirs (mean)':>16}{'ours (mean)':>14}")
    for n in names:
        t = np.mean([float(m[n].sum()) for m in theirs_])
        o = np.mean([float(m[n].sum()) for m in ours_])
        print(f"{n:<12}{ours_[0][n].numel():>7}{t:>16.1f}{o:>14.1f}")
    kept_t = [int(flat(m).sum()) for m in theirs_]
    print(f"kept: theirs {min(kept_t)}..{max(kept_t)} (their while-loop overshoots k), ours {k}")
    same = np.mean([iou(flat(a), flat(b)) for a, b in zip(theirs_, ours_, strict=True)])
    own = np.mean([iou(flat(a), flat(b)) for a, b in zip(ours_, ours_b, strict=True)])
    their_own = np.mean(
        [iou(flat(a), flat(b)) for a, b in zip(theirs_[:-1], theirs_[1:], strict=True)]
    )
    print(f"mask IoU, same seed, theirs vs ours: {same:.3f}")
    print(f"mask IoU, different seeds: ours vs ours {own:.3f}, theirs vs theirs {their_own:.3f}")
    freq_t = torch.stack([flat(m) for m in theirs_]).double().mean(0)
    freq_o = torch.stack([flat(m) for m in ours_]).double().mean(0)
    freq_b = torch.stack([flat(m) for m in ours_b]).double().mean(0)
    corr = float(torch.corrcoef(torch.stack([freq_t, freq_o]))[0, 1])
    floor = float(torch.corrcoef(torch.stack([freq_o, freq_b]))[0, 1])
    print(f"keep-frequency correlation: theirs vs ours {corr:.3f}, ours vs ours {floor:.3f}")
    shape = INPUT_SHAPE
    eff = np.mean([
        float(flat(effective_masks(net, m, shape)).sum() / flat(m).sum()) for m in theirs_
    ])  # fmt: skip
    print(f"their kept weights on an input-output path (at {shape}): {eff:.4f}")
    layers_t = np.array([[float(m[n].sum()) for n in names] for m in theirs_]).mean(0)
    layers_o = np.array([[float(m[n].sum()) for n in names] for m in ours_]).mean(0)
    return {
        "iou_same_seed": same,
        "iou_ours": own,
        "corr": corr,
        "corr_floor": floor,
        "layer_rel_diff": float(np.max(np.abs(layers_t - layers_o) / layers_o)),
        "their_effective": eff,
    }


def compare_vgg(utils, sparsity: float) -> None:
    """Their mask on the reduced protocol's VGG-19 (width 16, CIFAR): how much is on a path."""
    net = vgg19(10, 3, 32, 16)
    start = time.perf_counter()
    mask = theirs(utils, net, sparsity, 0)
    took = time.perf_counter() - start
    start = time.perf_counter()
    mine = ours(net, sparsity, 0, (3, 32, 32))
    took_ours = time.perf_counter() - start
    kept = int(flat(mask).sum())
    eff = int(flat(effective_masks(net, mask, (3, 32, 32))).sum())
    eff_ours = int(flat(effective_masks(net, mine, (3, 32, 32))).sum())
    print(
        f"\nVGG-19 w16 at {sparsity}: theirs keeps {kept} ({took:.0f} s), {eff} on a path "
        f"({eff / kept:.4f}); ours keeps {int(flat(mine).sum())} ({took_ours:.1f} s), "
        f"{eff_ours} on a path"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phew", type=Path, required=True, help="ShreyasMalakarjunPatil/PHEW")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.99])
    parser.add_argument("--vgg", action="store_true", help="also their mask on VGG-19 w16")
    parser.add_argument("--resnet", action="store_true", help="also a tiny ResNet, per layer")
    args = parser.parse_args(argv)
    repo = checkout(args.phew)
    utils = phew_utils(repo)
    torch.set_num_threads(1)
    if args.resnet:
        for sparsity in args.sparsities:
            compare_resnet(repo, utils, sparsity, args.seeds)
        return
    for sparsity in args.sparsities:
        compare(utils, sparsity, args.seeds)
    if args.vgg:
        for sparsity in args.sparsities:
            compare_vgg(utils, sparsity)


if __name__ == "__main__":
    main()
