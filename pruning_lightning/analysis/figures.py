"""The paper's figures, drawn with matplotlib from logged results.

Every function takes plain rows (dicts, as :mod:`pruning_lightning.analysis.results` reads them)
or pruning.json summaries and returns a :class:`~matplotlib.figure.Figure`; the command line in
:mod:`pruning_lightning.analysis.figures_cli` reads the files and saves the PNGs. One colour per
method (its registry entry's) is used by every figure, so a method is recognisable across them.
Accuracies are logged as fractions and drawn in percent.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import matplotlib
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, NullFormatter

from pruning_lightning.analysis.compare import GLOBAL
from pruning_lightning.analysis.results import (
    NO_ABLATION,
    group_rows,
    mean_std,
    require_columns,
    require_unique,
)
from pruning_lightning.errors import ConfigError
from pruning_lightning.pruning.config import ABLATIONS, SALIENCY_DATA
from pruning_lightning.pruning.registry import DENSE, criteria_list, get_criterion, method_names
from pruning_lightning.report import short_layer_name

DENSE_COLOR, DENSE_LABEL = "#000000", "Dense"
# For methods without a registry entry: a fixed colour picked by a stable hash of the name.
_SPARE_COLORS = ("#e377c2", "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39")


def saliency_methods() -> list[str]:
    """Progressive methods whose score is the FORCE saliency's terms (the saliency sweep's)."""
    return [c.name for c in criteria_list() if c.progressive and c.force_saliency_score]


def _subplots(*grid: int, figsize: tuple[float, float], **kwargs: Any) -> tuple[Figure, Any]:
    """A figure outside pyplot's global registry (nothing to close, nothing leaks), drawn by
    the Agg backend when saved, so no display is ever needed."""
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots(*grid, **kwargs)


def method_color(method: str) -> str:
    """The method's colour from the registry; other names get a spare colour fixed by the name."""
    if method == DENSE:
        return DENSE_COLOR
    if method in method_names():
        return get_criterion(method).color
    return _SPARE_COLORS[zlib.crc32(method.encode()) % len(_SPARE_COLORS)]


def method_label(method: str) -> str:
    if method == DENSE:
        return DENSE_LABEL
    return get_criterion(method).label if method in method_names() else method


def sort_methods(methods: Sequence[str]) -> list[str]:
    """Registered methods in registry order (legend order), then dense, then the rest."""
    known = [*method_names(), DENSE]
    unique = list(dict.fromkeys(methods))
    return sorted(unique, key=lambda m: (known.index(m) if m in known else len(known), m))


def remaining_percent(sparsity: float) -> float:
    """Remaining weights in percent, rounded so that 1 - 0.995 prints as 0.5."""
    return round(100.0 * (1.0 - sparsity), 10)


def _remaining_axis(ax: Axes, remaining: Sequence[float]) -> None:
    """Log-scaled x axis of remaining weights, sparser to the right, ticks at the data."""
    ax.set_xscale("log")
    ticks = sorted(set(remaining))
    ax.set_xticks(ticks, [f"{t:.3g}" for t in ticks], rotation=45 if len(ticks) > 6 else 0)
    ax.xaxis.set_minor_formatter(NullFormatter())
    if len(ticks) > 1:
        ax.set_xlim(max(ticks) * 1.25, min(ticks) / 1.25)  # inverted: sparser to the right
    ax.set_xlabel("Remaining weights (%) [log scale]")


def _acc_label(metric: str) -> str:
    names = {"test_acc1": "Test accuracy (%)", "test_acc5": "Top-5 test accuracy (%)"}
    return names.get(metric, f"{metric} (%)")


def _check_fraction(rows: Sequence[dict[str, Any]], metric: str, source: str) -> None:
    for i, row in enumerate(rows, start=1):
        if not 0.0 <= row[metric] <= 1.0:
            raise ConfigError(
                f"{source}, row {i}: {metric} = {row[metric]} is not a fraction in [0, 1] (the "
                "CLI logs accuracies as fractions). Fix the row or regenerate the table."
            )


def _band(ax: Axes, xs, means, stds, color: str, label: str, **line) -> None:
    """Mean line with a shaded +-1 std band."""
    ax.plot(xs, means, color=color, label=label, marker="o", markersize=4, **line)
    lower = [m - s for m, s in zip(means, stds, strict=True)]
    upper = [m + s for m, s in zip(means, stds, strict=True)]
    ax.fill_between(xs, lower, upper, color=color, alpha=0.2, linewidth=0)


