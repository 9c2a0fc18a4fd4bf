"""Can the ImageNet loader keep the GPUs fed? Images/s of the training pipeline against the bare
JPEG decode rate of the same files, measured in the same run.

The pipeline is the one ``fit`` runs: ``ImageNetDataModule.train_dataloader()`` (torchvision
decode, RandomResizedCrop 224 + flip fused, uint8 collation, ``num_workers`` worker processes;
the float conversion and Normalize happen on the device, in the classifier, and are not timed
here). The baseline is the bare decode (``PIL.Image.open(f).convert("RGB")``) in this one
process, and torchvision's ``decode_jpeg`` for comparison. ``--rounds`` alternate the decodes and
the pipeline (fresh workers each round); the ratio is the median of the per-round ratios, so a
slow spell of the machine hits both sides of one ratio.
Give the workers fewer processes than cores (``--workers 1`` on 2 cores) to measure what a
worker does on a node, where the main process has a core of its own. From the per-worker rate
it prints how many workers a GPU needs for a training step rate:
workers = ceil(step rate x per-device batch / per-worker rate).

Without ``--data-dir`` it writes a stand-in: Tiny ImageNet images (``--source``, the zip in
../shared/data) upscaled to ImageNet's typical 500x375 with mild noise, JPEG quality 94, in
ImageNet's folder layout. Its files are about as large as ImageNet's (~110 kB), but smoother
than photographs, so absolute rates run high; the ratios are the figure to read. Where that zip
is absent (a GPU machine gets the repository only), or with ``--source synthetic``, the images
are smooth random colour fields with the same noise, size and quality instead. :func:`measure`
is the whole measurement, for benchmarks/gpu_check.py.

    python benchmarks/data_throughput.py --workers 2 --batch-size 64 --threads 1
    python benchmarks/data_throughput.py --data-dir /datasets/imagenet --workers 8
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

from pruning_lightning.data import ImageNetDataModule

DEFAULT_SOURCE = (
    Path(__file__).parents[1] / ".." / "shared" / "data" / "tiny-imagenet-200-sub20.zip"
)


def write_stand_in(source: Path, out: Path, classes: int, per_class: int, seed: int = 0) -> Path:
    """ImageNet-sized JPEGs (500x375) from Tiny ImageNet's, in train/<wnid>/ and val/<wnid>/."""
    rng = np.random.default_rng(seed)
    with zipfile.ZipFile(source) as archive:
        names = sorted(n for n in archive.namelist() if "/train/" in n and n.endswith(".JPEG"))
        by_class: dict[str, list[str]] = {}
        for name in names:
            by_class.setdefault(name.split("/train/")[1].split("/")[0], []).append(name)
        for wnid in sorted(by_class)[:classes]:
            for split, files in (
                ("train", by_class[wnid][:per_class]),
                ("val", by_class[wnid][-2:]),
            ):
                folder = out / split / wnid
                folder.mkdir(parents=True, exist_ok=True)
                for name in files:
                    with archive.open(name) as f:
                        image = Image.open(f).convert("RGB").resize((500, 375), Image.BICUBIC)
                    pixels = np.asarray(image, dtype=np.int16)
                    pixels = pixels + rng.integers(-28, 29, size=pixels.shape)
                    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(
                        folder / Path(name).name, quality=94
                    )
    return out


