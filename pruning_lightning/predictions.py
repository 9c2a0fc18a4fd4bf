"""Saving what `pruning-lightning predict` computes: Lightning's BasePredictionWriter, to a file.

    pruning-lightning predict --config configs/quickstart.yaml --ckpt_path ... \
        --trainer.callbacks+=pruning_lightning.predictions.PredictionWriter

Under DDP every rank predicts its own shard (each image exactly once); the shards are gathered
into ONE file, in the order of the dataset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import BasePredictionWriter


class PredictionWriter(BasePredictionWriter):
    """Writes the predicted classes and probabilities of the predict split to one `.pt` file.

    The file holds ``pred`` (class indices), ``probs`` (class probabilities) and ``index`` (the
    dataset index of each row; rows are sorted by it).
    """

    def __init__(self, path: str | None = None) -> None:
        """
        Args:
            path: output file; default `predictions.pt` in the run's log directory.
        """
        super().__init__(write_interval="epoch")
        self.path = path

    def write_on_epoch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        predictions: Any,
        batch_indices: Any,
    ) -> None:
        batches = _first_dataloader(predictions)
        indices = _first_dataloader(batch_indices)
        out = {key: torch.cat([b[key].cpu() for b in batches]) for key in ("pred", "probs")}
        flat = [i for batch in indices for i in batch]
        if len(flat) == len(out["pred"]):
            out["index"] = torch.tensor(flat, dtype=torch.long)
        # every rank takes part in both collectives (log_dir is one under DDP)
        path = Path(self.path or Path(trainer.log_dir or ".") / "predictions.pt")
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            shards: list[Any] = [None] * trainer.world_size
            dist.all_gather_object(shards, out)
            out = {key: torch.cat([s[key] for s in shards]) for key in out}
        if "index" in out:
            order = torch.argsort(out["index"])
            out = {key: value[order] for key, value in out.items()}
        if trainer.is_global_zero:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(out, path)


def _first_dataloader(values: Any) -> list:
    """Lightning nests per-dataloader lists only when there are several dataloaders."""
    first = values[0] if values else None
    if isinstance(first, list) and first and isinstance(first[0], list | dict):
        return first
    return list(values or [])
