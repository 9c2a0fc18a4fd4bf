"""PruningCallback: the Lightning glue around the pruning engine.

It decides *when* to prune (at fit start, or after some dense training), feeds the engine the
training data, keeps pruned weights at zero through training, carries the mask in checkpoints,
keeps every DDP rank on the same mask, and logs what the mask looks like. The math lives in
`pruning_lightning.pruning` (which never imports Lightning), the pruning.json schema, scalars and
figure in `pruning_lightning.report`, the run record (pruning.json) in `pruning_lightning.record`;
nothing here re-implements any of them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader

from pruning_lightning import report, report_loggers
from pruning_lightning.errors import ConfigError
from pruning_lightning.lightning_internals import global_seed, train_loader
from pruning_lightning.pruning.ablations import (
    INVERT,
    WEIGHT_ABLATIONS,
    ablate_masks,
    ablated_weights,
    load_weights,
    mask_iou,
)
from pruning_lightning.pruning.batches import seeded_loader
from pruning_lightning.pruning.config import PruningConfig, ignores_steps
from pruning_lightning.pruning.connectivity import effective_masks
from pruning_lightning.pruning.engine import PruningResult, run_pruning
from pruning_lightning.pruning.masks import (
    check_masks,
    kept_counts,
    kept_total,
    prunable_parameters,
    split_flat,
)
from pruning_lightning.pruning.progressive import StepEvent
from pruning_lightning.pruning.registry import method_names
from pruning_lightning.pruning.saliency import force_saliency_views
from pruning_lightning.pruning.step_masks import STEP_MASKS, StepMaskWriter
from pruning_lightning.record import (
    PRUNING_JSON,
    RunRecord,
    config_fields,
    mask_digest,
    versions,
)


class PruningCallback(Callback):
    """Prune the model once (at fit start by default) and keep it pruned for the whole run."""

    def __init__(
        self,
        method: str = "force",
        sparsity: float = 0.0,
        steps: int | None = None,
        schedule: str = "exp",
        num_batches: int = 1,
        seed: int | None = None,
        include: list[str] | None = None,
        exclude: list[str] | None = None,
        temperature: float = 200.0,
        ablation: str | None = None,
        ablation_seed: int | None = None,
        saliency_data: str | None = None,
        prospr_first_order: bool = False,
        prospr_new_batches: bool = False,
        masks_path: str | None = None,
        save_masks_path: str | None = None,
        save_step_masks: bool = False,
        prune_after_steps: int = 0,
        prune_after_epochs: int = 0,
        verify_ranks: bool = True,
        log_figure: bool = True,
    ) -> None:
        """
        Args:
            method: pruning criterion, a registered method (force, iter_snip, snip, grasp, random,
                magnitude, synflow, prospr, ntk_sap, phew, and any added with
                `pruning_lightning.pruning.register`).
            sparsity: fraction of prunable weights to remove, in [0, 1); 0 trains the dense network.
            steps: iterations T of force/iter_snip/synflow/ntk_sap (None: 60, 60, 100, 20); one-shot
                methods ignore it (with a warning), so a config's T survives switching the method.
            schedule: kept-count schedule of the progressive methods: exp or linear.
            num_batches: training batches per saliency evaluation (per step when progressive).
            seed: seed of the saliency data order and of `random`; None follows `seed_everything`.
            include: fnmatch patterns of parameter names to prune (default: Conv2d/Linear weights).
            exclude: fnmatch patterns of parameter names never to prune, e.g. ["*.classifier.*"].
            temperature: GRASP's logit temperature.
            ablation: an ablation of the mask (docs/METHODS.md "Ablations"): shuffle (per-layer
                counts, random positions), reinit (new initial weights), shuffle_weights (kept
                values permuted per layer) or invert (keep the lowest-ranked).
            ablation_seed: seed of the ablation and of saliency_data; None: the run's seed.
            saliency_data: corrupt the saliency batches: random_labels or shuffled_pixels.
            prospr_first_order: ProsPr's first-order meta-gradient (default: the full one).
            prospr_new_batches: ProsPr takes fresh batches for each inner step (default: one).
            masks_path: load this saved mask instead of computing one.
            save_masks_path: save the computed mask here (torch.save of name -> bool tensor).
            save_step_masks: keep every step's mask m_t, bit-packed, in the log dir's
                step_masks.pt (read it with `pruning_lightning.pruning.step_masks.load_step_masks`).
            prune_after_steps: train densely for this many optimizer steps, then prune.
            prune_after_epochs: train densely for this many epochs, then prune (early pruning).
            verify_ranks: under DDP, fail unless a checksum of the mask is equal on all ranks.
            log_figure: log a bar chart of the kept fraction per layer.
        """
        super().__init__()
        if method in method_names() and ignores_steps(method, steps):
            rank_zero_warn(
                f"--pruning.method {method} is one-shot: it ignores --pruning.steps {steps}."
            )
            steps = None
        # the engine's own checks (method, sparsity, steps, schedule, ...), now; the seed (None:
        # seed_everything's) and the autocast dtype are resolved at fit time (`resolved_config`)
        self.config = PruningConfig(
            method=method,
            sparsity=sparsity,
            steps=steps,
            schedule=schedule,
            num_batches=num_batches,
            seed=seed,
            include=include,
            exclude=exclude,
            temperature=temperature,
            ablation=ablation,
            ablation_seed=ablation_seed,
            saliency_data=saliency_data,
            prospr_first_order=prospr_first_order,
            prospr_new_batches=prospr_new_batches,
        )
        if prune_after_steps < 0 or prune_after_epochs < 0:
            raise ConfigError("--pruning.prune_after_steps/epochs must be >= 0.")
        if prune_after_steps and prune_after_epochs:
            raise ConfigError(
                "Set only one of --pruning.prune_after_steps and --pruning.prune_after_epochs."
            )
        if masks_path is not None and (prune_after_steps or prune_after_epochs):
            raise ConfigError(
                "--pruning.masks_path loads a finished mask at fit start; it cannot be combined "
                "with early pruning (prune_after_steps/prune_after_epochs). Drop one of them."
            )
        if ablation in WEIGHT_ABLATIONS and (prune_after_steps or prune_after_epochs):
            raise ConfigError(
                f"--pruning.ablation {ablation} replaces theta0, and with early pruning "
                "(prune_after_steps/prune_after_epochs) theta0 is the trained weights mid-run: "
                "prune at initialization or drop the ablation."
            )
        if masks_path is not None and (ablation == INVERT or saliency_data is not None):
            raise ConfigError(
                "--pruning.masks_path loads a finished mask, so no ranking is computed for "
                "--pruning.ablation invert or --pruning.saliency_data to act on: drop one of them."
            )
        if masks_path is not None and save_step_masks:
            raise ConfigError(
                "--pruning.save_step_masks keeps the steps of a computed mask, and "
                "--pruning.masks_path loads a finished one: drop one of them."
            )
        if masks_path is not None and not Path(masks_path).is_file():
            raise ConfigError(
                f"--pruning.masks_path {masks_path!r} does not exist. Point it at a file written "
                "by --pruning.save_masks_path."
            )
        self.masks_path = masks_path
        self.save_masks_path = save_masks_path
        self.save_step_masks = save_step_masks
        self.prune_after_steps = prune_after_steps
        self.prune_after_epochs = prune_after_epochs
        self.verify_ranks = verify_ranks
        self.log_figure = log_figure
        self.masks: dict[str, Tensor] | None = None
        self.record: RunRecord | None = None  # pruning.json, kept for resumed runs
        self._pruned: list[tuple[Tensor, Tensor]] = []  # (parameter, True where pruned)
        self._hook_handles: list[Any] = []
        self._step_masks: StepMaskWriter | None = None  # the packed m_t until they are written

    # -- what the run looks like ----------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        """Whether this run prunes at all (sparsity 0 without a mask file trains densely)."""
        return self.config.sparsity > 0 or self.masks_path is not None

    @property
    def early(self) -> bool:
        return bool(self.prune_after_steps or self.prune_after_epochs)

    def resolved_config(self, trainer: pl.Trainer | None = None) -> PruningConfig:
        """The config this fit computes with: the seed after `seed_everything`, and the autocast
        dtype of a mixed-precision trainer."""
        seed = self.config.seed
        if seed is None:
            seed = global_seed() or 0
        amp_dtype = autocast_dtype(trainer) if trainer is not None else None
        return dataclasses.replace(self.config, seed=seed, amp_dtype=amp_dtype)

    def run_options(self) -> dict[str, Any]:
        """The record's fields on where the mask comes from, besides the config's (logged with it
        as the run's hyperparameters)."""
        return {
            "masks_path": self.masks_path,
            "prune_after_steps": self.prune_after_steps,
            "prune_after_epochs": self.prune_after_epochs,
            "global_seed": global_seed(),
        }

    # -- Lightning hooks ------------------------------------------------------------------------

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        options = {**config_fields(self.resolved_config(trainer)), **self.run_options()}
        hparams = report.hyperparameters(options)
        for logger in trainer.loggers:
            logger.log_hyperparams(hparams)
        if self.masks is not None:  # restored from a checkpoint: never recompute
            rank_zero_info("PruningCallback: using the mask stored in the checkpoint.")
            self._install(trainer, pl_module, self.masks)
            # a resumed run logs to a new version folder: describe the mask there too
            self._write_record(trainer, _log_dir(trainer))
        elif self.masks_path is not None:
            masks = self._load_masks(pl_module)
            kept, total = kept_total(kept_counts(masks))  # the file decides the sparsity
            config = dataclasses.replace(self.resolved_config(trainer), sparsity=1 - kept / total)
            self._finish(trainer, pl_module, masks, config, None, self._saliency_data(trainer))
        elif self.enabled and not self.early:
            self._prune(trainer, pl_module)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning restores a checkpoint's optimizer state after on_fit_start: momentum or Adam
        # moments of a dense checkpoint would move the pruned weights off zero at the first step
        self._zero_optimizer_state(trainer)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.masks is not None or not self.enabled or not self.early:
            return
        due_by_steps = self.prune_after_steps and trainer.global_step >= self.prune_after_steps
        due_by_epochs = self.prune_after_epochs and trainer.current_epoch >= self.prune_after_epochs
        if due_by_steps or due_by_epochs:
            self._prune(trainer, pl_module)
            self._zero_optimizer_state(trainer)

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        # Masked gradients keep momentum / Adam moments of pruned weights at zero (and out of
        # gradient clipping); masked_fill, since an inf gradient times 0 would be NaN.
        for p, pruned in self._pruned:
            if p.grad is not None:
                p.grad.masked_fill_(pruned, 0)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._enforce(pl_module)  # e.g. after a weight-averaging callback swapped its weights in

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._enforce(pl_module)

    def on_predict_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._enforce(pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._enforce(pl_module)  # SWA/EMA copy their average into the model at train end

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log_measured_sparsity(pl_module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log_measured_sparsity(pl_module, "test")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for handle in self._hook_handles:
            handle.remove()
        self._hook_handles = []

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """The saved weights are masked too (a weight-averaging callback may put its own there)."""
        state = checkpoint.get("state_dict")
        if self.masks is None or not isinstance(state, dict):
            return
        for name, mask in self.masks.items():
            value = state.get(name)
            if isinstance(value, Tensor) and value.shape == mask.shape:
                state[name] = value.masked_fill(~mask.to(value.device), 0)

    def state_dict(self) -> dict[str, Any]:
        masks = None if self.masks is None else {k: v.cpu() for k, v in self.masks.items()}
        return {
            "masks": masks,
            "record": None if self.record is None else self.record.to_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.masks = state_dict.get("masks")
        record = state_dict.get("record", state_dict.get("summary"))  # "summary": before schema 2
        self.record = None if record is None else RunRecord.from_dict(record)

    # -- the work -------------------------------------------------------------------------------

    def _prune(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        data = self._saliency_data(trainer)
        config = self.resolved_config(trainer)
        rank_zero_info(
            f"PruningCallback: computing a {config.method} mask at sparsity {config.sparsity} "
            f"(T = {config.steps}, seed {config.seed}) ..."
        )
        # rank zero keeps the step masks (under DDP the others' are equal, or overwritten by its)
        keep_steps = self.save_step_masks and trainer.is_global_zero
        self._step_masks = StepMaskWriter() if keep_steps else None
        result = self.compute(
            pl_module,
            data,
            amp_dtype=config.amp_dtype,
            grad_reduce=self._grad_reduce(trainer),
            progress=trainer.is_global_zero and trainer.progress_bar_callback is not None,
            step_masks=self._step_masks,
        )
        if trainer.world_size > 1 and not config.criterion.needs_data:
            # no gradient is all-reduced: float kernels could differ by a bit between ranks
            _broadcast_masks(result.masks)
        if self.verify_ranks and trainer.world_size > 1:
            self._verify_identical(trainer, result.masks)
        self._finish(trainer, pl_module, result.masks, config, result, data)

    def compute(
        self,
        model: torch.nn.Module,
        data: Iterable | None,
        *,
        amp_dtype: torch.dtype | None = None,
        grad_reduce: Any = None,
        progress: bool = False,
        step_masks: StepMaskWriter | None = None,
    ) -> PruningResult:
        """The mask computation of a fit, per-step records included: exactly what `fit` runs on
        the model and the saliency data (and what benchmarks/mask_time.py times). It warns at the
        first step whose saliency is zero; ``step_masks`` receives every step's mask. An
        ``invert``/``saliency_data`` run also computes the method's own mask (untimed), which the
        record compares with the ablated one."""
        config = dataclasses.replace(self.resolved_config(), amp_dtype=amp_dtype)
        warn_zero = saliency_zero_warning(config)

        def on_step(event: StepEvent) -> None:
            warn_zero(event)
            if step_masks is not None:
                step_masks(event)

        return run_pruning(
            model,
            data,
            config,
            grad_reduce=grad_reduce,
            progress=progress,
            record=True,
            on_step=on_step,
            reference=True,
        )

    def _finish(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        masks: dict[str, Tensor],
        config: PruningConfig,
        result: PruningResult | None,
        data: Iterable | None,
    ) -> None:
        """Ablate a loaded mask, write an ablation's theta0, measure the mask on the dense theta0,
        then zero the pruned weights, then report."""
        if result is None:  # a loaded mask: its ablation happens here (run_pruning's otherwise)
            unablated, masks = masks, ablate_masks(masks, config.ablation, config.ablation_seed)
            theta0 = ablated_weights(pl_module, masks, config.ablation, config.ablation_seed)
        else:
            unablated = masks if result.unablated is None else result.unablated
            theta0 = result.theta0
        if theta0 is not None:  # reinit / shuffle_weights: the one step that changes theta0
            load_weights(pl_module, theta0)
            if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
                for param in pl_module.parameters():  # every rank starts from rank 0's draw
                    dist.broadcast(param.data, src=0)
        self.record = self._measure(trainer, pl_module, masks, config, result, data, unablated)
        self._install(trainer, pl_module, masks)
        if self.save_masks_path and trainer.is_global_zero:
            torch.save({k: v.cpu() for k, v in masks.items()}, self.save_masks_path)
        self._report(trainer, result)

    def _install(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, masks: dict[str, Tensor]
    ) -> None:
        """Zero the pruned weights and keep them at zero after every optimizer step."""
        params = dict(pl_module.named_parameters())
        self.masks = {k: v.to(params[k].device, torch.bool) for k, v in masks.items()}
        self._pruned = [(params[k], ~m) for k, m in self.masks.items()]
        self._enforce(pl_module)

        def zero_pruned(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            _zero(self._pruned)

        for handle in self._hook_handles:
            handle.remove()
        # every optimizer: a zero-preserving update is a bet on every path zeroing every state
        # (a restored momentum, Adam with eps=0 giving 0/0, a custom optimizer)
        self._hook_handles = [o.register_step_post_hook(zero_pruned) for o in trainer.optimizers]

    def _enforce(self, pl_module: pl.LightningModule) -> None:
        """Pruned weights to exactly 0 (masks follow the weights if the module moved)."""
        if self.masks is None:
            return
        params = dict(pl_module.named_parameters())
        if not self._pruned or any(
            p is not params.get(k) or pruned.device != p.device
            for k, (p, pruned) in zip(self.masks, self._pruned, strict=True)
        ):
            self._pruned = [
                (params[k], ~m.to(params[k].device, torch.bool)) for k, m in self.masks.items()
            ]
        _zero(self._pruned)

    def _saliency_data(self, trainer: pl.Trainer) -> Iterable:
        """A fresh loader over the training set, sharded across ranks with a seeded order.

        Never the trainer's own iterator: iterating that here would disturb training. Full
        batches only (as in the official code), and a new shuffle on each pass over the data.
        """
        loader = train_loader(trainer)
        if not isinstance(loader, DataLoader) or not hasattr(loader.dataset, "__len__"):
            return loader
        seed = self.resolved_config(trainer).seed
        return seeded_loader(loader, seed, trainer.world_size, trainer.global_rank)

    @staticmethod
    def _grad_reduce(trainer: pl.Trainer):
        """Average saliency gradients over ranks, so every rank scores the same numbers."""
        if trainer.world_size == 1 or not dist.is_available() or not dist.is_initialized():
            return None
        world_size = trainer.world_size

        def reduce(grads: list[Tensor]) -> None:
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            flat.div_(world_size)
            for g, part in zip(grads, split_flat(flat, [g.shape for g in grads]), strict=True):
                g.copy_(part)

        return reduce

    def _verify_identical(self, trainer: pl.Trainer, masks: dict[str, Tensor]) -> None:
        """Fail loudly, on every rank, unless all ranks hold the bit-identical mask."""
        local = mask_checksum(masks).to(trainer.strategy.root_device)
        gathered = trainer.strategy.all_gather(local)
        if not bool((gathered == gathered[0]).all()):
            raise RuntimeError(
                "PruningCallback: the pruning masks differ across DDP ranks (checksums "
                f"{gathered.sum(dim=-1).tolist()}). Training would diverge; this is a bug or "
                "non-deterministic saliency data. Please report it with your config."
            )

    def _zero_optimizer_state(self, trainer: pl.Trainer) -> None:
        """Zero the optimizer state (momentum, moments) of pruned entries.

        Called once the state is final: after early pruning (the dense steps filled it) and at
        train start (Lightning has just restored a checkpoint's state).
        """
        for optimizer in trainer.optimizers:
            for param, pruned in self._pruned:
                for value in optimizer.state.get(param, {}).values():
                    if isinstance(value, Tensor) and value.shape == param.shape:
                        value.masked_fill_(pruned.to(value.device), 0)

    def _load_masks(self, pl_module: pl.LightningModule) -> dict[str, Tensor]:
        not_a_mask = ConfigError(
            f"--pruning.masks_path {self.masks_path!r} is not a mask file. Point it at a file "
            "written by --pruning.save_masks_path."
        )
        try:
            masks = torch.load(self.masks_path, map_location="cpu", weights_only=True)
        except Exception:  # a corrupt or foreign file: torch's own advice would mislead
            raise not_a_mask from None
        if not isinstance(masks, dict) or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in masks.items()
        ):
            raise not_a_mask
        check_masks(pl_module, masks, include=self.config.include, exclude=self.config.exclude)
        kept, total = kept_total(kept_counts(masks))
        file_sparsity, sparsity = 1 - kept / total, self.config.sparsity
        if sparsity > 0 and abs(file_sparsity - sparsity) > 1 / total:
            raise ConfigError(
                f"--pruning.masks_path has sparsity {file_sparsity:.6f} but --pruning.sparsity is "
                f"{sparsity}. Drop --pruning.sparsity (the file decides) or fix it."
            )
        return masks

    # -- reporting ------------------------------------------------------------------------------

    def _measure(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        masks: dict[str, Tensor],
        config: PruningConfig,
        result: PruningResult | None,
        data: Iterable | None,
        unablated: dict[str, Tensor],
    ) -> RunRecord:
        """What pruning.json holds, measured on every rank while theta0 is still dense;
        ``unablated``: the mask before a mask-level ablation (``masks`` otherwise).

        The saliency pass runs on every rank with its gradient all-reduced (a SyncBatchNorm in
        train mode is a collective), so all ranks compute the same numbers.
        """
        batch = _first_batch(data) if data is not None else None
        input_shape = tuple(batch[0].shape[1:]) if batch is not None else _input_shape(pl_module)
        effective = None
        if input_shape is not None:
            effective = {
                n: k
                for n, (k, _) in kept_counts(effective_masks(pl_module, masks, input_shape)).items()
            }
        # a path from input to output exists iff some kept weight lies on one
        connected = effective is None or sum(effective.values()) > 0
        saliency = {}
        if batch is not None:
            saliency = force_saliency_views(
                pl_module, masks, [batch], grad_reduce=self._grad_reduce(trainer)
            )
        return RunRecord.measure(
            config,
            kept_counts(masks),
            connected=connected,
            saliency=saliency,
            result=result,
            effective=effective,
            **self.run_options(),
            pruned_at_step=trainer.global_step,
            pruned_at_epoch=trainer.current_epoch,
            input_shape=None if input_shape is None else list(input_shape),
            mask_sha256=mask_digest(masks),
            unablated_mask_sha256=mask_digest(unablated),
            ablation_iou=mask_iou(masks, unablated),
            world_size=trainer.world_size,
            device_type=pl_module.device.type,
            versions=versions(),
        )

    def _report(self, trainer: pl.Trainer, result: PruningResult | None) -> None:
        """Warn about collapse, log scalars/figure/history, write pruning.json (rank zero)."""
        record = self.record
        assert record is not None
        log_dir = _log_dir(trainer)  # a collective under DDP: every rank asks
        if self.save_step_masks and result is not None and log_dir is not None:
            record.step_masks = STEP_MASKS  # on every rank: the record is the same everywhere
        if not trainer.is_global_zero:  # the masks are identical on every rank
            return
        self._save_step_masks(log_dir)
        collapsed, connected = record.collapsed_layers, not record.disconnected
        if not connected:
            rank_zero_warn(
                "PRUNED NETWORK IS DISCONNECTED: no path from input to output survives this mask, "
                "so the output no longer depends on the input and training can only reach chance "
                f"accuracy. Lower the sparsity ({record.sparsity}) or try another method.",
                category=UserWarning,
            )
        if collapsed:
            rank_zero_warn(
                f"Layer collapse: the mask removed {len(collapsed)} layer(s) entirely: "
                f"{', '.join(collapsed)}."
                + (
                    " A path from input to output still survives (e.g. through residual "
                    "connections)."
                    if connected
                    else ""
                )
            )
        effective = (
            ""
            if record.effective_sparsity is None
            else f", effective {record.effective_sparsity:.4%}"
        )
        rank_zero_info(
            f"PruningCallback: kept {record.kept:,} of {record.total:,} prunable weights "
            f"(sparsity {record.global_sparsity:.4%}{effective})"
            + (f" in {result.seconds:.1f} s." if result is not None else ".")
        )
        for logger in trainer.loggers:
            logger.log_metrics(report.scalars(record), step=trainer.global_step)
            for step, metrics in report.step_scalars(record):
                logger.log_metrics(metrics, step=step)
        if self.log_figure:
            self._log_figure(trainer, log_dir, report.figure(record))
        self._write_record(trainer, log_dir)

    def _save_step_masks(self, log_dir: str | None) -> None:
        """step_masks.pt in the run's log dir, from the packed masks kept while pruning."""
        writer, self._step_masks = self._step_masks, None
        if writer is None:
            return
        if log_dir is None:
            rank_zero_warn(
                "--pruning.save_step_masks writes into the run's log dir, and this trainer has "
                "no logger: no step masks were saved. Add a logger or drop the option."
            )
            return
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        writer.save(Path(log_dir) / STEP_MASKS)

    def _write_record(self, trainer: pl.Trainer, log_dir: str | None) -> None:
        """pruning.json in the run's log dir, and to the loggers that keep files (rank zero;
        nothing without a logger or record)."""
        if log_dir is None or self.record is None or not trainer.is_global_zero:
            return
        path = Path(log_dir) / PRUNING_JSON
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.record.to_json())
        report_loggers.log_file(trainer.loggers, path)  # e.g. an MLflow or W&B artifact

    @staticmethod
    def _log_figure(trainer: pl.Trainer, log_dir: str | None, figure: Any) -> None:
        """The per-layer figure to every logger of the run, and as a PNG in its log dir."""
        report_loggers.log_figure(
            trainer.loggers, "pruning/kept_fraction_per_layer", figure, trainer.global_step
        )
        if log_dir is not None:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            figure.savefig(Path(log_dir) / "kept_fraction_per_layer.png", dpi=120)

    def _log_measured_sparsity(self, pl_module: pl.LightningModule, stage: str) -> None:
        """Sparsity read off the weights themselves: what a checkpoint really holds."""
        trainer = pl_module.trainer
        if trainer.sanity_checking or (not self.enabled and trainer.state.fn == TrainerFn.FITTING):
            return
        params = prunable_parameters(pl_module, self.config.include, self.config.exclude)
        zeros = sum(int((p == 0).sum()) for p in params.values())
        total = sum(p.numel() for p in params.values())
        # equal on every rank; sync_dist keeps Lightning's epoch-level reduction well defined
        pl_module.log(f"{stage}/sparsity", zeros / total, sync_dist=True)


def autocast_dtype(trainer: pl.Trainer) -> torch.dtype | None:
    """The autocast dtype of a mixed-precision run (None otherwise): the saliency passes run at
    the precision training runs at; scores and the selection stay float32."""
    return {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(str(trainer.precision))


def saliency_zero_warning(config: PruningConfig):
    """A step hook that warns once, at the first step whose recorded FORCE saliency S(m_t) is
    exactly 0 (no gradient signal passes the mask), naming the layers already gone then."""
    warned = False

    def watch(event: StepEvent) -> None:
        nonlocal warned
        if warned or event.saliency != 0:  # None (not measured) is never zero
            return
        warned = True
        gone = [name for name, kept in event.kept.items() if kept == 0]
        rank_zero_warn(
            f"{config.method}: the FORCE saliency of the mask reached 0 at step {event.step} of "
            f"{config.steps}: no gradient signal passes it. Layers already gone: "
            f"{', '.join(gone) if gone else 'none'}. Lower the sparsity, or raise the steps."
        )

    return watch


def _zero(pairs: list[tuple[Tensor, Tensor]]) -> None:
    """``p[pruned] = 0`` for each pair: NaN-safe (a multiply would turn inf or NaN into NaN)."""
    with torch.no_grad():
        for p, pruned in pairs:
            p.masked_fill_(pruned, 0)


def _log_dir(trainer: pl.Trainer) -> str | None:
    """Where the logger writes, None without one. A collective under DDP: call on every rank."""
    return trainer.log_dir if trainer.loggers else None


def _broadcast_masks(masks: dict[str, Tensor]) -> None:
    """Overwrite every rank's masks with rank 0's, in place (one flat broadcast)."""
    flat = torch.cat([m.reshape(-1) for m in masks.values()]).to(torch.uint8)
    dist.broadcast(flat, src=0)
    parts = split_flat(flat, [m.shape for m in masks.values()])
    for mask, part in zip(masks.values(), parts, strict=True):
        mask.copy_(part.bool())


def mask_checksum(masks: dict[str, Tensor]) -> Tensor:
    """Per tensor: kept count and the sum of kept positions; equal masks give equal checksums."""
    rows = []
    for mask in masks.values():
        flat = mask.reshape(-1).long()
        positions = torch.arange(1, flat.numel() + 1, device=flat.device)
        rows.append(torch.stack([flat.sum(), (flat * positions).sum()]))
    return torch.stack(rows)


def _first_batch(data: Iterable) -> tuple[Tensor, Tensor] | None:
    for batch in data:
        return batch
    return None


def _input_shape(pl_module: pl.LightningModule) -> tuple[int, ...] | None:
    """(C, H, W) from an ImageClassifier's hyperparameters, when known."""
    hp = getattr(pl_module, "hparams", {})
    if "in_channels" in hp and "image_size" in hp:
        return (hp["in_channels"], hp["image_size"], hp["image_size"])
    return None
