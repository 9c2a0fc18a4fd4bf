"""Is the exported network really smaller and faster? Parameters, FLOPs and CPU latency of the
dense, the masked and the exported (compact) network, as ratios against dense in the same run.

For each backbone, method and sparsity: a mask is computed on CIFAR-sized batches (random images
unless ``--data-dir`` points at a CIFAR-10 folder copy), the network is compacted and put in the
form ``pruning-lightning export`` writes (:func:`compact_network`, then :func:`inference_network`:
BatchNorm folded, channels_last), and

- parameters and FLOPs per image of the compact network (``torch.utils.flop_counter``; the
  masked network's FLOPs are the dense ones: its zeros are still multiplied),
- CPU latency at batch 1 and 64 (``torch.utils.benchmark``, ``--threads`` threads, eval mode,
  no autograd) of dense, masked and exported, and of the dense network in the exported form
  (what pruning alone buys: ``b64/dense form``),
- the ONNX Runtime latency of the exported network (same threads),

are printed as ratios against dense, timed again next to every row in ``--rounds`` alternating
rounds (median of the per-round ratios). The networks are at
initialisation (BatchNorm in eval mode with fresh statistics): the timing does not depend on the
weights' values.

    python benchmarks/export_speed.py --arch resnet50 vgg19 --sparsities 0.9 0.99 0.995 \\
        --methods force iter_snip snip random --threads 2

``--device cuda`` times the three networks on a GPU instead (no ONNX Runtime columns: its
package here runs on the CPU). :func:`measure` yields the rows, for benchmarks/gpu_check.py.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import tempfile
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils import benchmark
from torch.utils.flop_counter import FlopCounterMode

from pruning_lightning.errors import ConfigError
from pruning_lightning.models import build_backbone
from pruning_lightning.pruning import apply_masks, compute_masks, get_criterion
from pruning_lightning.pruning.compact import compact_network, inference_network


def flops(net: nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x)
    return counter.get_total_flops() // x.shape[0]


def latency(fn, x: torch.Tensor, threads: int, min_time: float) -> float:
    """Median seconds per call, after two untimed calls (the first call at a new shape builds
    the CPU kernels' primitives, which would otherwise be timed once for the slow nets)."""
    for _ in range(2):
        fn(x)
    timer = benchmark.Timer(
        stmt="fn(x)", globals={"fn": fn, "x": x}, num_threads=threads, label="latency"
    )
    return timer.blocked_autorange(min_run_time=min_time).median


@torch.no_grad()
def per_batch(measure, net, xs: dict[int, torch.Tensor], args: argparse.Namespace) -> dict:
    """``measure(net, x, threads, min_time)`` for each batch size of ``xs``."""
    return {b: measure(net, x, args.threads, args.min_time) for b, x in xs.items()}


def timed_rounds(nets, xs: dict[int, torch.Tensor], args: argparse.Namespace) -> list[dict]:
    """Per net and batch size, the latency relative to ``nets[0]`` in the same round, median
    over ``--rounds`` rounds, times the median absolute latency of ``nets[0]``: a ratio that one
    slow round of a busy machine does not move."""
    rounds = [[per_batch(latency, net, xs, args) for net in nets] for _ in range(args.rounds)]
    base = {b: statistics.median(r[0][b] for r in rounds) for b in xs}
    return [
        {b: base[b] * statistics.median(r[i][b] / r[0][b] for r in rounds) for b in xs}
        for i in range(len(nets))
    ]


def onnx_latency(net: nn.Module, x: torch.Tensor, threads: int, min_time: float) -> float:
    import onnxruntime

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "net.onnx")
        batch = torch.export.Dim("batch", min=1)
        torch.onnx.export(
            net, (torch.zeros(2, *x.shape[1:]),), path, dynamo=True, input_names=["images"],
            dynamic_shapes=({0: batch},), external_data=False, verbose=False,
        )  # fmt: skip
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(path, options)
    feed = {"images": x.numpy()}
    return latency(lambda _: session.run(None, feed), x, 1, min_time)


def data(args: argparse.Namespace) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Saliency batches (on the CPU): CIFAR-10 training images, or random ones."""
    n = (args.steps + 1) * args.batch_size
    if args.data_dir:
        from pruning_lightning.data import CIFAR10DataModule

        dm = CIFAR10DataModule(data_dir=args.data_dir, batch_size=args.batch_size, num_workers=0)
        dm.setup("fit")
        loader, normalize = dm.train_dataloader(), dm.normalizer()
        # uint8 from the loader; the backbone takes normalised floats
        return [(normalize(x), y) for (x, y), _ in zip(loader, range(args.steps + 1), strict=False)]
    images = torch.randn(n, 3, 32, 32)
    labels = torch.randint(0, 10, (n,))
    return list(zip(images.split(args.batch_size), labels.split(args.batch_size), strict=True))


def build_parser() -> argparse.ArgumentParser:
    """The command line, also parsed by benchmarks/gpu_check.py for its own sizes."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", nargs="+", default=["resnet50", "vgg19"])
    parser.add_argument("--width", type=int, default=None, help="backbone width (published)")
    parser.add_argument("--methods", nargs="+", default=["force", "iter_snip", "snip", "random"])
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.9, 0.99, 0.995])
    parser.add_argument("--steps", type=int, default=10, help="T of the progressive methods")
    parser.add_argument("--batch-size", type=int, default=64, help="saliency batch size")
    parser.add_argument("--data-dir", help="a CIFAR-10 copy for the saliency batches")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds per timing")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timing rounds")
    parser.add_argument("--device", default="cpu", help="where the networks are timed")
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime columns")
    return parser


