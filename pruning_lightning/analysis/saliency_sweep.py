"""FORCE saliency of masks computed for many T and sparsities, without training (Figs. 4, 6, 7).

For every seed the model and data module are built from a config exactly as ``pruning-lightning
fit`` would build them (same seed, so the same theta0); then, per sparsity, the one-shot SNIP mask
and the progressive masks for every T are computed with :func:`run_pruning` on the training data,
and the FORCE saliency of each is measured in both views on the same fixed evaluation batches, so
the ratios to SNIP compare masks and nothing else. Every mask computation starts from a fresh,
identically seeded loader (:func:`~pruning_lightning.pruning.batches.seeded_loader`, as in
``fit``): the first batch FORCE sees is the batch SNIP sees.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Any
from unittest.mock import patch

import torch

from pruning_lightning.errors import ConfigError

VIEWS = ("pruning", "sparsification")


def build_from_config(configs: Sequence[str], overrides: Sequence[str], seed: int) -> tuple:
    """``(model, train loader)`` as the CLI builds them for ``fit`` with ``--seed_everything``."""
    from pruning_lightning.cli import build_cli

    args: list[str] = []
    for config in configs:
        args += ["--config", config]
    args += [*overrides, "--seed_everything", str(seed), "--trainer.logger", "false"]
    with patch.object(sys, "argv", sys.argv[:1]):  # our own options are not the CLI's
        cli = build_cli(args=args, run=False)
    datamodule = cli.datamodule
    datamodule.prepare_data()
    datamodule.setup("fit")
    return cli.model, datamodule.train_dataloader()


def saliency_rows(
    model: torch.nn.Module,
    data: Iterable,
    methods: Sequence[str],
    sparsities: Sequence[float],
    steps: Sequence[int],
    *,
    seed: int = 0,
    schedule: str = "exp",
    num_batches: int = 1,
    eval_batches: int = 1,
) -> list[dict[str, Any]]:
    """One row per (method, sparsity, T) plus the SNIP row per sparsity: both saliency views and
    their ratio to the SNIP mask's at the same sparsity."""
    from pruning_lightning.pruning.engine import PruningConfig, run_pruning
    from pruning_lightning.pruning.saliency import force_saliency

    if not steps or any(t < 1 for t in steps):
        raise ConfigError(f"--steps must be integers >= 1, got {list(steps)}.")
    if eval_batches < 1:
        raise ConfigError(f"--eval-batches must be >= 1, got {eval_batches}.")
    evaluation = []
    for batch in data:
        evaluation.append(batch)
        if len(evaluation) == eval_batches:
            break

    def measure(masks: dict) -> dict[str, float]:
        return {v: force_saliency(model, masks, evaluation, view=v) for v in VIEWS}

    rows = []
    common = {"seed": seed, "schedule": schedule, "num_batches": num_batches}
    for sparsity in sparsities:
        snip = run_pruning(
            model, data, PruningConfig("snip", sparsity, num_batches=num_batches, seed=seed)
        )
        reference = measure(snip.masks)
        rows.append(_row("snip", sparsity, 1, reference, reference, snip.seconds, common))
        for method in methods:
            for t in steps:
                result = run_pruning(
                    model,
                    data,
                    PruningConfig(
                        method,
                        sparsity,
                        steps=t,
                        schedule=schedule,
                        num_batches=num_batches,
                        seed=seed,
                    ),
                )
                rows.append(
                    _row(
                        method,
                        sparsity,
                        t,
                        measure(result.masks),
                        reference,
                        result.seconds,
                        common,
                    )
                )
    return rows


def _row(method, sparsity, steps, saliency, reference, seconds, common) -> dict[str, Any]:
    row = {"method": method, "sparsity": sparsity, "steps": steps, **common}
    for view in VIEWS:
        row[f"saliency_{view}"] = saliency[view]
        row[f"ratio_{view}"] = saliency[view] / reference[view] if reference[view] else None
    row["mask_seconds"] = seconds
    return row
