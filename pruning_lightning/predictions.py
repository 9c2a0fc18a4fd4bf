"""Saving what `pruning-lightning predict` computes: Lightning's BasePredictionWriter, to a file.

    pruning-lightning predict --config configs/quickstart.yaml --ckpt_path ... \
        --trainer.callbacks+=pruning_lightning.predictions.PredictionWriter
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter


class PredictionWriter(BasePredictionWriter):
    """Writes the predicted classes and probabilities of the predict split to one `.pt` file."""

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
        batches = (
            predictions[0] if predictions and isinstance(predictions[0], list) else predictions
        )
        out = {key: torch.cat([b[key].cpu() for b in batches]) for key in ("pred", "probs")}
        path = Path(self.path or Path(trainer.log_dir or ".") / "predictions.pt")
        if trainer.world_size > 1:  # one file per rank: each rank predicts its own shard
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(out, path)
