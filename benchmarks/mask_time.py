"""How close the mask computation of ``fit`` comes to the compute floor, in time and in memory.

What is timed is the PruningCallback's own call (:meth:`PruningCallback.compute`: ``run_pruning``
with the per-step records ``fit`` logs, on a loader built like the callback's saliency loader),
so the figures describe the path a training run takes. For each backbone it prints, in one run:
  (1) the mask computation time for T steps (T fresh batches, plus the last mask's saliency pass),
  (2) the compute floor: T x the time of one plain forward+backward pass on the same batch
      (T passes timed in a row),
  (3) their ratio (both measured warm: untimed runs of each path first) over ``--repeats``
      rounds that each time the floor and then every method: the best mask time over the best
      floor (best of N, as ``timeit`` advises on a shared machine: other tenants only ever add
      time), and the median and range of the per-round ratios,
and the peak memory of the mask computation against that of one dense training step (forward,
backward, SGD with momentum), each measured in a fresh subprocess: on CPU as the growth of the
resident set's high-water mark (VmHWM, reset at the start) over the model+batch baseline, on CUDA
with ``torch.cuda.max_memory_allocated``.

    python benchmarks/mask_time.py --arch resnet50 vgg19 --steps 60 --batch-size 128 \\
        --sparsity 0.995 --device cpu --threads 2

At ImageNet scale (torchvision's ResNet-50, 25.5M weights, 1000 classes), reduced to fit a CPU:

    python benchmarks/mask_time.py --arch resnet50_imagenet --num-classes 1000 \\
        --image-size 112 --batch-size 32 --steps 10 --num-batches 2 --sparsity 0.95

``--amp bf16`` runs the saliency passes and the floor's passes under bf16 autocast, as a
``bf16-mixed`` run computes its mask. :func:`measure_arch` is the whole measurement of one
backbone, for benchmarks/gpu_check.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from pruning_lightning.callback import PruningCallback
from pruning_lightning.models import build_backbone
from pruning_lightning.pruning import get_criterion, method_names
from pruning_lightning.pruning.batches import seeded_loader
from pruning_lightning.pruning.engine import PruningResult

METHODS = ("force", "iter_snip")  # the default; any registered method may be asked for
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def setup(args: argparse.Namespace, arch: str):
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    size, classes = args.image_size, args.num_classes
    model = build_backbone(arch, classes, image_size=size, width=args.width).to(device)
    x = torch.randn(args.batch_size, 3, size, size, device=device)
    y = torch.randint(0, classes, (args.batch_size,), device=device)
    return model, x, y, device


def saliency_data(args: argparse.Namespace) -> DataLoader:
    """Enough CPU images for T steps and the last saliency pass, in the callback's loader."""
    n = (args.steps + 1) * args.num_batches * args.batch_size
    size = args.image_size
    images, labels = torch.randn(n, 3, size, size), torch.randint(0, args.num_classes, (n,))
    loader = DataLoader(TensorDataset(images, labels), batch_size=args.batch_size)
    return seeded_loader(loader, seed=0)


def amp_dtype(args: argparse.Namespace) -> torch.dtype | None:
    """The autocast dtype of ``--amp`` (None: float32)."""
    return AMP_DTYPES.get(getattr(args, "amp", None) or "")


def fit_result(model, data, method: str, args: argparse.Namespace, steps: int) -> PruningResult:
    """The callback's mask computation, as `fit` runs it (under ``--amp``'s autocast if set);
    a one-shot method gets no ``steps`` (it would only warn that it ignores them)."""
    steps = steps if get_criterion(method).progressive else None
    callback = PruningCallback(
        method=method, sparsity=args.sparsity, steps=steps, num_batches=args.num_batches, seed=0
    )
    return callback.compute(model, data, amp_dtype=amp_dtype(args))


def fit_masks(model, data, method: str, args: argparse.Namespace, steps: int) -> float:
    """Seconds of the callback's mask computation, as `fit` runs it."""
    return fit_result(model, data, method, args, steps).seconds


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_backward(model, x, y, dtype: torch.dtype | None = None) -> None:
    """One plain training pass; the forward under autocast when ``dtype`` is set."""
    model.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
        loss = F.cross_entropy(model(x), y)
    loss.backward()


def floor_time(model, x, y, device, steps: int, dtype: torch.dtype | None = None) -> float:
    """Time of ``steps`` plain forward+backward passes in a row (after one warm-up pass): timed
    as one, like the T passes of a mask computation, so that both sides of the ratio are sums of
    the same number of passes, each exposed to the machine's noise alike."""
    model.train()
    forward_backward(model, x, y, dtype)
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        forward_backward(model, x, y, dtype)
    sync(device)
    elapsed = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return elapsed


