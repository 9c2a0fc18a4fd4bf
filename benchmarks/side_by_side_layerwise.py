"""Side by side with the authors' code: ERK/ER (google-research/rigl), smart ratio
(JingtongSu/sanity-checking-pruning) and GraSP-It (naver/force), on the same tiny network.

Point it at the fetched repositories (git directories or checkouts; nothing is vendored):

    python benchmarks/side_by_side_layerwise.py --rigl /path/to/rigl --smart-ratio \
        /path/to/sanity-checking-pruning --force /path/to/force

How each official function runs here:
- rigl ``get_sparsities_erdos_renyi``: its module imports TensorFlow, so the script reads
  ``rigl/sparse_utils.py`` from the repository, takes that one function's source out with ``ast``
  and executes it unchanged, with numpy and a stand-in for ``tf.logging``, on mask stand-ins that
  carry the shapes in rigl's TF order ([kh, kw, in, out] / [in, out]).
- smart ratio: ``pruner/SmartRatio.py`` is imported and ``SmartRatio(net, ...)`` called with the
  defaults of their ``train_ticket.py`` (``Tensor.cuda`` made a no-op so it runs on the CPU).
- GraSP-It: ``pruning/pruning_algos.py`` is imported and ``iterative_pruning(prune_method=2)``
  called (their models end in log-softmax: the network is wrapped with one for their call).

Densities are compared per layer; positions are random in both, so only counts can agree for
the layer-wise methods. GraSP-It is compared by the score correlation of one step and the mask
IoU after T steps on the same single batch.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import math
import re
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pruning_lightning import compute_masks
from pruning_lightning.pruning import layerwise, prunable_parameters
from pruning_lightning.pruning.network import MaskedNetwork


def tiny_net(seed: int = 0) -> nn.Sequential:
    """A VGG-like chain small enough to print: 4 convs (one 1x1), BatchNorm, one Linear."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )  # fmt: skip