def _finish(ax: Axes, title: str) -> None:
    ax.grid(True, which="major", alpha=0.3)
    if title:
        ax.set_title(title)


# -- accuracy against sparsity (Figures 1-3, 5, 10-12) --------------------------------------------


def accuracy_sparsity_figure(
    rows: Sequence[dict[str, Any]],
    metric: str = "test_acc1",
    title: str = "",
    source: str = "the results table",
    effective: bool = False,
) -> Figure:
    """Mean test accuracy over seeds (+-1 std band) against remaining weights, one line per
    method; dense runs (sparsity 0) become a dashed horizontal reference.

    ``effective``: a second panel, sharing the accuracy axis, against the *effective* remaining
    weights (kept weights on an input-output path; column ``effective_sparsity``), each point at
    the mean over the seeds of one nominal sparsity. A disconnected run has none left: it is
    drawn at the axis' sparse end, marked with an x.
    """
    require_columns(rows, numeric=["sparsity", metric], text=["method"], source=source)
    _check_fraction(rows, metric, source)
    require_unique(rows, ["method", "sparsity", "seed"], source)
    dense = [100 * r[metric] for r in rows if r["sparsity"] == 0]
    pruned = [r for r in rows if r["sparsity"] > 0]
    if not pruned:
        raise ConfigError(
            f"{source} has only dense runs (sparsity 0): nothing to plot against sparsity. Run "
            "the sweep with --sparsities above 0."
        )
    if not effective:
        fig, ax = _subplots(figsize=(6.0, 4.2))
        _accuracy_panel(ax, pruned, dense, metric, "sparsity")
        _finish(ax, title)
        return fig
    missing = [r for r in pruned if not isinstance(r.get("effective_sparsity"), int | float)]
    if missing:
        raise ConfigError(
            f"{source} has no effective_sparsity for {len(missing)} pruned run(s) (e.g. "
            f"{missing[0].get('method')} at {missing[0]['sparsity']:g}): their pruning.json "
            "predates it. Re-run them, or drop --effective."
        )
    fig, (left, right) = _subplots(1, 2, figsize=(11.0, 4.2), sharey=True)
    _accuracy_panel(left, pruned, dense, metric, "sparsity")
    _accuracy_panel(right, pruned, dense, metric, "effective_sparsity")
    left.set_title("nominal")
    right.set_title("effective (kept weights on an input-output path)")
    right.set_ylabel("")
    if title:
        fig.suptitle(title)
    for ax in (left, right):
        ax.grid(True, which="major", alpha=0.3)
    return fig


def _accuracy_panel(
    ax: Axes,
    pruned: Sequence[dict[str, Any]],
    dense: Sequence[float],
    metric: str,
    x_column: str,
) -> None:
    """One accuracy-against-remaining-weights panel; x from ``x_column`` (mean over seeds)."""
    floor = min(remaining_percent(r["sparsity"]) for r in pruned) / 4  # where "none left" goes
    xs_all = []
    marked = False
    by_method = group_rows(pruned, ["method"])
    for (method,) in [(m,) for m in sort_methods([k[0] for k in by_method])]:
        groups = group_rows(sorted(by_method[(method,)], key=lambda r: r["sparsity"]), ["sparsity"])
        stats = [mean_std([100 * r[metric] for r in g]) for g in groups.values()]
        xs = [
            max(mean_std([remaining_percent(r[x_column]) for r in g])[0], floor)
            for g in groups.values()
        ]
        xs_all += xs
        color = method_color(method)
        _band(ax, xs, [m for m, _ in stats], [s for _, s in stats], color, method_label(method))
        none_left = [(x, m) for x, (m, _) in zip(xs, stats, strict=True) if x == floor]
        if none_left:
            ax.scatter(*zip(*none_left, strict=True), marker="x", color=color, s=40, zorder=3)
            marked = True
    if dense:
        mean, std = mean_std(dense)
        ax.axhline(
            mean,
            color=method_color(DENSE),
            linestyle="--",
            linewidth=1,
            label=f"{method_label(DENSE)} ({mean:.1f}%)",
        )
        ax.axhspan(mean - std, mean + std, color=method_color(DENSE), alpha=0.08)
    if x_column == "sparsity":
        _remaining_axis(ax, xs_all)
    else:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlim(max(xs_all) * 1.25, min(xs_all) / 1.25)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel("Effective remaining weights (%) [log scale]")
        if marked:
            ax.scatter([], [], marker="x", color="black", label="none on a path (disconnected)")
    ax.set_ylabel(_acc_label(metric))
    ax.legend(fontsize=8)


