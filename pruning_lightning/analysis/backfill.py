"""Bring the ``pruning.json`` of runs that finished before a field was recorded up to date, once.

``--effective`` (the default): effective sparsity. The mask is in every checkpoint (the
PruningCallback's state) and the network's shape in its hyperparameters, so the effective mask of
a finished run can be computed after the fact, from the same function the callback uses. Only
``effective_sparsity`` and the per-layer ``effective`` counts are written.

``--options``: a record from before schema 2 (``steps``/``seed`` as null, no include, exclude,
temperature) gets the resolved options from the run's own ``config.yaml``
(:func:`~pruning_lightning.record.upgrade_record`); no checkpoint needed.

Everything else in ``pruning.json`` is left as the run wrote it.

    python -m pruning_lightning.analysis.backfill sweep/force-s0.99-seed0 sweep/snip-s0.99-seed0
    python -m pruning_lightning.analysis.backfill --options docs/results/cifar10_reduced/runs
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pruning_lightning.analysis.results import read_config
from pruning_lightning.errors import ConfigError
from pruning_lightning.export import load_pruned_checkpoint
from pruning_lightning.pruning.connectivity import effective_masks
from pruning_lightning.pruning.masks import kept_counts
from pruning_lightning.record import PRUNING_JSON, RunRecord, read_record, upgrade_record


def backfill_run(log_dir: Path) -> RunRecord:
    """Write effective sparsity into ``log_dir/pruning.json`` from the newest checkpoint there."""
    summary_path = log_dir / PRUNING_JSON
    checkpoints = sorted((log_dir / "checkpoints").glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not summary_path.is_file() or not checkpoints:
        raise ConfigError(
            f"{log_dir} needs both {PRUNING_JSON} and a checkpoint in checkpoints/ (a pruned "
            "run's log dir, e.g. RUN/lightning_logs/version_0)."
        )
    summary = read_record(summary_path)
    model, masks, input_shape = load_pruned_checkpoint(checkpoints[-1])
    effective = kept_counts(effective_masks(model, masks, input_shape))
    if set(effective) != set(summary.layers):
        raise ConfigError(
            f"The mask in {checkpoints[-1]} names other layers than {summary_path}: the two are "
            "not from the same run."
        )
    for name, (kept_on_path, _) in effective.items():
        summary.layers[name]["effective"] = kept_on_path
    summary.effective_sparsity = 1 - sum(k for k, _ in effective.values()) / summary.total
    summary_path.write_text(summary.to_json())
    return summary


def upgrade_run(log_dir: Path) -> RunRecord:
    """Resolve the options of ``log_dir/pruning.json`` from the run's ``config.yaml``, in place."""
    path = log_dir / PRUNING_JSON
    record = read_record(path)
    config = read_config(log_dir)
    if not config:
        raise ConfigError(f"{log_dir} has no config.yaml to resolve {path}'s options from.")
    try:
        upgraded = RunRecord.from_dict(upgrade_record(record.to_dict(), config))
    except ConfigError as err:
        raise ConfigError(f"{log_dir}/config.yaml: {err}") from None
    path.write_text(upgraded.to_json())
    return upgraded


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (or their log dirs)")
    parser.add_argument(
        "--options",
        action="store_true",
        help="resolve old records' options (steps, seed, ...) from config.yaml instead",
    )
    args = parser.parse_args(argv)
    try:
        for run in args.runs:
            dirs = sorted({p.parent for p in run.rglob(PRUNING_JSON)})
            if not dirs:
                raise ConfigError(f"No {PRUNING_JSON} under {run}.")
            for log_dir in dirs:
                if args.options:
                    record = upgrade_run(log_dir)
                    print(f"{log_dir}: {record.method}, T = {record.steps}, seed {record.seed}")
                    continue
                summary = backfill_run(log_dir)
                print(
                    f"{log_dir}: sparsity {summary.global_sparsity:.4%}, "
                    f"effective {summary.effective_sparsity:.4%}"
                )
    except ConfigError as err:
        print(f"backfill: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
