"""Can the ImageNet loader keep the GPUs fed? Images/s of the training pipeline against the bare
JPEG decode rate of the same files, measured in the same run.

The pipeline is the one ``fit`` runs: ``ImageNetDataModule.train_dataloader()`` (PIL decode,
RandomResizedCrop 224 + flip, float conversion, Normalize, collation, ``num_workers`` worker
processes). The baseline is the decode alone (``PIL.Image.open(f).convert("RGB")``, what the
pipeline's loader does first) in this one process, and torchvision's ``decode_jpeg`` for
comparison. From the per-worker rate it prints how many workers a GPU needs for a training step
rate: workers = ceil(step rate x per-device batch / per-worker rate).

Without ``--data-dir`` it writes a stand-in: Tiny ImageNet images (``--source``, the zip in
../shared/data) upscaled to ImageNet's typical 500x375 with mild noise, JPEG quality 94, in
ImageNet's folder layout. Its files are about as large as ImageNet's (~110 kB), but smoother
than photographs, so absolute rates run high; the ratios are the figure to read.

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


def pipeline_rate(data_dir: Path, workers: int, batch_size: int, batches: int) -> float:
    """Images/s of the training loader ``fit`` uses, after its workers have started."""
    dm = ImageNetDataModule(
        str(data_dir), batch_size=batch_size, num_workers=workers, val_fraction=0.01
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
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
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, help="an ImageNet copy (train/<wnid>/*.JPEG)")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--classes", type=int, default=20, help="stand-in classes")
    parser.add_argument("--per-class", type=int, default=40, help="stand-in images per class")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=20, help="timed batches of the pipeline")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of this process")
    parser.add_argument(
        "--step-rates", type=float, nargs="+", default=[10.0, 40.0, 80.0],
        help="training steps/s per GPU to size the workers for",
    )  # fmt: skip
    parser.add_argument("--device-batch", type=int, default=32, help="per-device batch size")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as scratch:
        data_dir = args.data_dir
        if data_dir is None:
            data_dir = write_stand_in(
                args.source.resolve(), Path(scratch), args.classes, args.per_class
            )
        files = sorted(str(p) for p in (data_dir / "train").glob("*/*"))[
            : args.batches * args.batch_size
        ]
        size_kb = np.mean([os.path.getsize(p) for p in files]) / 1e3
        print(
            f"{'stand-in' if args.data_dir is None else data_dir}: {len(files)} files, mean "
            f"{size_kb:.0f} kB; workers={args.workers} batch={args.batch_size} "
            f"torch={torch.__version__} cpus={os.cpu_count()} "
            f"load average (1 min)={os.getloadavg()[0]:.2f}"
        )
        decode_rate(files[:20], "pil")  # page cache and decoder warm for both
        pil = decode_rate(files, "pil")
        tv = decode_rate(files, "torchvision")
        rate = pipeline_rate(data_dir, args.workers, args.batch_size, args.batches)
    per_worker = rate / max(args.workers, 1)
    print(f"{'what':<44} {'images/s':>9} {'ratio':>6}")
    print(f"{'bare decode, PIL, 1 process (baseline)':<44} {pil:>9.0f} {1:>6.2f}")
    print(f"{'bare decode, torchvision.io.decode_jpeg':<44} {tv:>9.0f} {tv / pil:>6.2f}")
    label = f"training pipeline, {args.workers} workers"
    print(f"{label:<44} {rate:>9.0f} {rate / pil:>6.2f}")
    print(f"{'  per worker':<44} {per_worker:>9.0f} {per_worker / pil:>6.2f}")
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