# -- accuracy against T and against mask time (Figure 4 middle and right) -------------------------


def _at_sparsity(
    rows: Sequence[dict[str, Any]], sparsity: float | None, source: str
) -> tuple[list[dict[str, Any]], float]:
    """The rows at ``sparsity`` (the only one present when None)."""
    levels = sorted({r["sparsity"] for r in rows})
    if sparsity is None:
        if len(levels) != 1:
            raise ConfigError(
                f"{source} holds several sparsities ({', '.join(f'{s:g}' for s in levels)}); "
                "pick one with --sparsity (the paper uses 0.995)."
            )
        sparsity = levels[0]
    chosen = [r for r in rows if abs(r["sparsity"] - sparsity) < 1e-9]
    if not chosen:
        raise ConfigError(
            f"{source} has no run at sparsity {sparsity:g}; it has "
            f"{', '.join(f'{s:g}' for s in levels)}. Pass one of those to --sparsity."
        )
    return chosen, sparsity


def _steps_of(row: dict[str, Any]) -> int:
    """T of a run; one-shot runs (no steps logged) count as T = 1."""
    return int(row.get("steps") or 1)


def accuracy_steps_figure(
    rows: Sequence[dict[str, Any]],
    sparsity: float | None = None,
    metric: str = "test_acc1",
    title: str = "",
    source: str = "the results table",
) -> Figure:
    """Mean accuracy (+-1 std) at one sparsity against the number of iterations T per method; a
    method run at a single T (one-shot SNIP, T = 1) is a dashed horizontal reference."""
    require_columns(rows, numeric=["sparsity", metric], text=["method"], source=source)
    _check_fraction(rows, metric, source)
    chosen, sparsity = _at_sparsity(rows, sparsity, source)
    require_unique(chosen, ["method", "steps", "seed"], source)
    fig, ax = _subplots(figsize=(6.0, 4.2))
    by_method = group_rows(chosen, ["method"])
    all_steps = sorted({_steps_of(r) for r in chosen})
    for method in sort_methods([k[0] for k in by_method]):
        per_t: dict[int, list[float]] = {}
        for r in sorted(by_method[(method,)], key=_steps_of):
            per_t.setdefault(_steps_of(r), []).append(100 * r[metric])
        color, label = method_color(method), method_label(method)
        stats = [mean_std(v) for v in per_t.values()]
        if len(per_t) == 1:
            (t,), ((mean, std),) = per_t.keys(), stats
            ax.axhline(mean, color=color, linestyle="--", label=f"{label} (T={t})")
            ax.axhspan(mean - std, mean + std, color=color, alpha=0.12)
        else:
            _band(ax, list(per_t), [m for m, _ in stats], [s for _, s in stats], color, label)
    if len(all_steps) > 1:
        ax.set_xscale("log")
        ax.set_xticks(all_steps, [str(t) for t in all_steps])
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("Iterations T [log scale]")
    ax.set_ylabel(_acc_label(metric))
    ax.legend(
        fontsize=8, title=f"{remaining_percent(sparsity):.3g}% weights remaining", title_fontsize=8
    )
    _finish(ax, title)
    return fig


