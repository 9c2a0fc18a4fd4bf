"""ProsPr and NTK-SAP side by side with the authors' code, on the same network, weights and data.

The official repositories are read from where they were fetched (a git directory without a work
tree, such as the mirror the project's tools make, or a checkout); nothing of theirs is copied
into the project. Their code is exported to a temporary folder and imported from there.

ProsPr (mil-ad/prospr, ``prospr.prune(..., return_scores=True)``): the official scores and
:func:`pruning_lightning.pruning.prospr.prospr_scores` on one meta batch, the official command
line's settings (K = 3, lr 0.1, momentum 0, same batch, full and first-order meta-gradients).

NTK-SAP (YiteWang/NTK-SAP, ``Pruners.pruners.NTKSAP`` through ``prune.prune_loop``): the official
pruner runs on a copy of the project's network whose Conv2d/Linear modules are turned into the
official masked layers (the same weights and forward), with the official ``_initialize_weights``
of its CIFAR ResNets. Both draw from the global RNG in the same order (per batch: the init, the
noise, the perturbations), so with the official run seeded with the project's draw seed the draws
align exactly: first the scores of one step are compared, then the masks of the whole 20-step
run. With ``--time`` both run again on a CIFAR ResNet-50 for wall time, in this process.

    python benchmarks/side_by_side_prospr_ntksap.py \\
        --prospr /work/.mirror/mil-ad+prospr/repo --ntksap /work/.mirror/YiteWang+NTK-SAP/repo
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pruning_lightning.models import build_backbone
from pruning_lightning.pruning import (
    compute_masks,
    global_topk_masks,
    kept_schedule,
    prunable_parameters,
)
from pruning_lightning.pruning.ablations import mask_iou
from pruning_lightning.pruning.config import PruningConfig
from pruning_lightning.pruning.criteria import ScoreContext
from pruning_lightning.pruning.ntk_sap import DRAW_SEED_OFFSET, noise_batch_sizes, ntk_sap_score
from pruning_lightning.pruning.prospr import prospr_scores


def export(repo: Path, into: Path) -> Path:
    """The repository's files: ``repo`` itself when it is a checkout, else ``git archive HEAD``."""
    if (repo / ".git").exists() or not (repo / "HEAD").exists():
        return repo
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", f"--git-dir={repo}", "archive", "HEAD"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def correlation(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    x = torch.cat([a[n].reshape(-1).double() for n in a])
    y = torch.cat([b[n].reshape(-1).double().to(x.device) for n in a])
    return float(torch.corrcoef(torch.stack([x, y]))[0, 1])