def checkout(path: Path) -> Path:
    """A work tree of ``path``: a git directory (a mirror) is exported to a temp dir first."""
    if (path / "objects").is_dir() and (path / "HEAD").is_file():
        out = Path(tempfile.mkdtemp(prefix="official-"))
        archive = subprocess.run(
            ["git", f"--git-dir={path}", "archive", "HEAD"], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
        return out
    return path


def rigl_function(repo: Path):
    """rigl's ``get_sparsities_erdos_renyi``, executed from its own source text."""
    source = (repo / "rigl" / "sparse_utils.py").read_text()
    tree = ast.parse(source)
    wanted = [
        node
        for node in tree.body
        if (isinstance(node, ast.FunctionDef) and node.name in (
            "get_sparsities_erdos_renyi", "get_n_zeros", "mask_extract_name_fn"))
        or (isinstance(node, ast.Assign) and any(
            getattr(t, "id", None) == "DEFAULT_ERK_SCALE" for t in node.targets))
    ]  # fmt: skip
    module = ast.Module(body=wanted, type_ignores=[])
    tf = types.SimpleNamespace(logging=types.SimpleNamespace(info=lambda *a, **k: None))
    namespace = {"np": np, "tf": tf, "re": re}
    exec(compile(module, "rigl/sparse_utils.py", "exec"), namespace)  # noqa: S102
    return namespace["get_sparsities_erdos_renyi"]


class _Mask:
    """What rigl reads from a mask variable: ``.name`` and ``.shape.as_list()``."""

    def __init__(self, name: str, shape: list[int]):
        self.name = f"{name}/mask:0"
        self.shape = types.SimpleNamespace(as_list=lambda: list(shape))


def tf_shape(shape: torch.Size) -> list[int]:
    """torch [out, in, kh, kw] / [out, in] -> TF [kh, kw, in, out] / [in, out]."""
    return [shape[2], shape[3], shape[1], shape[0]] if len(shape) == 4 else [shape[1], shape[0]]


def compare_erdos_renyi(repo: Path, net: nn.Module, sparsity: float) -> float:
    """Prints the table; returns the largest |rigl - ours on rigl's budget| density gap."""
    official = rigl_function(repo)
    worst = 0.0
    prunable = prunable_parameters(net)
    shapes = [p.shape for p in prunable.values()]
    masks = [_Mask(n, tf_shape(p.shape)) for n, p in prunable.items()]
    for method, kernel in (("erk", True), ("er", False)):
        theirs = official(masks, sparsity, {}, kernel)
        theirs = [1.0 - theirs[m.name] for m in masks]
        same = layerwise.erdos_renyi_densities(shapes, 1.0 - sparsity, kernel=kernel, exact=False)
        ours = layerwise.erdos_renyi_densities(shapes, 1.0 - sparsity, kernel=kernel)
        counts = [int(m.sum()) for m in compute_masks(net, None, method, sparsity).values()]
        print(f"\n{method} at sparsity {sparsity}: density per layer (rigl's; ours on rigl's "
              "budget; ours on k) and kept count (rigl's floor rule; ours)")  # fmt: skip
        print(f"  {'layer':<10}{'size':>7}{'rigl':>11}{'ours/rigl':>11}{'ours/k':>11}"
              f"{'rigl kept':>11}{'our kept':>10}")  # fmt: skip
        sizes = [math.prod(s) for s in shapes]
        rigl_kept = [n - math.floor((1.0 - t) * n) for n, t in zip(sizes, theirs, strict=True)]
        rows = zip(prunable, sizes, theirs, same, ours, rigl_kept, counts, strict=True)
        for name, n, t, a, o, r, c in rows:
            print(f"  {name:<10}{n:>7}{t:>11.6f}{a:>11.6f}{o:>11.6f}{r:>11}{c:>10}")
        diff = max(abs(a - b) for a, b in zip(theirs, same, strict=True))
        worst = max(worst, diff)
        k = round((1 - sparsity) * sum(sizes))
        print(f"  max |rigl - ours on rigl's budget| = {diff:.2e}; kept total rigl "
              f"{sum(rigl_kept)}, ours {sum(counts)} (k = {k})")  # fmt: skip
    return worst


def compare_smart_ratio(repo: Path, net: nn.Module, sparsity: float) -> int:
    """Prints the table; returns the largest per-layer count difference."""
    sys.path.insert(0, str(repo))
    try:
        module = importlib.import_module("pruner.SmartRatio")
    finally:
        sys.path.remove(str(repo))
    shapes = [p.shape for p in prunable_parameters(net).values()]
    worst = 0
    cuda = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self  # their masks are made on the GPU
    try:
        for arch, ours_method in (("resnet", "smart_ratio"), ("vgg19_bn", "smart_ratio_vgg")):
            args = types.SimpleNamespace(  # train_ticket.py's defaults, but --arch
                linear_keep_ratio=0.3, init_prune_ratio=sparsity, arch=arch, linear_decay=0,
                ascend=0, cubic=0, uniform=0, hybrid=0,
            )  # fmt: skip
            torch.manual_seed(0)
            theirs = [int(m.sum()) for m in module.SmartRatio(net, sparsity, "cpu", args)]
            ours = [int(m.sum()) for m in compute_masks(net, None, ours_method, sparsity).values()]
            targets = layer_counts_float(ours_method, shapes, 1.0 - sparsity)
            print(f"\n{ours_method} (their --arch {arch}) at sparsity {sparsity}: kept per layer")
            print(f"  {'size':>7}{'theirs':>9}{'our target':>12}{'ours':>7}")
            for shape, t, f, o in zip(shapes, theirs, targets, ours, strict=True):
                print(f"  {math.prod(shape):>7}{t:>9}{f:>12.2f}{o:>7}")
            k = round((1 - sparsity) * sum(map(math.prod, shapes)))
            gap = max(abs(a - b) for a, b in zip(theirs, ours, strict=True))
            worst = max(worst, gap)
            print(f"  total theirs {sum(theirs)}, ours {sum(ours)} (k = {k}); max per-layer "
                  f"|difference| {gap}")  # fmt: skip
    finally:
        torch.Tensor.cuda = cuda
    return worst


def layer_counts_float(method: str, shapes, density: float) -> list[float]:
    quota = {"smart_ratio": layerwise.smart_ratio_targets,
             "smart_ratio_vgg": layerwise.smart_ratio_vgg_targets}[method]  # fmt: skip
    return quota(shapes, density)


def compare_grasp_it(
    repo: Path, net: nn.Module, sparsity: float, steps: int
) -> tuple[float, list[float]]:
    """Prints the comparison; returns the one-step score correlation and the two mask IoUs
    (their code as is; with their count rule made exact)."""
    sys.path.insert(0, str(repo))
    try:
        algos = importlib.import_module("pruning.pruning_algos")
    finally:
        sys.path.remove(str(repo))
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 3, 8, 8, generator=gen), torch.randint(0, 10, (32,), generator=gen)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    wrapped = nn.Sequential(net, nn.LogSoftmax(dim=1)).train()  # their loss is nll_loss

    # one step: their saliency at theta0 against ours, (dL/dw)^2
    theirs = algos.get_average_saliencies(wrapped, loader, "cpu", prune_method=2, num_batches=1)
    prunable = prunable_parameters(net)
    masked = MaskedNetwork(net, prunable)
    with torch.enable_grad():
        masked.load(None)
        ours = [g**2 for g in masked.gradients([(x, y)])]
    a = torch.cat([t.flatten() for t in theirs]).detach().double()
    b = torch.cat([o.flatten() for o in ours]).double()
    corr = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
    print(
        f"\ngrasp_it: one-step score (dL/dw)^2 at theta0, theirs vs ours: Pearson {corr:.8f}, "
        f"max relative difference {float(((a - b).abs() / b.abs().max()).max()):.2e}"
    )

    # T steps on the same batch each step (their loader hands out its one batch every time)
    our_masks = compute_masks(net, [(x, y)], "grasp_it", sparsity, steps=steps)
    o = torch.cat([m.flatten() for m in our_masks.values()])
    as_is, ious = algos.get_mask, []
    for label in ("as is", "their get_mask keeping exactly round(N * perc), ties to the earliest"):
        net.zero_grad(set_to_none=True)
        their_masks = algos.iterative_pruning(
            wrapped, loader, "cpu", pruning_factor=1 - sparsity, prune_method=2,
            num_steps=steps, mode="exp", num_batches=1,
        )  # fmt: skip
        t = torch.cat([m.flatten().bool() for m in their_masks])
        iou = int((t & o).sum()) / int((t | o).sum())
        ious.append(iou)
        print(f"grasp_it T={steps} at sparsity {sparsity}, their code {label}: kept theirs "
              f"{int(t.sum())}, ours {int(o.sum())}; mask IoU {iou:.4f}; per layer (theirs/ours) "
              + ", ".join(f"{int(tm.sum())}/{int(m.sum())}" for m, tm in
                          zip(our_masks.values(), their_masks, strict=True)))  # fmt: skip
        algos.get_mask = _exact_get_mask
    algos.get_mask = as_is
    return corr, ious