def accuracy_walltime_figure(
    rows: Sequence[dict[str, Any]],
    sparsity: float | None = None,
    metric: str = "test_acc1",
    title: str = "",
    source: str = "the results table",
) -> Figure:
    """Accuracy against the wall time of computing the mask: for each method, one series with
    more iterations (T grows, batches fixed; solid) and one with more batches (batches grow,
    T fixed; dashed), whichever the table varies. Points are labelled with T or B."""
    require_columns(
        rows,
        numeric=["sparsity", metric, "mask_seconds", "num_batches"],
        text=["method"],
        source=source,
        hint="Mask wall time and num_batches come from pruning.json: use a table of pruned runs.",
    )
    _check_fraction(rows, metric, source)
    chosen, sparsity = _at_sparsity(rows, sparsity, source)
    require_unique(chosen, ["method", "steps", "num_batches", "seed"], source)
    fig, ax = _subplots(figsize=(6.0, 4.2))
    for method in sort_methods([r["method"] for r in chosen]):
        mine = [r for r in chosen if r["method"] == method]
        cells: dict[tuple[int, int], list[dict[str, Any]]] = {}
        for r in mine:
            cells.setdefault((_steps_of(r), int(r["num_batches"])), []).append(r)
        steps = sorted({t for t, _ in cells})
        batches = sorted({b for _, b in cells})
        series = []
        if len(steps) > 1:
            series.append(("more iterations", "-", "o", "T", [(t, batches[0]) for t in steps]))
        if len(batches) > 1:
            series.append(("more batches", "--", "s", "B", [(steps[0], b) for b in batches]))
        if not series:
            series.append(("", "-", "o", "T", [(steps[0], batches[0])]))
        for name, style, marker, letter, keys in series:
            keys = [k for k in keys if k in cells]
            seconds = [mean_std([r["mask_seconds"] for r in cells[k]])[0] for k in keys]
            accs = [mean_std([100 * r[metric] for r in cells[k]]) for k in keys]
            label = f"{method_label(method)}, {name}" if name else method_label(method)
            color = method_color(method)
            means = [m for m, _ in accs]
            ax.plot(
                seconds,
                means,
                color=color,
                linestyle=style,
                marker=marker,
                markersize=4,
                label=label,
            )
            ax.errorbar(
                seconds, means, yerr=[s for _, s in accs], fmt="none", ecolor=color, capsize=2
            )
            for (t, b), x, (y, _) in zip(keys, seconds, accs, strict=True):
                ax.annotate(
                    f"{letter}={t if letter == 'T' else b}",
                    (x, y),
                    fontsize=6,
                    textcoords="offset points",
                    xytext=(3, 3),
                )
    if all(r["mask_seconds"] > 0 for r in chosen):
        ax.set_xscale("log")
    ax.set_xlabel("Wall time to compute the mask (s)")
    ax.set_ylabel(_acc_label(metric))
    ax.legend(
        fontsize=8, title=f"{remaining_percent(sparsity):.3g}% weights remaining", title_fontsize=8
    )
    _finish(ax, title)
    return fig


# -- ablations of the mask (Frankle et al. 2021, Su et al. 2020) ---------------------------------

ORIGINAL_LABEL = "original mask"
_HATCHES = ("", "//", "..", "xx", "\\\\", "--", "++", "oo")


def sort_ablations(ablations: Sequence[str]) -> list[str]:
    """The method's own mask first, then the ablations in PruningConfig's order, then the rest."""
    known = [NO_ABLATION, *ABLATIONS, *SALIENCY_DATA]
    unique = list(dict.fromkeys(ablations))
    return sorted(unique, key=lambda a: (known.index(a) if a in known else len(known), a))


def ablation_label(ablation: str) -> str:
    return ORIGINAL_LABEL if ablation == NO_ABLATION else ablation


def ablations_figure(
    rows: Sequence[dict[str, Any]],
    sparsity: float | None = None,
    metric: str = "test_acc1",
    title: str = "",
    source: str = "the results table",
) -> Figure:
    """Grouped bars at one sparsity: per method, the mean accuracy over seeds of its original
    mask next to each ablation's (error bars: sample std; ``n=`` above each bar: its runs).
    Bars take the method's colour, one hatch per ablation (the legend); the table's dense runs,
    if any, are a dashed line at their mean."""
    require_columns(
        rows,
        numeric=["sparsity", metric],
        text=["method", "ablation"],
        source=source,
        hint="The ablation column comes from pruning.json: regenerate the table with "
        "pruning-sweep --collect-only.",
    )
    _check_fraction(rows, metric, source)
    chosen, sparsity = _at_sparsity([r for r in rows if r["sparsity"] > 0], sparsity, source)
    require_unique(chosen, ["method", "ablation", "seed"], source)
    dense = [100 * r[metric] for r in rows if r["sparsity"] == 0]
    cells = group_rows(chosen, ["method", "ablation"])
    methods = sort_methods([m for m, _ in cells])
    ablations = sort_ablations([a for _, a in cells])
    width = 0.8 / len(ablations)
    fig, ax = _subplots(figsize=(max(6.0, 1.0 + 0.35 * len(cells)), 4.2))
    for j, ablation in enumerate(ablations):
        here = [(i, m) for i, m in enumerate(methods) if (m, ablation) in cells]
        stats = [mean_std([100 * r[metric] for r in cells[(m, ablation)]]) for _, m in here]
        bars = ax.bar(
            [i + (j - (len(ablations) - 1) / 2) * width for i, _ in here],
            [mean for mean, _ in stats],
            width,
            yerr=[std for _, std in stats],
            capsize=2,
            color=[method_color(m) for _, m in here],
            alpha=1.0 if ablation == NO_ABLATION else 0.55,
            hatch=_HATCHES[j % len(_HATCHES)],
            edgecolor="black",
            linewidth=0.5,
            label=ablation_label(ablation),
        )
        ax.bar_label(
            bars, [f"n={len(cells[(m, ablation)])}" for _, m in here], padding=2, fontsize=6
        )
    ax.set_xticks(range(len(methods)), [method_label(m) for m in methods])
    ax.set_ylabel(_acc_label(metric))
    handles = [
        Patch(
            facecolor="white",
            edgecolor="black",
            hatch=_HATCHES[j % len(_HATCHES)],
            label=ablation_label(a),
        )
        for j, a in enumerate(ablations)
    ]
    if dense:  # the table's dense runs: the reference every ablation is read against
        mean, _ = mean_std(dense)
        label = f"{DENSE_LABEL} (mean, n={len(dense)})"
        handles.append(
            ax.axhline(mean, color=DENSE_COLOR, linestyle="--", linewidth=1, label=label)
        )
    ax.legend(
        handles=handles,
        fontsize=8,
        title=f"{remaining_percent(sparsity):.3g}% weights remaining",
        title_fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),  # beside the axes: inside, it would hide bars
    )
    ax.grid(True, axis="y", alpha=0.3)
    if title:
        ax.set_title(title)
    return fig


