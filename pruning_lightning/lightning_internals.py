"""Every place the application leans on a part of Lightning (or argparse) that is not public API.

Each is a small function with a test of its own (tests/test_lightning_internals.py), so a
Lightning upgrade that moves one breaks one named test instead of a run.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
from lightning.pytorch.trainer.connectors.checkpoint_connector import _CheckpointConnector


def global_seed() -> int | None:
    """The seed of the last ``seed_everything`` (Lightning keeps it in ``PL_GLOBAL_SEED``)."""
    value = os.environ.get("PL_GLOBAL_SEED")
    return int(value) if value not in (None, "") else None


def train_loader(trainer: pl.Trainer) -> Iterable:
    """The training loader of this fit, asked for in ``on_fit_start`` (before the fit loop builds
    it). From the datamodule when there is one; otherwise (``fit(model, train_dataloaders=...)``)
    the fit loop's ``setup_data()`` builds it now, as Lightning's own
    ``estimated_stepping_batches`` does, and the fit loop then reuses it."""
    if trainer.datamodule is not None:
        return trainer.datamodule.train_dataloader()
    trainer.fit_loop.setup_data()
    return trainer.train_dataloader


def hpc_resume_checkpoint(run_root: str | Path) -> Path | None:
    """The checkpoint Lightning resumes from by itself on SLURM (``fit`` with ``ckpt_path=None``):
    its own ``_CheckpointConnector._hpc_resume_path`` for ``default_root_dir=run_root``."""
    found = _CheckpointConnector(SimpleNamespace(default_root_dir=str(run_root)))._hpc_resume_path
    return None if found is None else Path(found)


def set_argument_help(parser: argparse.ArgumentParser, dest: str, text: str) -> None:
    """Replace the help of the option stored in ``dest`` (argparse has no public accessor)."""
    for action in parser._actions:
        if action.dest == dest:
            action.help = text
            return
    raise KeyError(dest)