def measure(args: argparse.Namespace) -> Iterator[dict]:
    """One row per backbone (dense, absolute) and per method and sparsity (ratios to dense):
    a generator, so that a caller keeps the rows done when it stops early."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    onnx = not args.no_onnx and device.type == "cpu"
    batches = [(x.to(device), y.to(device)) for x, y in data(args)]
    x1, x64 = torch.randn(1, 3, 32, 32, device=device), torch.randn(64, 3, 32, 32, device=device)
    xs = {1: x1, 64: x64}
    for arch in args.arch:
        torch.manual_seed(0)
        dense = build_backbone(arch, 10, width=args.width).to(device).eval()
        base_params = sum(p.numel() for p in dense.parameters())
        base_flops = flops(dense, x1)
        base = per_batch(latency, dense, xs, args)
        # the dense network in the exported form too: what pruning alone buys, format aside
        dense_fast = inference_network(dense.cpu(), (3, 32, 32)).to(device)
        yield {
            "arch": arch, "method": "dense", "sparsity": 0.0, "params": base_params,
            "flops": base_flops, "latency_b1_s": base[1], "latency_b64_s": base[64],
        }  # fmt: skip
        for method in args.methods:
            for sparsity in args.sparsities:
                net = copy.deepcopy(dense).train()
                options = {"steps": args.steps} if get_criterion(method).progressive else {}
                masks = compute_masks(net, batches, method, sparsity, **options)
                net.eval()
                masked = copy.deepcopy(net)
                apply_masks(masked, masks)
                row = {"arch": arch, "method": method, "sparsity": sparsity}
                try:  # compacted on the CPU, as `pruning-lightning export` does, then moved
                    cpu_masks = {k: v.cpu() for k, v in masks.items()}
                    small = compact_network(copy.deepcopy(net).cpu(), cpu_masks, (3, 32, 32))
                except ConfigError:
                    yield {**row, "disconnected": True}
                    continue
                small = inference_network(small, (3, 32, 32)).to(device)  # what export writes
                # dense again next to each row, in alternation over rounds: drift hits all sides
                base, m, e, f = timed_rounds((dense, masked, small, dense_fast), xs, args)
                o = per_batch(onnx_latency, small.cpu(), xs, args) if onnx else None
                flop_ratio = flops(small, x1) / base_flops
                yield {
                    **row, "disconnected": False,
                    "params": sum(p.numel() for p in small.parameters()) / base_params,
                    "flops": flop_ratio,
                    "masked_b1": m[1] / base[1], "masked_b64": m[64] / base[64],
                    "exported_b1": e[1] / base[1], "exported_b64": e[64] / base[64],
                    "exported_b64_over_flops": e[64] / base[64] / flop_ratio,
                    "dense_exported_form_b64": f[64] / base[64],
                    "exported_b64_over_dense_exported_form": e[64] / f[64],
                    "onnx_b1": o[1] / base[1] if o else math.nan,
                    "onnx_b64": o[64] / base[64] if o else math.nan,
                }  # fmt: skip


def main() -> None:
    args = build_parser().parse_args()
    print(
        f"device={args.device} threads={args.threads} width={args.width} T={args.steps} "
        f"torch={torch.__version__} cpus={os.cpu_count()} "
        f"load average (1 min)={os.getloadavg()[0]:.2f}"
    )
    print(
        f"{'arch':<9} {'method':<10} {'sparsity':>8} {'params':>8} {'FLOPs':>7} "
        f"{'masked b1':>9} {'b64':>6} {'export b1':>9} {'b64':>6} {'b64/FLOPs':>9} "
        f"{'b64/dense form':>14} {'onnx b1':>8} {'b64':>6}"
    )
    for r in measure(args):
        arch, method, sparsity = r["arch"], r["method"], r["sparsity"]
        if method == "dense":
            print(
                f"{arch:<9} {'dense':<10} {0:>8} {r['params'] / 1e6:>7.2f}M "
                f"{r['flops'] / 1e6:>6.0f}M {r['latency_b1_s'] * 1e3:>8.2f}ms "
                f"{r['latency_b64_s'] * 1e3:>5.0f}ms  (absolute: the baseline)",
                flush=True,
            )
        elif r["disconnected"]:
            print(f"{arch:<9} {method:<10} {sparsity:>8} disconnected: nothing to export")
        else:
            print(
                f"{arch:<9} {method:<10} {sparsity:>8} {r['params']:>8.3f} {r['flops']:>7.3f} "
                f"{r['masked_b1']:>9.3f} {r['masked_b64']:>6.3f} {r['exported_b1']:>9.3f} "
                f"{r['exported_b64']:>6.3f} {r['exported_b64_over_flops']:>9.3f} "
                f"{r['exported_b64_over_dense_exported_form']:>14.3f} "
                f"{r['onnx_b1']:>8.3f} {r['onnx_b64']:>6.3f}",
                flush=True,
            )
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