# -- mask comparison -------------------------------------------------------------------------------


def mask_iou_figure(
    rows: Sequence[dict[str, Any]],
    layer: str = GLOBAL,
    title: str = "",
    source: str = "the mask comparison",
) -> Figure:
    """Heat map of the pairwise IoU of the masks' kept sets (1 on the diagonal), from the rows of
    :func:`~pruning_lightning.analysis.compare.compare_masks` (or their CSV) for ``layer``."""
    require_columns(rows, numeric=["iou"], text=["a", "b", "layer"], source=source)
    chosen = [r for r in rows if r["layer"] == layer]
    if not chosen:
        raise ConfigError(f"{source} has no rows for layer {layer!r}. Pass a layer it compares.")
    require_unique(chosen, ["a", "b"], source)
    labels = list(dict.fromkeys(str(v) for r in chosen for v in (r["a"], r["b"])))
    index = {label: i for i, label in enumerate(labels)}
    grid = [[1.0 if i == j else float("nan") for j in labels] for i in labels]
    for r in chosen:
        i, j = index[str(r["a"])], index[str(r["b"])]
        grid[i][j] = grid[j][i] = r["iou"]
    size = 2.5 + 0.45 * len(labels)
    fig, ax = _subplots(figsize=(size + 1.0, size))
    image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis")
    for i, line in enumerate(grid):
        for j, value in enumerate(line):
            if value == value:  # not NaN: a pair the table holds
                color = "black" if value > 0.6 else "white"
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color=color)
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    fig.colorbar(image, ax=ax, label=f"IoU of the kept weights ({layer})")
    if title:
        ax.set_title(title)
    return fig


# -- the disconnection study ----------------------------------------------------------------------


def _setting_label(row: dict[str, Any]) -> str:
    width = "" if row.get("width") in (None, "") else f" w{row['width']}"
    steps = f" T{row['steps']}" if int(row["steps"]) > 1 else ""
    return f"{method_label(str(row['method']))} {100 * float(row['sparsity']):g}%{steps}{width}"


