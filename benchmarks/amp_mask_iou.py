"""How far a mask moves when its saliency passes run under mixed-precision autocast.

A `bf16-mixed` (or `16-mixed`) run computes its mask with the forward passes under autocast, as it
trains; the scores and the selection stay float32. This prints, per method and sparsity, the IoU
(|A and B| / |A or B| of the kept weights) of the autocast mask with the float32 mask computed on
the same batches, and the wall-time ratio of the two computations. For scale, ``IoU other data``
is the IoU of two float32 masks computed on different batches: how far a mask moves anyway.

    python benchmarks/amp_mask_iou.py --data-dir /path/to/cifar10 --arch resnet18 --width 16 \\
        --steps 10 --batch-size 32 --sparsities 0.9 0.99 --device cpu --threads 2

Without --data-dir the batches are random images (the IoU is then only a smoke figure).
"""

from __future__ import annotations

import argparse
import time

import torch

from pruning_lightning.models import build_backbone
from pruning_lightning.pruning import PruningConfig, run_pruning

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def batches(args, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """args.steps fresh batches of CIFAR-10 training images (or random ones)."""
    n = args.steps * args.batch_size
    if args.data_dir is None:
        gen = torch.Generator().manual_seed(seed)
        x, y = torch.randn(n, 3, 32, 32, generator=gen), torch.randint(0, 10, (n,), generator=gen)
    else:
        from pruning_lightning.data import CIFAR10DataModule

        data = CIFAR10DataModule(data_dir=args.data_dir, batch_size=n, num_workers=0)
        data.setup("fit")
        torch.manual_seed(seed)
        x, y = next(iter(data.train_dataloader()))
        x = data.normalizer()(x)  # uint8 from the loader; the backbone takes normalised floats
    return list(zip(x.split(args.batch_size), y.split(args.batch_size), strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--methods", nargs="+", default=["force", "iter_snip", "snip"])
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.9, 0.99])
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data = [(x.to(device), y.to(device)) for x, y in batches(args)]
    other = [(x.to(device), y.to(device)) for x, y in batches(args, seed=1)]
    torch.manual_seed(0)
    model = build_backbone(args.arch, 10, in_channels=3, image_size=32, width=args.width)
    model.to(device)

    print(
        f"{args.arch} width {args.width}, T = {args.steps}, batch {args.batch_size}, "
        f"{args.device}, {args.threads} threads, {args.dtype} autocast vs float32, "
        f"{'CIFAR-10' if args.data_dir else 'random'} batches"
    )
    print(
        f"{'method':<10} {'sparsity':>8} {'kept':>8} {'IoU':>7} {'time ratio':>10} "
        f"{'IoU other data':>14}"
    )
    for method in args.methods:
        for sparsity in args.sparsities:
            steps = args.steps if method in ("force", "iter_snip") else None
            # a one-shot method averages the gradients of all the batches
            num_batches = 1 if steps else len(data)

            def mask(batches, dtype, method=method, sparsity=sparsity, steps=steps, n=num_batches):
                start = time.perf_counter()
                masks = run_pruning(
                    model,
                    batches,
                    PruningConfig(method, sparsity, steps=steps, num_batches=n, amp_dtype=dtype),
                ).masks
                flat = torch.cat([m.flatten() for m in masks.values()])
                return flat, time.perf_counter() - start

            (full, t_full), (amp, t_amp) = mask(data, None), mask(data, DTYPES[args.dtype])
            elsewhere, _ = mask(other, None)
            print(
                f"{method:<10} {sparsity:>8g} {int(full.sum()):>8} {iou(full, amp):>7.3f} "
                f"{t_amp / t_full:>9.2f}x {iou(full, elsewhere):>14.3f}"
            )


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    """Kept in both / kept in either."""
    return (a & b).sum().item() / max(1, (a | b).sum().item())


if __name__ == "__main__":
    main()
