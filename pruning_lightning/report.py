"""What a pruned run reports about its mask: the ``pruning.json`` schema, the scalars it logs and
the per-layer figure.

:class:`PruningSummary` is the one definition of ``pruning.json``: the callback writes it and
:mod:`pruning_lightning.analysis.results` reads it back through :meth:`PruningSummary.from_dict`,
which checks it. Plain data in, plain data out: no Lightning here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from matplotlib.figure import Figure

from pruning_lightning.pruning.masks import kept_total

if TYPE_CHECKING:
    from pruning_lightning.pruning.engine import PruningResult


@dataclass
class PruningSummary:
    """The content of ``pruning.json``, measured on the dense theta0 before pruned weights are
    zeroed (docs/METHODS.md "What a run reports")."""

    method: str
    sparsity: float
    steps: int | None = None
    schedule: str | None = None
    num_batches: int | None = None
    seed: int | None = None
    masks_path: str | None = None
    prune_after_steps: int = 0
    prune_after_epochs: int = 0
    mask_seconds: float | None = None  # None for a mask loaded from a file or a checkpoint
    global_sparsity: float = 0.0
    # 1 - (kept weights on an input-output path) / total; None where no input shape is known
    effective_sparsity: float | None = None
    # name -> {"kept", "total"} and, with effective_sparsity, "effective" (kept on a path)
    layers: dict[str, dict[str, int]] = field(default_factory=dict)
    collapsed_layers: list[str] = field(default_factory=list)  # layers with no weight left
    disconnected: bool = False  # no input-output path survives
    force_saliency: dict[str, float] = field(default_factory=dict)  # view -> S(m)
    history: list[dict[str, Any]] = field(default_factory=list)  # per step of a progressive run

    @classmethod
    def measure(
        cls,
        options: Mapping[str, Any],
        counts: Mapping[str, tuple[int, int]],
        *,
        connected: bool,
        saliency: Mapping[str, float],
        result: PruningResult | None,
        effective: Mapping[str, int] | None = None,
    ) -> PruningSummary:
        """From the run's options, the per-layer (kept, total) counts, the per-layer effective
        kept counts (None: unknown) and the measurements."""
        kept, total = kept_total(counts)
        known = {f.name for f in fields(cls)}
        layers = {name: {"kept": k, "total": t} for name, (k, t) in counts.items()}
        if effective is not None:
            for name, entry in layers.items():
                entry["effective"] = effective[name]
        return cls(
            **{k: v for k, v in options.items() if k in known},
            layers=layers,
            mask_seconds=None if result is None else result.seconds,
            global_sparsity=1 - kept / total,
            effective_sparsity=(
                None if effective is None else 1 - sum(effective.values()) / total
            ),
            collapsed_layers=[name for name, (k, _) in counts.items() if k == 0],
            disconnected=not connected,
            force_saliency=dict(saliency),
            history=[
                {
                    "step": r.step,
                    "kept": r.kept,
                    "pruned": r.pruned,
                    "recovered": r.recovered,
                    "saliency": r.saliency,
                }
                for r in (result.steps if result is not None else [])
            ],
        )

    @property
    def counts(self) -> dict[str, tuple[int, int]]:
        return {name: (entry["kept"], entry["total"]) for name, entry in self.layers.items()}

    @property
    def kept(self) -> int:
        return kept_total(self.counts)[0]

    @property
    def total(self) -> int:
        return kept_total(self.counts)[1]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, data: Any) -> PruningSummary:
        """Check and load a parsed ``pruning.json``; ValueError naming the first problem."""
        problem = _problem(data)
        if problem:
            raise ValueError(problem)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def scalars(self) -> dict[str, float]:
        """The scalars logged once the mask is known."""
        metrics = {"pruning/global_sparsity": self.global_sparsity}
        if self.effective_sparsity is not None:
            metrics["pruning/effective_sparsity"] = self.effective_sparsity
        metrics.update({f"pruning/kept_fraction/{n}": k / t for n, (k, t) in self.counts.items()})
        metrics.update({f"pruning/force_saliency_{v}": s for v, s in self.force_saliency.items()})
        if self.mask_seconds is not None:
            metrics["pruning/mask_seconds"] = self.mask_seconds
        return metrics

    def step_scalars(self) -> list[tuple[int, dict[str, float]]]:
        """(step, scalars) per step of a progressive run: kept, pruned, recovered fractions and
        the FORCE saliency of the step's mask where recorded."""
        total = self.total
        out = []
        for record in self.history:
            metrics = {
                "pruning/step/kept": sum(record["kept"].values()) / total,
                "pruning/step/pruned": record["pruned"] / total,
                "pruning/step/recovered": record["recovered"] / total,
            }
            if record.get("saliency") is not None:
                metrics["pruning/step/force_saliency"] = record["saliency"]
            out.append((record["step"], metrics))
        return out

    def figure(self) -> Figure:
        return layer_density_figure(self.counts, title=f"{self.method}, sparsity {self.sparsity}")


def _problem(summary: Any) -> str | None:
    if not isinstance(summary, dict):
        return "the top level is not an object"
    for key in ("method", "sparsity", "layers"):
        if key not in summary:
            return f"the key {key!r} is missing"
    layers = summary["layers"]
    if not isinstance(layers, dict) or not layers:
        return "'layers' is empty or not an object"
    for name, entry in layers.items():
        if (
            not isinstance(entry, dict)
            or not _is_count(entry.get("kept"))
            or not (_is_count(entry.get("total")) and entry["total"] > 0)
        ):
            return f"layer {name!r} lacks integer 'kept' and positive 'total' counts"
        if entry["kept"] > entry["total"]:
            return f"layer {name!r} keeps more weights than it has"
        if "effective" in entry and not (
            _is_count(entry["effective"]) and entry["effective"] <= entry["kept"]
        ):
            return f"layer {name!r} has an 'effective' count that is not in [0, kept]"
    history = summary.get("history", [])
    if not isinstance(history, list):
        return "'history' is not a list"
    for i, record in enumerate(history):
        if not isinstance(record, dict) or not isinstance(record.get("kept"), dict):
            return f"history entry {i} lacks its 'kept' counts"
        for key in ("step", "pruned", "recovered"):
            if not _is_count(record.get(key)):
                return f"history entry {i} lacks an integer {key!r}"
        unknown = set(record["kept"]) - set(layers)
        if unknown:
            return f"history entry {i} names layers not in 'layers': {sorted(unknown)[:3]}"
    return None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


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