def disconnection_figure(
    rows: Sequence[dict[str, Any]],
    iou_rows: Sequence[dict[str, Any]] = (),
    title: str = "",
    source: str = "the study's table",
) -> Figure:
    """Three panels over the settings of a disconnection study (one row each, method colours):
    the share of seeds whose mask leaves no input-output path (hatched: with a whole layer
    gone), the step at which each seed's FORCE saliency first reached 0, and the IoU of every
    pair of seeds' masks (dots; bar: mean)."""
    require_columns(
        rows,
        numeric=["sparsity", "steps", "seed", "collapsed_layers"],
        text=["method"],
        source=source,
    )
    groups = group_rows(rows, ["method", "sparsity", "steps", "width"])
    keys = list(groups)
    ious = group_rows(list(iou_rows), ["method", "sparsity", "steps", "width"]) if iou_rows else {}
    height = 1.6 + 0.42 * len(keys)
    fig, axes = _subplots(1, 3, figsize=(13.0, height), sharey=True)
    cut_ax, zero_ax, iou_ax = axes
    ys = range(len(keys))
    for y, key in zip(ys, keys, strict=True):
        group = groups[key]
        color = method_color(str(key[0]))
        n = len(group)
        cut = sum(r["disconnected"] is True for r in group)
        collapsed = sum(int(r["collapsed_layers"]) > 0 for r in group)
        cut_ax.barh(y, 100 * cut / n, color=color, alpha=0.8, edgecolor="black", linewidth=0.5)
        cut_ax.barh(y, 100 * collapsed / n, color="none", hatch="///", edgecolor="black",
                    linewidth=0.0)  # fmt: skip
        cut_ax.text(100 * cut / n + 1.5, y, f"{cut}/{n}", va="center", fontsize=7)
        steps = [int(r["saliency_zero_step"]) for r in group
                 if r.get("saliency_zero_step") not in (None, "")]  # fmt: skip
        zero_ax.scatter(steps, [y] * len(steps), color=color, s=14, alpha=0.7)
        zero_ax.text(0.99, y, f"{len(steps)}/{n}", va="center", ha="right", fontsize=7,
                     transform=zero_ax.get_yaxis_transform())  # fmt: skip
        pair = [float(r["iou"]) for r in ious.get(key, [])]
        if pair:
            iou_ax.scatter(pair, [y] * len(pair), color=color, s=8, alpha=0.5)
            mean = sum(pair) / len(pair)
            iou_ax.plot([mean, mean], [y - 0.3, y + 0.3], color="black", linewidth=1.5)
    cut_ax.set_yticks(list(ys), [_setting_label(groups[k][0]) for k in keys], fontsize=8)
    cut_ax.invert_yaxis()
    cut_ax.set_xlim(0, 110)
    cut_ax.set_xlabel("seeds whose mask has no input-output path (%)")
    cut_ax.legend(
        handles=[
            Patch(
                facecolor="white", edgecolor="black", hatch="///", label="with a whole layer pruned"
            )
        ],  # fmt: skip
        fontsize=7,
        loc="lower right",
    )
    zero_ax.set_xlabel("step t at which S(m_t) first reaches 0 (count: seeds)")
    zero_ax.set_xlim(0, max(int(k[2]) for k in keys) * 1.08 + 1)
    iou_ax.set_xlabel("IoU of two seeds' masks (bar: mean)")
    iou_ax.set_xlim(0, 1)
    for ax in axes:
        ax.grid(True, axis="x", alpha=0.3)
    if title:
        fig.suptitle(title)
    return fig


# -- per-layer densities (Figures 8, 13) -----------------------------------------------------------


def _layer_axis(ax: Axes, names: Sequence[str]) -> None:
    ax.set_xticks(
        range(len(names)),
        [short_layer_name(n) for n in names],
        rotation=90,
        fontsize=6 if len(names) > 20 else 8,
    )
    ax.set_xlabel("Prunable layer (input to output)")
    ax.set_ylabel("Fraction of weights kept [symlog scale]")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_ylim(0, 1.05)


def layer_fraction_figure(summaries: Sequence[dict[str, Any]], title: str = "") -> Figure:
    """Kept fraction of every prunable layer for each method (mean over the runs of a method and
    sparsity, e.g. its seeds), from pruning.json summaries of runs on the same network."""
    if not summaries:
        raise ConfigError("No pruning.json to plot. Pass the log dirs of pruned runs.")
    names = list(summaries[0]["layers"])
    for summary in summaries[1:]:
        if list(summary["layers"]) != names:
            raise ConfigError(
                f"{summary.get('_path', 'a pruning.json')} has other layers than "
                f"{summaries[0].get('_path', 'the first')}: the runs prune different networks. "
                "Compare runs of one backbone and width."
            )
    groups = group_rows(summaries, ["method", "sparsity"])
    several = len({s for _, s in groups}) > 1
    styles = ["-", "--", ":", "-."]
    levels = sorted({s for _, s in groups})
    fig, ax = _subplots(figsize=(max(6.5, 0.2 * len(names)), 4.0))
    for method in sort_methods([m for m, _ in groups]):
        for (m, sparsity), runs in groups.items():
            if m != method:
                continue
            kept = [sum(r["layers"][n]["kept"] for r in runs) for n in names]
            total = [sum(r["layers"][n]["total"] for r in runs) for n in names]
            fractions = [k / t for k, t in zip(kept, total, strict=True)]
            label = method_label(method)
            if several:
                label += f" ({remaining_percent(sparsity):.3g}% left)"
            ax.plot(
                range(len(names)),
                fractions,
                color=method_color(method),
                marker="o",
                markersize=3,
                linestyle=styles[levels.index(sparsity) % len(styles)],
                label=label,
            )
    _layer_axis(ax, names)
    ax.legend(fontsize=8)
    if not several:
        title = title or f"{remaining_percent(levels[0]):.3g}% of the weights remaining"
    _finish(ax, title)
    return fig