def rank_correlation(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    def ranks(t: torch.Tensor) -> torch.Tensor:
        r = torch.empty_like(t)
        r[t.argsort()] = torch.arange(t.numel(), dtype=t.dtype)
        return r

    x = ranks(torch.cat([a[n].reshape(-1).double() for n in a]))
    y = ranks(torch.cat([b[n].reshape(-1).double() for n in a]))
    return float(torch.corrcoef(torch.stack([x, y]))[0, 1])


def topk(scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    total = sum(s.numel() for s in scores.values())
    return global_topk_masks(scores, round((1 - sparsity) * total))


def max_count_gap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> int:
    return max(abs(int(a[n].sum()) - int(b[n].sum())) for n in a)


def quiet():
    return contextlib.redirect_stdout(io.StringIO())


# --- ProsPr -----------------------------------------------------------------------------------


def official_prospr(module, net, batch, first_order: bool) -> dict[str, torch.Tensor]:
    filter_fn = module.utils.pruning_filter_factory(10, structured=False)
    with quiet():
        scores = module.prune(
            net, 0.9, [batch], filter_fn, num_steps=3, inner_lr=0.1, inner_momentum=0.0,
            method="first_order" if first_order else "full", structured=False,
            new_data_in_inner=False, return_scores=True,
        )  # fmt: skip
    return dict(zip(prunable_parameters(net), scores, strict=True))


def compare_prospr(prospr_root: Path, args: argparse.Namespace) -> None:
    sys.path.insert(0, str(prospr_root))
    import prospr.prospr as official  # noqa: PLC0415 - from the fetched repository

    torch.manual_seed(args.seed)
    net = build_backbone(args.arch, 10, image_size=args.image_size, width=args.width)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    y = torch.randint(0, 10, (args.batch_size,))
    print(f"ProsPr on {args.arch} (width {args.width}), one meta batch of {args.batch_size}:")
    for first_order in (False, True):
        theirs = official_prospr(official, net, (x, y), first_order)
        ours = prospr_scores(net, [(x, y)], first_order=first_order)
        rel = max(float((ours[n] - theirs[n]).abs().max()) for n in ours) / max(
            float(t.abs().max()) for t in theirs.values()
        )
        mode = "first-order" if first_order else "full"
        line = (
            f"  {mode:<11} pearson {correlation(ours, theirs):.6f}"
            f"  spearman {rank_correlation(ours, theirs):.6f}  max |diff| / max {rel:.2e}"
        )
        for s in args.sparsities:
            line += f"  IoU@{s:g} {mask_iou(topk(ours, s), topk(theirs, s)):.4f}"
        print(line)
    sys.path.remove(str(prospr_root))


# --- NTK-SAP ----------------------------------------------------------------------------------


def official_network(net: nn.Module, layers, init) -> nn.Module:
    """A copy of ``net`` whose Conv2d/Linear are the official masked layers (weights kept), with
    the official init as its ``_initialize_weights``."""
    twin = copy.deepcopy(net)
    for module in twin.modules():
        kind = {nn.Conv2d: layers.Conv2d, nn.Linear: layers.Linear}.get(type(module))
        if kind is None:
            continue
        module.__class__ = kind
        module.register_buffer("weight_mask", torch.ones_like(module.weight))
        if module.bias is not None:
            module.register_buffer("bias_mask", torch.ones_like(module.bias))
    twin._initialize_weights = types.MethodType(init, twin)
    return twin


def official_ntksap(root: Path):
    sys.path.insert(0, str(root))
    from Layers import layers  # noqa: PLC0415 - from the fetched repository
    from Models import lottery_resnet  # noqa: PLC0415
    from prune import prune_loop  # noqa: PLC0415
    from Pruners.pruners import NTKSAP  # noqa: PLC0415
    from Utils import generator  # noqa: PLC0415

    return layers, lottery_resnet.ResNet._initialize_weights, NTKSAP, prune_loop, generator


def official_ntk_sap_masks(net, official, shape, density, steps, rounds, seed, exact=False):
    """The official pruner's masks and last scores; ``exact``: its selection replaced by the
    project's (exactly round(d_t N) kept among the still-kept weights, ties by position)."""
    layers, init, pruner_class, prune_loop, generator = official
    twin = official_network(net, layers, init)
    pruner = pruner_class(generator.masked_parameters(twin), ntksap_epsilon=0.01, ntksap_R=rounds)
    if exact:
        total = sum(m.numel() for m, _ in pruner.masked_parameters)
        counts = iter(kept_schedule(total, density, steps))

        def select(sparsity: float, scope: str) -> None:
            scores = {
                id(m): torch.where(m.bool(), pruner.scores[id(p)], -1.0)
                for m, p in pruner.masked_parameters
            }
            keep = global_topk_masks(scores, next(counts))
            for m, _ in pruner.masked_parameters:
                m.copy_(keep[id(m)])

        pruner.mask = select
    loader = [(torch.zeros(size, *shape), None) for size in noise_batch_sizes(10)]
    torch.manual_seed(seed + DRAW_SEED_OFFSET)
    with quiet(), contextlib.redirect_stderr(io.StringIO()):
        prune_loop(
            twin, nn.CrossEntropyLoss(), pruner, loader, torch.device("cpu"), density,
            "exponential", "global", steps, train_mode=True,
        )  # fmt: skip
    names = list(prunable_parameters(net))
    masks = [m.bool() for m, _ in generator.masked_parameters(twin)]
    scores = [pruner.scores[id(p)] for _, p in generator.masked_parameters(twin)]
    return dict(zip(names, masks, strict=True)), dict(zip(names, scores, strict=True))


def our_ntk_sap_step_scores(net, shape, rounds, seed) -> dict[str, torch.Tensor]:
    """The project's scores of one step at m = 1, outside the loop."""
    prunable = prunable_parameters(net)
    config = PruningConfig(
        "ntk_sap", 0.5, steps=1, num_batches=rounds, seed=seed, input_shape=shape
    )
    views = [torch.empty_like(p) for p in prunable.values()]
    with torch.random.fork_rng():
        ntk_sap_score(ScoreContext(net, prunable, config, None, None))(1, None, views)
    return dict(zip(prunable, views, strict=True))


def compare_ntk_sap(root: Path, args: argparse.Namespace) -> None:
    official = official_ntksap(root)
    torch.manual_seed(args.seed)
    net = build_backbone(args.arch, 10, image_size=args.image_size, width=args.width)
    shape = (3, args.image_size, args.image_size)
    print(f"NTK-SAP on {args.arch} (width {args.width}), noise batch {noise_batch_sizes(10)}:")
    # one step at m = 1: the official scores after one prune_loop iteration at density 1
    _, theirs = official_ntk_sap_masks(net, official, shape, 1.0, 1, 1, args.seed)
    ours = our_ntk_sap_step_scores(net, shape, 1, args.seed)
    rel = max(float((ours[n] - theirs[n]).abs().max()) for n in ours) / max(
        float(t.abs().max()) for t in theirs.values()
    )
    print(
        f"  one step, R = 1: pearson {correlation(ours, theirs):.6f}  "
        f"spearman {rank_correlation(ours, theirs):.6f}  max |diff| / max {rel:.2e}"
    )
    for s in args.sparsities:
        ours_masks = compute_masks(net, None, "ntk_sap", s, input_shape=shape, seed=args.seed)
        kept_ours = sum(int(m.sum()) for m in ours_masks.values())
        for exact in (True, False):
            theirs_masks, _ = official_ntk_sap_masks(
                net, official, shape, 1 - s, 20, 1, args.seed, exact=exact
            )
            kept_theirs = sum(int(m.sum()) for m in theirs_masks.values())
            how = "official scores, exact counts" if exact else "official as is"
            print(
                f"  20 steps, sparsity {s:g}, {how:<29}: IoU "
                f"{mask_iou(ours_masks, theirs_masks):.4f}  kept {kept_ours} (ours) / "
                f"{kept_theirs} (official)  largest per-layer count gap "
                f"{max_count_gap(ours_masks, theirs_masks)}"
            )


# --- wall time, in this process -----------------------------------------------------------------


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def floor(net, x, y, passes: int) -> float:
    """``passes`` plain forward+backward passes (after one warm-up)."""
    net.train()

    def run() -> None:
        for _ in range(passes):
            net.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), y).backward()

    run()
    seconds = timed(run)
    net.zero_grad(set_to_none=True)
    return seconds


