"""What keeping a network pruned costs per training step.

Same model, data and steps, three ways, timed in one run and printed as ratios to dense:
  dense        no pruning
  callback     PruningCallback enforcing a fixed mask (gradients of pruned weights set to 0
               before each optimizer step, pruned weights set to 0 after it, both with
               masked_fill, which stays exact with inf/NaN; for every optimizer)
  nn.utils     the same mask through torch.nn.utils.prune (weight_orig * mask recomputed by a
               forward pre-hook every step: what Lightning's ModelPruning uses)

    python benchmarks/train_overhead.py --arch resnet50 --width 16 --batch-size 32 --steps 30

The three variants run interleaved, `--repeats` times each, and the median step time of each is
reported, so a slow moment of the machine does not land on one variant only. :func:`measure` is
the whole measurement, for benchmarks/gpu_check.py.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.nn.utils import prune
from torch.utils.data import DataLoader, TensorDataset

from pruning_lightning.callback import PruningCallback
from pruning_lightning.classifier import ImageClassifier
from pruning_lightning.pruning.engine import compute_masks


class StepTimer(pl.Callback):
    """Wall time of each training step (forward, backward, optimizer step and hooks); on a GPU
    synchronised at both ends, so a step is timed when its kernels end, not when they are queued."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.times, self._start = warmup, [], 0.0

    @staticmethod
    def _sync(pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._sync(pl_module)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._sync(pl_module)
        if batch_idx >= self.warmup:
            self.times.append(time.perf_counter() - self._start)


def make_model(args) -> ImageClassifier:
    torch.manual_seed(0)
    return ImageClassifier(args.arch, 10, 3, 32, width=args.width, lr_scheduler=None)


def time_variant(variant: str, args, loader: DataLoader, masks_path: Path) -> float:
    model = make_model(args)
    callbacks: list[pl.Callback] = [StepTimer(args.warmup)]
    if variant == "callback":
        callbacks.append(PruningCallback(masks_path=str(masks_path), log_figure=False))
    elif variant == "nn.utils":
        masks = torch.load(masks_path, weights_only=True)
        modules = dict(model.named_modules())
        for name, mask in masks.items():
            prune.custom_from_mask(modules[name.removesuffix(".weight")], "weight", mask)
    trainer = pl.Trainer(
        accelerator=args.device,
        devices=1,
        max_steps=args.warmup + args.steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    trainer.fit(model, loader)
    return statistics.median(callbacks[0].times)


VARIANTS = ("dense", "callback", "nn.utils")


def build_parser() -> argparse.ArgumentParser:
    """The command line, also parsed by benchmarks/gpu_check.py for its own sizes."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per repeat")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sparsity", type=float, default=0.99)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    return parser


def measure(args: argparse.Namespace) -> dict[str, float]:
    """Median seconds per training step of each variant (dense, callback, nn.utils)."""
    torch.set_num_threads(args.threads)
    n = args.batch_size * (args.warmup + args.steps)
    data = TensorDataset(torch.randn(n, 3, 32, 32), torch.randint(0, 10, (n,)))
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=False)
    with tempfile.TemporaryDirectory() as tmp:
        masks_path = Path(tmp) / "mask.pt"
        masks = compute_masks(make_model(args), None, "random", args.sparsity)
        torch.save(masks, masks_path)
        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for _ in range(args.repeats):
            for variant in VARIANTS:
                times[variant].append(time_variant(variant, args, loader, masks_path))
    return {variant: statistics.median(times[variant]) for variant in VARIANTS}


def main() -> None:
    args = build_parser().parse_args()
    seconds = measure(args)
    dense = seconds["dense"]
    print(
        f"{args.arch} width {args.width}, batch {args.batch_size}, {args.device}, "
        f"{args.threads} threads, sparsity {args.sparsity}, "
        f"median of {args.repeats}x{args.steps} steps"
    )
    print(f"{'variant':<10} {'s/step':>8} {'vs dense':>9}")
    for variant in VARIANTS:
        print(f"{variant:<10} {seconds[variant]:8.4f} {seconds[variant] / dense:8.3f}x")


if __name__ == "__main__":
    main()