def _history(summary: dict[str, Any]) -> list[dict[str, Any]]:
    history = summary.get("history") or []
    if not history:
        raise ConfigError(
            f"{summary.get('_path', 'this pruning.json')} (method {summary.get('method')!r}) has "
            "no per-step history: only progressive methods (force, iter_snip) record one. Pass "
            "the log dir of a force or iter_snip run."
        )
    return sorted(history, key=lambda r: r["step"])


def progressive_layers_figure(
    summary: dict[str, Any], max_masks: int = 12, title: str = ""
) -> Figure:
    """Kept fraction per layer of each intermediate mask m_t of one progressive run (Fig. 13b/d);
    colour encodes t. At most ``max_masks`` evenly spaced steps are drawn, the last included."""
    history = _history(summary)
    names = list(summary["layers"])
    totals = [summary["layers"][n]["total"] for n in names]
    if len(history) > max_masks:
        picks = {round(i * (len(history) - 1) / (max_masks - 1)) for i in range(max_masks)}
        history = [history[i] for i in sorted(picks)]
    last_step = history[-1]["step"]
    cmap = matplotlib.colormaps["viridis"]
    fig, ax = _subplots(figsize=(max(6.5, 0.2 * len(names)), 4.0))
    for record in history:
        kept = record["kept"]
        fractions = [kept.get(n, 0) / t for n, t in zip(names, totals, strict=True)]
        ax.plot(
            range(len(names)),
            fractions,
            color=cmap(record["step"] / max(last_step, 1)),
            marker="o",
            markersize=2,
            linewidth=1,
        )
    mappable = ScalarMappable(cmap=cmap, norm=Normalize(0, last_step))
    fig.colorbar(mappable, ax=ax, label="Step t of the progressive pruning")
    _layer_axis(ax, names)
    default = (
        f"{method_label(summary['method'])}: intermediate masks, "
        f"{remaining_percent(summary['sparsity']):.3g}% remaining at t={last_step}"
    )
    _finish(ax, title or default)
    return fig


def pruned_recovered_figure(summaries: Sequence[dict[str, Any]], title: str = "") -> Figure:
    """Weights pruned (kept in m_{t-1}, not in m_t) and recovered (the reverse) at each step,
    as fractions of all prunable weights (Fig. 9); Iterative SNIP recovers none by design.
    Runs of one method and sparsity (seeds) share a colour and one legend entry."""
    if not summaries:
        raise ConfigError("No pruning.json to plot. Pass the log dirs of progressive runs.")
    several = len({s["sparsity"] for s in summaries}) > 1
    fig, (top, bottom) = _subplots(2, 1, figsize=(6.0, 5.5), sharex=True)
    order = sort_methods([s["method"] for s in summaries])
    labelled: set[str] = set()
    for summary in sorted(summaries, key=lambda s: (order.index(s["method"]), s["sparsity"])):
        history = _history(summary)
        total = sum(entry["total"] for entry in summary["layers"].values())
        steps = [r["step"] for r in history]
        label = method_label(summary["method"])
        if several:
            label += f" ({remaining_percent(summary['sparsity']):.3g}% left)"
        if label in labelled:
            label = "_" + label  # matplotlib leaves labels starting with "_" out of the legend
        labelled.add(label)
        color = method_color(summary["method"])
        top.plot(
            steps,
            [r["pruned"] / total for r in history],
            color=color,
            marker="o",
            markersize=3,
            label=label,
        )
        bottom.plot(
            steps,
            [r["recovered"] / total for r in history],
            color=color,
            marker="o",
            markersize=3,
            label=label,
        )
    top.set_ylabel("Pruned / all weights")
    bottom.set_ylabel("Recovered / all weights")
    bottom.set_xlabel("Step t")
    top.legend(fontsize=8)
    _finish(top, title)
    _finish(bottom, "")
    return fig


# -- FORCE saliency (Figures 4 left, 6, 7) ---------------------------------------------------------

SALIENCY_COLUMNS = (
    "method",
    "sparsity",
    "steps",
    "seed",
    "saliency_pruning",
    "saliency_sparsification",
    "ratio_pruning",
    "ratio_sparsification",
)


