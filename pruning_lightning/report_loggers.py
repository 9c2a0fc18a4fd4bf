"""How the run's figure and files reach each kind of Lightning logger.

Scalars need nothing here: every logger has ``log_metrics``. A figure and a file (pruning.json)
have no common API, so each logger kind gets one small adapter: TensorBoard (``add_figure``),
CSV (a PNG and a copy of the file in its folder), MLflow (``log_figure``, ``log_artifact``) and
Weights & Biases (an image, ``save``). An adapter touches its logger's client only when called,
so none of mlflow or wandb is needed unless such a logger is in the run. A logger of another
kind gets the scalars only, or the figure too if its ``experiment`` has ``add_figure``.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Sequence
from pathlib import Path

from lightning.pytorch.loggers import (
    CSVLogger,
    Logger,
    MLFlowLogger,
    TensorBoardLogger,
    WandbLogger,
)
from matplotlib.figure import Figure


class LoggerAdapter:
    """One logger kind: how it takes a figure (``key`` like ``pruning/kept_fraction_per_layer``)
    and a file of the run. The defaults do nothing: scalars are all such a logger gets."""

    kind: type[Logger] = Logger

    def log_figure(self, logger: Logger, key: str, figure: Figure, step: int) -> None:
        """Hand the figure over (the run's own log dir has it as a PNG already)."""

    def log_file(self, logger: Logger, path: Path) -> None:
        """Hand a file of the run's log dir over (pruning.json)."""


class TensorBoardAdapter(LoggerAdapter):
    """The Images tab; pruning.json is already in the run's folder."""

    kind = TensorBoardLogger

    def log_figure(self, logger: Logger, key: str, figure: Figure, step: int) -> None:
        logger.experiment.add_figure(key, figure, step)


class CSVAdapter(LoggerAdapter):
    """A PNG next to metrics.csv, and a copy of each file there."""

    kind = CSVLogger

    def log_figure(self, logger: Logger, key: str, figure: Figure, step: int) -> None:
        folder = Path(logger.log_dir)
        folder.mkdir(parents=True, exist_ok=True)
        figure.savefig(folder / f"{key.rsplit('/', 1)[-1]}.png", dpi=120)

    def log_file(self, logger: Logger, path: Path) -> None:
        target = Path(logger.log_dir) / path.name
        if target.resolve() != path.resolve():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)


class MLFlowAdapter(LoggerAdapter):
    """The run's artifacts: the figure as a PNG, the files as they are."""

    kind = MLFlowLogger

    def log_figure(self, logger: Logger, key: str, figure: Figure, step: int) -> None:
        logger.experiment.log_figure(logger.run_id, figure, f"{key.rsplit('/', 1)[-1]}.png")

    def log_file(self, logger: Logger, path: Path) -> None:
        logger.experiment.log_artifact(logger.run_id, str(path))


class WandbAdapter(LoggerAdapter):
    """An image under ``key`` (rendered here, so wandb never touches matplotlib), and the files
    among the run's files."""

    kind = WandbLogger

    def log_figure(self, logger: Logger, key: str, figure: Figure, step: int) -> None:
        from PIL import Image

        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=120)
        buffer.seek(0)
        logger.log_image(key=key, images=[Image.open(buffer)], step=step)

    def log_file(self, logger: Logger, path: Path) -> None:
        logger.experiment.save(str(path), base_path=str(path.parent), policy="now")


class FigureWriterAdapter(LoggerAdapter):
    """Any other logger whose ``experiment`` has TensorBoard's ``add_figure``."""

    def log_figure(self, logger: Logger, key: str, figure: Figure, step: int) -> None:
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "add_figure"):
            experiment.add_figure(key, figure, step)


#: The adapters, first match wins; a logger of no listed kind gets :class:`FigureWriterAdapter`.
ADAPTERS: Sequence[LoggerAdapter] = (
    TensorBoardAdapter(),
    CSVAdapter(),
    MLFlowAdapter(),
    WandbAdapter(),
)


def adapter_for(logger: Logger) -> LoggerAdapter:
    """The adapter of ``logger``'s kind."""
    return next((a for a in ADAPTERS if isinstance(logger, a.kind)), FigureWriterAdapter())


def log_figure(loggers: Sequence[Logger], key: str, figure: Figure, step: int) -> None:
    """``figure`` to every logger that takes figures."""
    for logger in loggers:
        adapter_for(logger).log_figure(logger, key, figure, step)


def log_file(loggers: Sequence[Logger], path: Path) -> None:
    """The file ``path`` (in the run's log dir) to every logger that keeps files."""
    for logger in loggers:
        adapter_for(logger).log_file(logger, path)