def time_both(prospr_root: Path, ntk_root: Path, args: argparse.Namespace) -> None:
    sys.path.insert(0, str(prospr_root))
    import prospr.prospr as official_prospr_module  # noqa: PLC0415

    official = official_ntksap(ntk_root)
    torch.manual_seed(0)
    net = build_backbone("resnet50", 10, image_size=32, width=args.time_width)
    n = sum(p.numel() for p in prunable_parameters(net).values())
    x, y = torch.randn(128, 3, 32, 32), torch.randint(0, 10, (128,))
    noise = torch.randn(noise_batch_sizes(10)[0], 3, 32, 32)
    print(
        f"Wall time, CIFAR ResNet-50 width {args.time_width} ({n / 1e6:.2f}M weights), "
        f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} "
        "(a shared machine: noisy):"
    )
    rows = []
    shape = (3, 32, 32)
    for _ in range(args.repeats):
        f1 = floor(net, x, y, 1)
        theirs = timed(lambda: official_prospr(official_prospr_module, net, (x, y), False))
        ours = timed(lambda: compute_masks(net, [(x, y)], "prospr", 0.99))
        f20 = floor(net, noise, torch.zeros(len(noise), dtype=torch.long), 20)
        n_theirs = timed(lambda: official_ntk_sap_masks(net, official, shape, 0.01, 20, 1, 0))
        n_ours = timed(lambda: compute_masks(net, None, "ntk_sap", 0.99, input_shape=shape))
        rows.append((f1, theirs, ours, f20, n_theirs, n_ours))
    best = [min(r[i] for r in rows) for i in range(6)]
    f1, theirs, ours, f20, n_theirs, n_ours = best
    print(
        f"  prospr : ours {ours:.2f} s, official {theirs:.2f} s (ratio {ours / theirs:.2f}); "
        f"floor 1 fwd+bwd of batch 128 {f1:.2f} s (ours / floor {ours / f1:.1f})"
    )
    print(
        f"  ntk_sap: ours {n_ours:.2f} s, official {n_theirs:.2f} s "
        f"(ratio {n_ours / n_theirs:.2f}); floor 20 fwd+bwd of batch {len(noise)} {f20:.2f} s "
        f"(ours / floor {n_ours / f20:.2f})"
    )
    print(f"  (best of {args.repeats}; load average at the end {os.getloadavg()[0]:.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prospr", type=Path, required=True, help="mil-ad/prospr (git dir)")
    parser.add_argument("--ntksap", type=Path, required=True, help="YiteWang/NTK-SAP (git dir)")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.99])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--time", action="store_true", help="also time both on ResNet-50")
    parser.add_argument("--time-only", action="store_true", help="skip the comparisons")
    parser.add_argument("--time-width", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        prospr_root = export(args.prospr, Path(tmp) / "prospr")
        ntk_root = export(args.ntksap, Path(tmp) / "ntksap")
        if not args.time_only:
            compare_prospr(prospr_root, args)
            compare_ntk_sap(ntk_root, args)
        if args.time or args.time_only:
            time_both(prospr_root, ntk_root, args)


if __name__ == "__main__":
    main()
