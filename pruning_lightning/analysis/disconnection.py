"""How often does a mask cut the network, and how much does it depend on the seed? (no training)

    pruning-figures disconnection --config configs/cifar10_resnet50.yaml \\
        --set data.data_dir=DATA --widths 16 --methods force iter_snip snip \\
        --sparsities 0.99 0.995 --steps 60 --seeds 0 1 2 3 4 5 6 7 8 9 --out study/

Progressive masks are chaotic: whether a FORCE mask at 99.5% keeps an input-output path can flip
with one seed, or with the float rounding of another CPU. This study shows that risk before
anyone trains. For every seed and width the model and the training loader are built from a config
exactly as ``pruning-lightning fit`` builds them (the same seed, so the same theta0); every
setting's mask is computed by :func:`run_pruning` on a loader seeded as ``fit`` seeds it, with the
FORCE saliency recorded at every step. Per mask (one row of ``disconnection.csv``): whether a path
survives (the effective mask of :mod:`~pruning_lightning.pruning.connectivity`, the record's rule),
the effective sparsity, the collapsed layers, and the first step whose saliency is exactly 0 with
the layers gone then (the callback's warning). Across seeds (``seed_iou.csv``): the IoU of every
pair of one setting's masks. Each mask is also written to ``masks/`` (a file
``pruning-figures compare --masks`` reads), so an interrupted study continues where it stopped.
"""

from __future__ import annotations

import itertools
import json
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pruning_lightning.analysis.results import read_table, write_table
from pruning_lightning.errors import ConfigError
from pruning_lightning.pruning.ablations import mask_iou
from pruning_lightning.pruning.config import PruningConfig
from pruning_lightning.pruning.connectivity import effective_masks
from pruning_lightning.pruning.engine import run_pruning
from pruning_lightning.pruning.masks import collapsed_layers, kept_counts, kept_total
from pruning_lightning.pruning.progressive import StepEvent
from pruning_lightning.pruning.registry import get_criterion

MASKS_CSV = "disconnection.csv"
IOU_CSV = "seed_iou.csv"
SUMMARY_CSV = "summary.csv"
FIGURE = "disconnection.png"
MASK_DIR = "masks"

#: The columns of a setting, the key of every table here.
SETTING = ("method", "sparsity", "steps", "width")
#: The columns of :data:`MASKS_CSV`.
COLUMNS = (
    *SETTING,
    "seed",
    "disconnected",
    "effective_sparsity",
    "collapsed_layers",
    "collapsed",
    "saliency_zero_step",
    "gone_at_zero",
    "final_saliency",
    "kept",
    "total",
    "mask_seconds",
)


@dataclass(frozen=True)
class Setting:
    """One mask computation of the study, up to its seed."""

    method: str
    sparsity: float
    steps: int  # T as resolved: 1 for one-shot methods
    width: int | None  # the backbone's base width (None: the config's own)

    @property
    def key(self) -> str:
        """``force-s0.995-T60-w16``: file names and labels."""
        width = "" if self.width is None else f"-w{self.width}"
        return f"{self.method}-s{self.sparsity:g}-T{self.steps}{width}"

    def as_row(self) -> dict[str, Any]:
        return {"method": self.method, "sparsity": self.sparsity, "steps": self.steps,
                "width": self.width}  # fmt: skip


def settings(
    methods: Sequence[str],
    sparsities: Sequence[float],
    steps: Sequence[int],
    widths: Sequence[int | None],
) -> list[Setting]:
    """Every (width, method, sparsity, T); a one-shot method gets one setting at T = 1."""
    if not methods or not sparsities or not steps or not widths:
        raise ConfigError("The study needs at least one method, sparsity, T and width.")
    for s in sparsities:
        if not 0.0 < s < 1.0:
            raise ConfigError(f"--sparsities must lie in (0, 1), got {s}. Write 99% as 0.99.")
    for t in steps:
        if t < 1:
            raise ConfigError(f"--steps must be integers >= 1, got {list(steps)}.")
    out: list[Setting] = []
    for width, method, sparsity in itertools.product(widths, methods, sparsities):
        progressive = get_criterion(method).progressive
        for t in steps if progressive else [1]:
            setting = Setting(method, float(sparsity), int(t), width)
            if setting not in out:
                out.append(setting)
    return out