def _exact_get_mask(saliency, pruning_factor):
    """Their get_mask with the project's count and tie rule: exactly round(N * perc) kept, the
    earliest of tied scores first (a stable sort), instead of int(N * perc) and ``>=``."""
    scores = torch.cat([s.flatten() for s in saliency])
    k = round(len(scores) * float(pruning_factor))
    order = torch.sort(-scores.double(), stable=True).indices[:k]
    flat = torch.zeros(len(scores))
    flat[order] = 1.0
    out, start = [], 0
    for s in saliency:
        out.append(flat[start : start + s.numel()].view(s.shape))
        start += s.numel()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rigl", type=Path, help="google-research/rigl (checkout or git dir)")
    parser.add_argument("--smart-ratio", type=Path, help="JingtongSu/sanity-checking-pruning")
    parser.add_argument("--force", type=Path, help="naver/force")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--steps", type=int, default=10, help="GraSP-It's T for the comparison")
    args = parser.parse_args()
    torch.set_num_threads(1)
    net = tiny_net()
    print("network:", [tuple(p.shape) for p in prunable_parameters(net).values()])
    if args.rigl:
        for sparsity in (args.sparsity, 0.99):
            compare_erdos_renyi(checkout(args.rigl), net, sparsity)
    if args.smart_ratio:
        compare_smart_ratio(checkout(args.smart_ratio), net, args.sparsity)
    if args.force:
        compare_grasp_it(checkout(args.force), net, args.sparsity, args.steps)


if __name__ == "__main__":
    main()
