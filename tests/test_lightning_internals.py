"""Each non-public piece of Lightning (or argparse) the application relies on, pinned by a test,
so an upgrade that moves one fails here by name (pruning_lightning/lightning_internals.py)."""

from __future__ import annotations

import argparse

import lightning.pytorch as pl
import pytest
import torch
from conftest import tiny_model
from torch.utils.data import DataLoader, TensorDataset

from pruning_lightning.analysis import resume
from pruning_lightning.lightning_internals import (
    global_seed,
    hpc_resume_checkpoint,
    set_argument_help,
    train_loader,
)


def test_global_seed_follows_seed_everything(monkeypatch):
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    assert global_seed() is None
    pl.seed_everything(123)
    assert global_seed() == 123


def test_train_loader_without_a_datamodule_is_the_fits_own():
    data = TensorDataset(torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,)))
    given = DataLoader(data, batch_size=4)
    seen = {}

    class Probe(pl.Callback):
        def on_fit_start(self, trainer, pl_module):
            seen["loader"] = train_loader(trainer)

        def on_train_start(self, trainer, pl_module):
            seen["fit_loop"] = trainer.train_dataloader

    trainer = pl.Trainer(
        max_steps=1, callbacks=[Probe()], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
    )  # fmt: skip
    trainer.fit(tiny_model(), train_dataloaders=given)
    assert seen["loader"] is given and seen["fit_loop"] is given


@pytest.mark.parametrize(
    "names",
    [[], ["hpc_ckpt_1.ckpt"], ["hpc_ckpt_2.ckpt", "hpc_ckpt_10.ckpt", "other.ckpt"],
     ["hpc_ckpt_3.ckpt.tmp", "last.ckpt"]],
)  # fmt: skip
def test_hpc_resume_mirror_matches_lightning(names, tmp_path):
    # resume.py mirrors Lightning with the standard library alone (SLURM tasks skip torch)
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    assert resume.lightning_hpc_checkpoint(tmp_path) == hpc_resume_checkpoint(tmp_path)
    assert hpc_resume_checkpoint(tmp_path / "missing") is None


def test_set_argument_help_changes_the_help_text():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pruning.method", dest="pruning.method", help="old")
    set_argument_help(parser, "pruning.method", "new text")
    assert "new text" in parser.format_help()
    with pytest.raises(KeyError):
        set_argument_help(parser, "no.such", "x")


def test_cli_help_lists_the_registered_methods(capsys):
    from pruning_lightning.cli import main

    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    assert "one of: force, iter_snip, snip" in " ".join(capsys.readouterr().out.split())