class ZeroSaliencyWatch:
    """A step hook: the first step whose recorded FORCE saliency is exactly 0, and the layers
    with no weight left at that step (what the callback warns about during a fit)."""

    def __init__(self) -> None:
        self.step: int | None = None
        self.gone: list[str] = []
        self.last: float | None = None  # S(m_T), the saliency of the final mask

    def __call__(self, event: StepEvent) -> None:
        self.last = event.saliency
        if self.step is None and event.saliency == 0:
            self.step = event.step
            self.gone = [name for name, kept in event.kept.items() if kept == 0]


def measure_mask(
    model: nn.Module,
    data: Iterable,
    setting: Setting,
    seed: int,
    input_shape: Sequence[int],
    num_batches: int = 1,
    schedule: str = "exp",
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """One row of :data:`MASKS_CSV` and the mask (name -> bool tensor on the host)."""
    config = PruningConfig(
        setting.method,
        setting.sparsity,
        steps=setting.steps if get_criterion(setting.method).progressive else None,
        schedule=schedule,
        num_batches=num_batches,
        seed=seed,
        input_shape=tuple(input_shape),
    )
    watch = ZeroSaliencyWatch()
    result = run_pruning(model, data, config, record=True, on_step=watch)
    masks = {name: m.detach().to("cpu") for name, m in result.masks.items()}
    return mask_row(model, masks, setting, seed, input_shape, watch, result.seconds), masks


def mask_row(
    model: nn.Module,
    masks: Mapping[str, Tensor],
    setting: Setting,
    seed: int,
    input_shape: Sequence[int],
    watch: ZeroSaliencyWatch,
    seconds: float,
) -> dict[str, Any]:
    """What the study reports of one mask: path, effective sparsity, collapse, saliency."""
    device = next(model.parameters()).device
    on_device = {n: m.to(device) for n, m in masks.items()}
    kept, total = kept_total(kept_counts(masks))
    effective, _ = kept_total(kept_counts(effective_masks(model, on_device, input_shape)))
    collapsed = collapsed_layers(masks)
    return {
        **setting.as_row(),
        "seed": seed,
        "disconnected": effective == 0,
        "effective_sparsity": 1.0 - effective / total,
        "collapsed_layers": len(collapsed),
        "collapsed": ";".join(collapsed),
        "saliency_zero_step": watch.step,
        "gone_at_zero": ";".join(watch.gone),
        "final_saliency": watch.last,
        "kept": kept,
        "total": total,
        "mask_seconds": seconds,
    }


def mask_path(out: str | Path, setting: Setting, seed: int) -> Path:
    return Path(out) / MASK_DIR / f"{setting.key}-seed{seed}.pt"


def load_mask(path: Path) -> dict[str, Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def run_study(
    build: Callable[[int, int | None], tuple[nn.Module, Iterable, Sequence[int]]],
    plan: Sequence[Setting],
    seeds: Sequence[int],
    out: str | Path,
    *,
    num_batches: int = 1,
    schedule: str = "exp",
    log: Callable[[str], None] = print,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Measure every setting on every seed, writing each mask and the table as it goes.

    ``build(seed, width)`` returns ``(model, the saliency loader seeded as fit seeds it, input
    shape)``; every mask of that seed and width starts on the same batches (the loader's order
    is a function of the seed and the pass: ``batches.seeded_loader``);
    masks already in ``out/masks`` with a row in ``out/disconnection.csv`` are not recomputed.
    Returns the per-mask rows and the pairwise seed-IoU rows.
    """
    if not seeds:
        raise ConfigError("The study needs at least one seed.")
    out = Path(out)
    (out / MASK_DIR).mkdir(parents=True, exist_ok=True)
    table = out / MASKS_CSV
    done = {(_setting_of(r), r["seed"]): r for r in read_table(table)} if table.is_file() else {}
    rows: list[dict[str, Any]] = []
    widths = list(dict.fromkeys(s.width for s in plan))
    for seed, width in itertools.product(seeds, widths):
        todo = [s for s in plan if s.width == width]
        missing = [
            s for s in todo if (s, seed) not in done or not mask_path(out, s, seed).is_file()
        ]
        rows += [done[(s, seed)] for s in todo if s not in missing]
        if not missing:
            continue
        model, loader, input_shape = build(seed, width)
        for setting in missing:
            row, masks = measure_mask(
                model, loader, setting, seed, input_shape, num_batches, schedule
            )
            torch.save(masks, mask_path(out, setting, seed))
            rows.append(row)
            write_table(_ordered(rows, plan, seeds), table, COLUMNS)
            cut = "DISCONNECTED" if row["disconnected"] else "connected"
            log(
                f"{setting.key} seed {seed}: {cut}, {row['collapsed_layers']} collapsed layers, "
                f"saliency zero at step {row['saliency_zero_step']}, {row['mask_seconds']:.1f} s"
            )
    rows = _ordered(rows, plan, seeds)
    write_table(rows, table, COLUMNS)
    iou = seed_iou_rows({(s, seed): mask_path(out, s, seed) for s in plan for seed in seeds})
    write_table(iou, out / IOU_CSV, (*SETTING, "seed_a", "seed_b", "iou"))
    write_table(summary_rows(rows, iou), out / SUMMARY_CSV, (*SETTING, "masks"))
    return rows, iou


def _setting_of(row: Mapping[str, Any]) -> Setting:
    width = row.get("width")
    return Setting(
        str(row["method"]),
        float(row["sparsity"]),
        int(row["steps"]),
        None if width in (None, "") else int(width),
    )


def _ordered(rows: Sequence[dict[str, Any]], plan: Sequence[Setting], seeds: Sequence[int]):
    order = {(s, seed): i for i, (s, seed) in enumerate(itertools.product(plan, seeds))}
    return sorted(rows, key=lambda r: order.get((_setting_of(r), r["seed"]), len(order)))


def seed_iou_rows(paths: Mapping[tuple[Setting, int], Path]) -> list[dict[str, Any]]:
    """The IoU of every pair of seeds of each setting, reading two masks at a time."""
    by_setting: dict[Setting, list[int]] = {}
    for setting, seed in paths:
        by_setting.setdefault(setting, []).append(seed)
    rows = []
    for setting, seeds in by_setting.items():
        cache: dict[int, dict[str, Tensor]] = {}
        for a, b in itertools.combinations(seeds, 2):
            for s in (a, b):
                if s not in cache:
                    cache[s] = load_mask(paths[(setting, s)])
            rows.append({**setting.as_row(), "seed_a": a, "seed_b": b,
                         "iou": mask_iou(cache[a], cache[b])})  # fmt: skip
    return rows


def summary_rows(
    rows: Sequence[Mapping[str, Any]], iou: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Per setting: masks, how many disconnected / with a collapsed layer / with zero saliency,
    the median step of zero saliency, the effective sparsity range and the mean seed IoU."""
    groups: dict[Setting, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(_setting_of(r), []).append(r)
    ious: dict[Setting, list[float]] = {}
    for r in iou:
        ious.setdefault(_setting_of(r), []).append(float(r["iou"]))
    out = []
    for setting, group in groups.items():
        zero = [int(r["saliency_zero_step"]) for r in group if _present(r["saliency_zero_step"])]
        eff = [float(r["effective_sparsity"]) for r in group]
        pair = ious.get(setting, [])
        out.append(
            {
                **setting.as_row(),
                "masks": len(group),
                "disconnected": sum(r["disconnected"] is True for r in group),
                "with_collapsed_layer": sum(int(r["collapsed_layers"]) > 0 for r in group),
                "saliency_zero": len(zero),
                "median_zero_step": statistics.median(zero) if zero else None,
                "effective_sparsity_min": min(eff),
                "effective_sparsity_max": max(eff),
                "seed_iou_mean": statistics.fmean(pair) if pair else None,
                "seed_iou_min": min(pair) if pair else None,
                "seed_iou_max": max(pair) if pair else None,
            }
        )
    return out


def _present(value: Any) -> bool:
    return value is not None and value != ""


def write_study_record(out: str | Path, arguments: Mapping[str, Any]) -> Path:
    """``study.json``: the command's resolved options and the versions that ran."""
    from pruning_lightning.record import versions

    path = Path(out) / "study.json"
    path.write_text(json.dumps({"options": dict(arguments), "versions": versions()}, indent=2))
    return path