def write_synthetic_stand_in(out: Path, classes: int, per_class: int, seed: int = 0) -> Path:
    """ImageNet-sized JPEGs (500x375) of smooth random colour fields plus the same noise as
    :func:`write_stand_in`, for a machine without the Tiny ImageNet zip."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        wnid = f"n{c:08d}"
        for split, count in (("train", per_class), ("val", 2)):
            folder = out / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
                image = Image.fromarray(coarse).resize((500, 375), Image.BICUBIC)
                pixels = np.asarray(image, dtype=np.int16)
                pixels = pixels + rng.integers(-28, 29, size=pixels.shape)
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(
                    folder / f"{wnid}_{i}.JPEG", quality=94
                )
    return out


def decode_rate(paths: list[str], decoder: str) -> float:
    """Images/s of decoding ``paths`` in this process (files read from disk each time)."""
    start = time.perf_counter()
    for path in paths:
        if decoder == "pil":
            with Image.open(path) as image:
                image.convert("RGB")
        else:
            torchvision.io.decode_jpeg(
                torchvision.io.read_file(path), mode=torchvision.io.ImageReadMode.RGB
            )
    return len(paths) / (time.perf_counter() - start)


def training_loader(data_dir: Path, workers: int, batch_size: int) -> torch.utils.data.DataLoader:
    """The training loader ``fit`` uses, on ``data_dir``."""
    dm = ImageNetDataModule(
        str(data_dir), batch_size=batch_size, num_workers=workers, val_fraction=0.01
    )
    dm.setup("fit")
    return dm.train_dataloader()


def pipeline_rate(loader: torch.utils.data.DataLoader, batches: int) -> float:
    """Images/s of ``loader`` after its workers have started (fresh workers each call, stopped
    after it, so nothing is prefetched while something else is timed)."""
    it = iter(loader)
    next(it)  # worker start-up and the first batch are not the steady state
    seen, start = 0, time.perf_counter()
    for _ in range(batches):
        try:
            x, _ = next(it)
        except StopIteration:
            it = iter(loader)
            x, _ = next(it)
        seen += len(x)
    rate = seen / (time.perf_counter() - start)
    del it  # shuts the workers down
    return rate


def build_parser() -> argparse.ArgumentParser:
    """The command line, also parsed by benchmarks/gpu_check.py for its own sizes."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, help="an ImageNet copy (train/<wnid>/*.JPEG)")
    parser.add_argument(
        "--source", default=str(DEFAULT_SOURCE),
        help="Tiny ImageNet zip of the stand-in, or 'synthetic' (the default when it is absent)",
    )  # fmt: skip
    parser.add_argument("--classes", type=int, default=20, help="stand-in classes")
    parser.add_argument(
        "--per-class", type=int, default=100,
        help="stand-in images per class (enough that the timed batches are one epoch)",
    )  # fmt: skip
    parser.add_argument(
        "--rounds", type=int, default=3,
        help="alternating rounds of bare decode and pipeline; the ratio is their median",
    )  # fmt: skip
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=20, help="timed batches of the pipeline")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of this process")
    parser.add_argument(
        "--step-rates", type=float, nargs="+", default=[10.0, 40.0, 80.0],
        help="training steps/s per GPU to size the workers for",
    )  # fmt: skip
    parser.add_argument("--device-batch", type=int, default=32, help="per-device batch size")
    return parser


def measure(args: argparse.Namespace) -> dict:
    """Images/s of the bare decodes and of the training pipeline, in one run, with what was
    read (files, mean size, stand-in source)."""
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        data_dir, source = args.data_dir, str(args.data_dir)
        if data_dir is None:
            zip_path = Path(args.source).resolve()
            if args.source != "synthetic" and zip_path.is_file():
                data_dir = write_stand_in(zip_path, Path(scratch), args.classes, args.per_class)
                source = f"stand-in from {zip_path.name}"
            else:
                data_dir = write_synthetic_stand_in(Path(scratch), args.classes, args.per_class)
                source = "synthetic stand-in"
        files = sorted(str(p) for p in (data_dir / "train").glob("*/*"))[
            : args.batches * args.batch_size
        ]
        size_kb = float(np.mean([os.path.getsize(p) for p in files]) / 1e3)
        decode_rate(files[:20], "pil")  # page cache and decoder warm for both
        loader = training_loader(data_dir, args.workers, args.batch_size)
        pil, tv, rate, ratio = [], [], [], []
        for _ in range(max(getattr(args, "rounds", 3), 1)):
            pil.append(decode_rate(files, "pil"))
            tv.append(decode_rate(files, "torchvision"))
            rate.append(pipeline_rate(loader, args.batches))
            ratio.append(rate[-1] / pil[-1])
    return {
        "source": source, "files": len(files), "mean_kb": size_kb, "workers": args.workers,
        "batch_size": args.batch_size, "rounds": len(ratio),
        "decode_pil": float(np.median(pil)), "decode_torchvision": float(np.median(tv)),
        "pipeline": float(np.median(rate)),
        "per_worker": float(np.median(rate)) / max(args.workers, 1),
        # the median of the per-round ratios, each pipeline round against the decode right before
        "per_worker_ratio": float(np.median(ratio)) / max(args.workers, 1),
        "per_worker_ratio_range": [r / max(args.workers, 1) for r in (min(ratio), max(ratio))],
    }  # fmt: skip


def main() -> None:
    args = build_parser().parse_args()
    r = measure(args)
    pil, tv, rate = r["decode_pil"], r["decode_torchvision"], r["pipeline"]
    per_worker = r["per_worker"]
    print(
        f"{r['source']}: {r['files']} files, mean {r['mean_kb']:.0f} kB; "
        f"workers={args.workers} batch={args.batch_size} torch={torch.__version__} "
        f"cpus={os.cpu_count()} load average (1 min)={os.getloadavg()[0]:.2f}"
    )
    print(f"{'what':<44} {'images/s':>9} {'ratio':>6}")
    print(f"{'bare decode, PIL, 1 process (baseline)':<44} {pil:>9.0f} {1:>6.2f}")
    print(f"{'bare decode, torchvision.io.decode_jpeg':<44} {tv:>9.0f} {tv / pil:>6.2f}")
    label = f"training pipeline, {args.workers} workers"
    print(f"{label:<44} {rate:>9.0f} {r['per_worker_ratio'] * max(args.workers, 1):>6.2f}")
    low, high = r["per_worker_ratio_range"]
    print(
        f"{'  per worker':<44} {per_worker:>9.0f} {r['per_worker_ratio']:>6.2f}"
        f"  (rounds: {low:.2f}-{high:.2f})"
    )
    print(
        f"(rates: medians of {r['rounds']} alternating rounds; ratios: median of the per-round "
        "ratios against the PIL decode of the same round)"
    )
    print(
        f"\nworkers per GPU at batch {args.device_batch} (from {per_worker:.0f} images/s/worker):"
    )
    for steps in args.step_rates:
        need = steps * args.device_batch
        workers = math.ceil(need / per_worker)
        print(f"  {steps:>5.1f} steps/s = {need:>6.0f} images/s -> {workers} workers")
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