def rss_bytes(field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of this process, from /proc/self/status.

    Not ``ru_maxrss``: Linux carries it over from the parent through fork+exec (the parent's
    high-water mark at spawn), which here would be this benchmark's big main process.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> None:
    """Set VmHWM to the current RSS (Linux >= 4.0), so the peak is that of what follows."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def worker(args: argparse.Namespace) -> None:
    """One memory measurement in a fresh process; prints the peak in MiB as JSON."""
    model, x, y, device = setup(args, args.arch[0])
    # the training set is in memory in a run anyway: only what the computation adds is counted
    data = saliency_data(args) if args.worker != "dense" else None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        reset_peak_rss()
        base = rss_bytes("VmRSS")
    if args.worker == "dense":
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        model.train()
        forward_backward(model, x, y, amp_dtype(args))
        opt.step()
    else:
        fit_masks(model, data, args.worker, args, args.steps)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        peak = rss_bytes("VmHWM") - base
    print(json.dumps({"peak_mib": peak / 2**20}))


def measure_memory(args: argparse.Namespace, arch: str, what: str) -> float:
    cmd = [
        sys.executable, __file__, "--worker", what, "--arch", arch, "--steps", str(args.steps),
        "--batch-size", str(args.batch_size), "--sparsity", str(args.sparsity),
        "--device", args.device, "--threads", str(args.threads),
        "--image-size", str(args.image_size), "--num-classes", str(args.num_classes),
        "--num-batches", str(args.num_batches),
        *(["--width", str(args.width)] if args.width else []),
        *(["--amp", args.amp] if args.amp else []),
    ]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mib"]


def build_parser() -> argparse.ArgumentParser:
    """The command line, also parsed by benchmarks/gpu_check.py for its own sizes."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", nargs="+", default=["resnet50", "vgg19"])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--sparsity", type=float, default=0.995)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--width", type=int, default=None, help="backbone width (default: the paper's)"
    )
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument(
        "--num-batches", type=int, default=1, help="batches per saliency step (floor: T x this)"
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=method_names())
    parser.add_argument("--repeats", type=int, default=3, help="rounds of floor + masks")
    parser.add_argument(
        "--amp", choices=list(AMP_DTYPES), help="autocast dtype of the passes (default: float32)"
    )
    parser.add_argument(
        "--no-memory",
        action="store_true",
        help="skip the peak-memory runs (each is one more full mask computation)",
    )
    parser.add_argument("--worker", choices=("dense", *method_names()), help=argparse.SUPPRESS)
    return parser


def measure_arch(
    args: argparse.Namespace, arch: str
) -> tuple[list[dict], dict[str, dict[str, torch.Tensor]]]:
    """One backbone: a row per method (times, ratios, peak memory) and each method's mask of the
    last round (for comparing the masks of two precisions on the same batches)."""
    model, x, y, device = setup(args, arch)
    data = saliency_data(args)
    dtype = amp_dtype(args)
    # warm every path (allocator, kernels): all measured warm
    for method in args.methods:
        fit_masks(model, data, method, args, steps=2)
    # rounds interleave the floor and the masks, so that a drift in the machine's load hits
    # both sides alike
    seconds: dict[str, list[float]] = {method: [] for method in args.methods}
    ratios: dict[str, list[float]] = {method: [] for method in args.methods}
    masks: dict[str, dict[str, torch.Tensor]] = {}
    floors = []
    for _ in range(args.repeats):
        floor = floor_time(model, x, y, device, args.steps * args.num_batches, dtype)
        floors.append(floor)
        for method in args.methods:
            result = fit_result(model, data, method, args, args.steps)
            seconds[method].append(result.seconds)
            ratios[method].append(result.seconds / floor)
            masks[method] = result.masks
    del model, x, y
    dense = float("nan") if args.no_memory else measure_memory(args, arch, "dense")
    rows = []
    for method in args.methods:
        peak = float("nan") if args.no_memory else measure_memory(args, arch, method)
        r = ratios[method]
        best, floor = min(seconds[method]), min(floors)
        rows.append({
            "arch": arch, "method": method, "precision": args.amp or "fp32",
            "steps": args.steps, "batch_size": args.batch_size, "num_batches": args.num_batches,
            "mask_s_best": best, "floor_s_best": floor, "ratio_best": best / floor,
            "ratio_median": statistics.median(r), "ratio_min": min(r), "ratio_max": max(r),
            "peak_mib": peak, "dense_mib": dense,
        })  # fmt: skip
    return rows, masks


def main() -> None:
    args = build_parser().parse_args()
    if args.worker:
        worker(args)
        return

    print(
        f"device={args.device} threads={args.threads} batch={args.batch_size} "
        f"T={args.steps} num_batches={args.num_batches} image={args.image_size} "
        f"classes={args.num_classes} sparsity={args.sparsity} width={args.width} "
        f"precision={args.amp or 'fp32'} torch={torch.__version__} "
        f"load average (1 min)={os.getloadavg()[0]:.2f}"
    )
    header = (
        f"{'arch':<18} {'method':<10} {'mask s':>8} {'floor s':>8} {'ratio':>6} "
        f"{'median (min-max)':>22} {'peak MiB':>9} {'dense MiB':>9} {'mem ratio':>9}"
    )
    print(header)
    for arch in args.arch:
        rows, _ = measure_arch(args, arch)
        for row in rows:
            spread = f"{row['ratio_median']:.3f} ({row['ratio_min']:.3f}-{row['ratio_max']:.3f})"
            print(
                f"{arch:<18} {row['method']:<10} {row['mask_s_best']:>8.2f} "
                f"{row['floor_s_best']:>8.2f} {row['ratio_best']:>6.3f} {spread:>22} "
                f"{row['peak_mib']:>9.0f} {row['dense_mib']:>9.0f} "
                f"{row['peak_mib'] / row['dense_mib']:>9.3f}",
                flush=True,
            )
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
