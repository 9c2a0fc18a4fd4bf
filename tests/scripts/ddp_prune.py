"""Run by tests/test_ddp.py: prune and train with Lightning's `ddp` strategy on 2 CPU processes.

Each rank saves its mask and final weights to OUT/rank<R>.pt, and the indices of the training
images its mask computation read. With --perturb, rank 1 flips one mask entry before the
cross-rank check, which must then stop the run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import Dataset

from pruning_lightning.callback import PruningCallback
from pruning_lightning.classifier import ImageClassifier
from pruning_lightning.data import DigitsDataModule


class PerturbingCallback(PruningCallback):
    """Makes rank 1's mask differ, to prove that the cross-rank check catches it."""

    def _verify_identical(self, trainer, masks):
        if trainer.global_rank == 1:
            first = next(iter(masks.values())).view(-1)
            first[0] = ~first[0]
        super()._verify_identical(trainer, masks)


class Recording(Dataset):
    """The training set, noting which images are read while ``active``."""

    def __init__(self, base: Dataset) -> None:
        self.base, self.seen, self.active = base, [], False

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        if self.active:
            self.seen.append(i)
        return self.base[i]


class RecordingDigits(DigitsDataModule):
    def setup(self, stage=None):
        super().setup(stage)
        if self.train_dataset is not None and not isinstance(self.train_dataset, Recording):
            self.train_dataset = Recording(self.train_dataset)


def recording(cls: type[PruningCallback]) -> type[PruningCallback]:
    class RecordingPruning(cls):
        """Turns the recording on for the mask computation only."""

        def compute(self, model, data, **kwargs):
            data.dataset.active = True
            try:
                return super().compute(model, data, **kwargs)
            finally:
                data.dataset.active = False

    return RecordingPruning


class SaveOnEnd(pl.Callback):
    def __init__(self, out: Path, pruning: PruningCallback) -> None:
        self.out, self.pruning = out, pruning

    def on_fit_end(self, trainer, pl_module):
        state = {
            "pruning_images": trainer.datamodule.train_dataset.seen,
            "masks": {k: v.cpu() for k, v in self.pruning.masks.items()},
            "weights": {k: v.detach().cpu() for k, v in pl_module.named_parameters()},
        }
        torch.save(state, self.out / f"rank{trainer.global_rank}.pt")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--method", default="force")
    parser.add_argument("--perturb", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    pl.seed_everything(0)
    model = ImageClassifier(
        "resnet18", num_classes=10, in_channels=1, image_size=8, width=4, lr_scheduler=None
    )
    cls = recording(PerturbingCallback if args.perturb else PruningCallback)
    steps = 3 if args.method in ("force", "iter_snip", "synflow") else None
    pruning = cls(method=args.method, sparsity=0.9, steps=steps, num_batches=2)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=args.out,
        callbacks=[pruning, SaveOnEnd(args.out, pruning)],
    )
    trainer.fit(model, RecordingDigits(batch_size=16, num_workers=0))


if __name__ == "__main__":
    main()
