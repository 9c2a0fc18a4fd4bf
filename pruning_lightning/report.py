"""What a pruned run logs about its mask: the scalars, the per-step history and the per-layer
figure, all computed from the run's :class:`~pruning_lightning.record.RunRecord` (what the record
describes is what is logged). Plain data in, plain data out: no Lightning here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from matplotlib.figure import Figure

from pruning_lightning.record import RunRecord


def scalars(record: RunRecord) -> dict[str, float]:
    """The scalars logged once the mask is known."""
    metrics = {"pruning/global_sparsity": record.global_sparsity}
    if record.effective_sparsity is not None:
        metrics["pruning/effective_sparsity"] = record.effective_sparsity
    metrics.update({f"pruning/kept_fraction/{n}": k / t for n, (k, t) in record.counts.items()})
    metrics.update({f"pruning/force_saliency_{v}": s for v, s in record.force_saliency.items()})
    if record.mask_seconds is not None:
        metrics["pruning/mask_seconds"] = record.mask_seconds
    return metrics


def step_scalars(record: RunRecord) -> list[tuple[int, dict[str, float]]]:
    """(step, scalars) per step of a progressive run: kept, pruned, recovered fractions and
    the FORCE saliency of the step's mask where recorded."""
    total = record.total
    out = []
    for entry in record.history:
        metrics = {
            "pruning/step/kept": sum(entry["kept"].values()) / total,
            "pruning/step/pruned": entry["pruned"] / total,
            "pruning/step/recovered": entry["recovered"] / total,
        }
        if entry.get("saliency") is not None:
            metrics["pruning/step/force_saliency"] = entry["saliency"]
        out.append((entry["step"], metrics))
    return out


def hyperparameters(options: Mapping[str, Any]) -> dict[str, Any]:
    """The run's resolved options (the record's first fields) as loggers take hyperparameters."""
    return {f"pruning/{key}": _loggable(value) for key, value in options.items()}


def _loggable(value: Any) -> Any:
    return ",".join(value) if isinstance(value, list) else value


def figure(record: RunRecord) -> Figure:
    return layer_density_figure(record.counts, title=f"{record.method}, sparsity {record.sparsity}")


def short_layer_name(name: str) -> str:
    """A parameter name as figures show it: no ``backbone.`` prefix, no ``.weight``."""
    return name.removeprefix("backbone.").removesuffix(".weight")


def layer_density_figure(counts: Mapping[str, tuple[int, int]], title: str = "") -> Figure:
    """Bar chart of the kept fraction of every prunable layer, input to output (paper Fig. 8)."""
    names = [short_layer_name(name) for name in counts]
    fractions = [kept / total for kept, total in counts.values()]
    fig = Figure(figsize=(max(6.0, 0.18 * len(names)), 3.5), layout="constrained")
    ax = fig.subplots()
    ax.bar(range(len(names)), fractions, color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
    ax.set_ylabel("fraction of weights kept")
    ax.set_xlabel("layer (input to output)")
    ax.set_ylim(0, 1)
    if title:
        ax.set_title(title)
    return fig
