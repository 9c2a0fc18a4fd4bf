"""A callback for the SLURM requeue test: it holds a training run still, once, at a known step.

At the end of the first training batch that reaches global step ``PAUSE_AT_STEP`` (default 3) it
writes the process id to the file ``PAUSE_MARKER`` and then waits (at most ``PAUSE_TIMEOUT``
seconds, default 120) until the process got SIGTERM, so a test can send SIGUSR1 and SIGTERM at a
deterministic point of training. If the marker exists already (a requeued run), it does nothing.
Add it with ``trainer.callbacks: [{class_path: pause_callback.PauseOnce}]`` and this folder on
PYTHONPATH.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback


class PauseOnce(Callback):
    def __init__(self) -> None:
        super().__init__()
        self.marker = Path(os.environ["PAUSE_MARKER"])
        self.step = int(os.environ.get("PAUSE_AT_STEP", "3"))
        self.timeout = float(os.environ.get("PAUSE_TIMEOUT", "120"))

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self.marker.exists() or trainer.global_step < self.step:
            return
        partial = self.marker.with_suffix(".tmp")
        partial.write_text(str(os.getpid()))
        partial.replace(self.marker)  # the test never reads a half-written pid
        deadline = time.monotonic() + self.timeout
        while not trainer.received_sigterm and time.monotonic() < deadline:
            time.sleep(0.05)  # signal handlers (Lightning's SIGUSR1/SIGTERM) run in between
