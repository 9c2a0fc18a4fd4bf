"""The LightningModule: an image classifier wrapping one backbone.

Kept deliberately plain (cross-entropy, top-1/top-5 accuracy, an optimizer and a schedule) so that
the only thing that differs between a dense and a pruned run is the PruningCallback.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from pruning_lightning.data.normalize import Normalize
from pruning_lightning.errors import ConfigError
from pruning_lightning.models import build_backbone
from pruning_lightning.models.external import check_backbone, class_path, load_backbone_weights


def paper_sgd(params) -> torch.optim.Optimizer:
    """The paper's optimizer: SGD, lr 0.1, momentum 0.9, weight decay 5e-4."""
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)


def paper_multistep(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """The paper's CIFAR schedule: lr x0.1 at epochs 150 and 250 (350 epochs in all)."""
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[150, 250], gamma=0.1)


class ImageClassifier(pl.LightningModule):
    """Trains and evaluates a backbone on an image-classification datamodule.

    ``num_classes``, ``in_channels``, ``image_size``, ``mean`` and ``std`` are linked from the
    datamodule by the CLI, so a config only names the backbone: a registry name, or any
    ``nn.Module`` as ``class_path``/``init_args`` (torchvision, timm, your own), checked against
    the data here. The image datamodules hand uint8 batches: the first step of ``forward``
    normalises them on the device (:class:`Normalize`), so every loop and the mask computation
    see the same input; the backbone itself (what ``export`` writes) takes normalised float32.
    """

    def __init__(
        self,
        backbone: str | nn.Module = "resnet50",
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
        width: int | None = None,
        weights: str | None = None,
        weights_strict: bool = True,
        optimizer: OptimizerCallable = paper_sgd,
        lr_scheduler: LRSchedulerCallable | None = paper_multistep,
        warmup_epochs: float = 0.0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        """
        Args:
            backbone: a name in `pruning_lightning.models.BACKBONES` (`fit --help` lists them), or
                any nn.Module as class_path/init_args, e.g. torchvision.models.resnet18 with
                num_classes (its output must be the logits of the data's classes).
            num_classes: classes of the dataset (linked from the datamodule by the CLI).
            in_channels: image channels (linked from the datamodule by the CLI).
            image_size: image height and width (linked from the datamodule by the CLI).
            width: base width of a registry backbone (None: the published one).
            weights: a state_dict file (or a Lightning checkpoint) loaded into the backbone before
                pruning, e.g. a trained network to prune with magnitude or SNIP.
            weights_strict: every key of the backbone must be in `weights`, with its shape, and
                no other; false loads the keys that fit and warns about the rest.
            optimizer: any torch optimizer, e.g. ``{class_path: torch.optim.Adam}``.
            lr_scheduler: any torch LR scheduler, stepped once per epoch; null for a constant rate.
            warmup_epochs: ramp the learning rate linearly from ~0 to the scheduled one over this
                many epochs, per optimizer step (0: none). Deep plain networks such as VGG-19
                need it to train at lr 0.1 without collapsing to a constant output.
            mean: per-channel mean of the images, applied to uint8 batches on the device (linked
                from the datamodule by the CLI; None: taken from the trainer's datamodule at
                setup).
            std: per-channel standard deviation, likewise.
        """
        if warmup_epochs < 0:
            raise ConfigError(f"--model.warmup_epochs must be >= 0, got {warmup_epochs}.")
        super().__init__()
        with warnings.catch_warnings():  # a module built in Python is replaced by its class below
            warnings.filterwarnings("ignore", "Attribute 'backbone' is an instance of `nn.Module`")
            self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        if isinstance(backbone, nn.Module):
            if width is not None:
                raise ConfigError(
                    "--model.width scales the registry's backbones only: set the width of "
                    f"{class_path(backbone)} in its own init_args and leave width null."
                )
            if isinstance(self.hparams.get("backbone"), nn.Module):
                # built in Python, not by the CLI (whose hparams hold class_path/init_args):
                # a checkpoint names the class, never pickles the module
                self.hparams["backbone"] = {"class_path": class_path(backbone)}
            check_backbone(backbone, num_classes, in_channels, image_size)
            self.backbone = backbone
        else:
            self.backbone = build_backbone(
                backbone, num_classes, in_channels=in_channels, image_size=image_size, width=width
            )
        if weights is not None:
            left_out = load_backbone_weights(self.backbone, weights, strict=weights_strict)
            if left_out:
                rank_zero_warn(
                    f"--model.weights {weights}: {len(left_out)} tensors of the backbone keep "
                    f"their initial values (missing or of another shape): {', '.join(left_out)}."
                )
        self.normalize = Normalize(mean, std)
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.warmup_epochs = warmup_epochs

        # top-1/top-5 accuracy over all samples ("micro"; torchmetrics defaults to per-class)
        def accuracy(top_k: int) -> MulticlassAccuracy:
            return MulticlassAccuracy(num_classes, top_k=min(top_k, num_classes), average="micro")

        metrics = MetricCollection({"acc1": accuracy(1), "acc5": accuracy(5)})
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        # evaluation loss as a metric: a mean over images, synchronised across DDP ranks
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone(self.normalize(x))

    def setup(self, stage: str) -> None:
        """Without ``mean``/``std``, normalise as the trainer's datamodule says (a model built in
        Python and fitted on a datamodule needs no more)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if self.normalize.mean is None and hasattr(datamodule, "normalizer"):
            self.normalize = datamodule.normalizer()

    def _shared_step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        metrics = getattr(self, f"{stage}_metrics")
        metrics.update(logits, y)
        on_step = stage == "train"
        if on_step:
            self.log(
                f"{stage}/loss", loss, on_step=True, on_epoch=True, prog_bar=True, sync_dist=True
            )
        else:
            mean_loss = getattr(self, f"{stage}_loss")
            mean_loss.update(loss.detach(), weight=y.numel())
            self.log(f"{stage}/loss", mean_loss, on_epoch=True, prog_bar=True)
        self.log_dict(metrics, on_step=on_step, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def predict_step(self, batch: tuple[Tensor, Tensor] | Tensor, batch_idx: int) -> dict:
        x = batch[0] if isinstance(batch, list | tuple) else batch
        probs = self(x).softmax(dim=-1)
        return {"pred": probs.argmax(dim=-1), "probs": probs}

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        """The optimizer step, at a warmed-up fraction of the scheduled rate early in training.

        The scheduled rates are put back right after the step, so the epoch scheduler never sees
        the warm-up (a LambdaLR beside it would overwrite its decays).
        """
        factor = self._warmup_factor()
        if factor >= 1.0:
            return super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        scheduled = [group["lr"] for group in optimizer.param_groups]
        for group, lr in zip(optimizer.param_groups, scheduled, strict=True):
            group["lr"] = lr * factor
        try:
            super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        finally:
            for group, lr in zip(optimizer.param_groups, scheduled, strict=True):
                group["lr"] = lr

    def on_train_start(self) -> None:
        batches = self.trainer.num_training_batches
        if self.warmup_epochs > 0 and not math.isfinite(batches):
            raise ConfigError(
                "--model.warmup_epochs needs a training set of known length; set it to 0."
            )
        per_epoch = math.ceil(batches / self.trainer.accumulate_grad_batches) if batches else 1
        self._warmup_steps = max(1, round(self.warmup_epochs * per_epoch))

    def _warmup_factor(self) -> float:
        """(step + 1) / warm-up steps while warming up, else 1."""
        if self.warmup_epochs <= 0:
            return 1.0
        return min(1.0, (self.trainer.global_step + 1) / self._warmup_steps)

    def configure_optimizers(self):
        optimizer = self.optimizer(self.parameters())
        if self.lr_scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.lr_scheduler(optimizer)}