def saliency_ratio_figure(
    rows: Sequence[dict[str, Any]],
    view: str = "pruning",
    title: str = "",
    source: str = "the saliency table",
) -> Figure:
    """FORCE saliency of the progressive masks divided by the one-shot SNIP mask's, against T,
    one panel per sparsity (mean +-1 std over seeds); 1 is SNIP itself."""
    ratio = f"ratio_{view}"
    require_columns(
        rows,
        numeric=["sparsity", "steps", ratio],
        text=["method"],
        source=source,
        hint="Write the table with `pruning-figures saliency`.",
    )
    progressive = [r for r in rows if r["method"] != "snip"]
    if not progressive:
        raise ConfigError(f"{source} has only SNIP rows; it needs force or iter_snip rows.")
    levels = sorted({r["sparsity"] for r in progressive})
    fig, axes = _subplots(
        1,
        len(levels),
        figsize=(3.6 * len(levels) + 0.6, 3.6),
        sharey=True,
        squeeze=False,
    )
    steps = sorted({int(r["steps"]) for r in progressive})
    for ax, level in zip(axes[0], levels, strict=True):
        here = [r for r in progressive if r["sparsity"] == level]
        for method in sort_methods([r["method"] for r in here]):
            groups = group_rows(
                sorted((r for r in here if r["method"] == method), key=lambda r: r["steps"]),
                ["steps"],
            )
            stats = [mean_std([r[ratio] for r in g]) for g in groups.values()]
            _band(
                ax,
                [int(t) for (t,) in groups],
                [m for m, _ in stats],
                [s for _, s in stats],
                method_color(method),
                method_label(method),
            )
        ax.axhline(
            1.0,
            color=method_color("snip"),
            linestyle="--",
            linewidth=1,
            label=f"{method_label('snip')} (one-shot)",
        )
        if len(steps) > 1:
            ax.set_xscale("log")
            ax.set_xticks(steps, [str(t) for t in steps])
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("Iterations T [log scale]")
        _finish(ax, f"{remaining_percent(level):.3g}% weights remaining")
    axes[0][0].set_ylabel(f"FORCE saliency / SNIP's ({view} view)")
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def saliency_views_figure(
    rows: Sequence[dict[str, Any]],
    steps: int | None = None,
    title: str = "",
    source: str = "the saliency table",
) -> Figure:
    """Both FORCE saliency views of each method's masks against remaining weights (Fig. 7): the
    pruning view (gradients of removed weights cut) and the sparsification view (kept)."""
    require_columns(
        rows,
        numeric=["sparsity", "steps", "saliency_pruning", "saliency_sparsification"],
        text=["method"],
        source=source,
        hint="Write the table with `pruning-figures saliency`.",
    )
    progressive_steps = sorted({int(r["steps"]) for r in rows if r["method"] != "snip"})
    if steps is None:
        steps = progressive_steps[-1] if progressive_steps else 1
    elif progressive_steps and steps not in progressive_steps:
        raise ConfigError(
            f"{source} has no progressive masks with T={steps}; it has T in "
            f"{progressive_steps}. Pass one of those to --steps."
        )
    chosen = [r for r in rows if r["method"] == "snip" or int(r["steps"]) == steps]
    fig, axes = _subplots(1, 2, figsize=(10.0, 4.0))
    for ax, view in zip(axes, ("pruning", "sparsification"), strict=True):
        column = f"saliency_{view}"
        for method in sort_methods([r["method"] for r in chosen]):
            mine = sorted((r for r in chosen if r["method"] == method), key=lambda r: r["sparsity"])
            groups = group_rows(mine, ["sparsity"])
            stats = [mean_std([r[column] for r in g]) for g in groups.values()]
            label = method_label(method) + ("" if method == "snip" else f" (T={steps})")
            _band(
                ax,
                [remaining_percent(s) for (s,) in groups],
                [m for m, _ in stats],
                [s for _, s in stats],
                method_color(method),
                label,
            )
        _remaining_axis(ax, [remaining_percent(r["sparsity"]) for r in chosen])
        if all(r[column] > 0 for r in chosen):
            ax.set_yscale("log")
        ax.set_ylabel(f"FORCE saliency, {view} view")
        _finish(ax, f"{view.capitalize()} view")
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def log_to_tensorboard(fig: Figure, log_dir: str, tag: str) -> None:
    """Add the figure to a TensorBoard event file in ``log_dir`` (e.g. the sweep folder)."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir)
    try:
        writer.add_figure(tag, fig, close=False)
    finally:
        writer.close()
