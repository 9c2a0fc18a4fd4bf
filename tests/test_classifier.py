"""ImageClassifier: the learning-rate warm-up and the evaluation loss."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from conftest import tiny_model

from pruning_lightning.classifier import ImageClassifier
from pruning_lightning.data import DigitsDataModule
from pruning_lightning.errors import ConfigError


class LrProbe(pl.Callback):
    """The learning rate each optimizer step runs with, and the one left after it."""

    def __init__(self) -> None:
        self.during: list[float] = []
        self.after: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.during.append(optimizer.param_groups[0]["lr"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.after.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_warmup_ramps_the_rate_per_step_and_leaves_the_schedule_alone(tmp_path):
    model = tiny_model(
        lambda p: torch.optim.SGD(p, lr=0.4),
        lr_scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5),
        warmup_epochs=1.5,
    )
    probe = LrProbe()
    trainer = pl.Trainer(
        max_epochs=3, limit_train_batches=4, limit_val_batches=0, accelerator="cpu",
        enable_progress_bar=False, enable_model_summary=False, logger=False,
        enable_checkpointing=False, callbacks=[probe],
    )  # fmt: skip
    trainer.fit(model, DigitsDataModule(batch_size=32))
    # 1.5 epochs of 4 steps = 6 warm-up steps, over the epoch schedule 0.4, 0.2, 0.1
    scheduled = [0.4] * 4 + [0.2] * 4 + [0.1] * 4
    factors = [1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6] + [1.0] * 7
    assert probe.during == pytest.approx([s * f for s, f in zip(scheduled, factors, strict=True)])
    # the scheduled rate is back after each step (the last batch of an epoch already sees the
    # scheduler's next rate), so the scheduler never sees the warm-up
    mid_epoch = [i for i in range(12) if i % 4 != 3]
    assert [probe.after[i] for i in mid_epoch] == pytest.approx([scheduled[i] for i in mid_epoch])
    assert probe.after[3::4] == pytest.approx([0.2, 0.1, 0.05])


def test_negative_warmup_is_refused():
    with pytest.raises(ConfigError, match="warmup_epochs must be >= 0"):
        ImageClassifier("resnet18", warmup_epochs=-1)
