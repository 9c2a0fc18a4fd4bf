"""``pruning-figures``: one subcommand per figure of the paper, each reading logged results.

    pruning-figures accuracy --results sweep/results.csv --out accuracy.png
    pruning-figures recovery --runs sweep/force-s0.99-seed0 --out recovery.png
    pruning-figures saliency --config configs/quickstart.yaml \\
        --sparsities 0.9 0.99 --steps 1 10 60 --out saliency/

Tables are the CSVs of ``pruning-sweep`` (``--results``) or run folders read directly (``--runs``:
a log dir, a run folder or a whole sweep folder). ``--tensorboard DIR`` also adds the figure to a
TensorBoard event file in DIR. Malformed or empty inputs end with a message and exit status 2.
``python -m pruning_lightning.analysis.figures_cli`` is the same command.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pruning_lightning.analysis import compare, figures
from pruning_lightning.analysis.assignments import parse_assignments
from pruning_lightning.analysis.results import (
    PRUNING_JSON,
    collect_runs,
    filter_rows,
    find_pruning_json,
    group_rows,
    latest_pruning_jsons,
    mean_std,
    read_pruning_json,
    read_table,
    require_columns,
    require_unique,
    write_table,
)
from pruning_lightning.errors import ConfigError

# -- inputs ----------------------------------------------------------------------------------------


def load_rows(
    results: Sequence[str], runs: Sequence[str], where: Sequence[str] = ()
) -> tuple[list[dict[str, Any]], str]:
    """Rows of the given results CSVs and run folders (those matching every ``where``
    KEY=VALUE), and a name for messages."""
    if not results and not runs:
        raise ConfigError(
            "Give the results to plot: --results CSV (from pruning-sweep) or --runs DIR."
        )
    rows = []
    for path in results:
        rows += read_table(path)
    if runs:
        found = collect_runs(runs)
        if not found:
            raise ConfigError(
                f"No finished run (test_metrics.json) under {', '.join(runs)}. Pass run folders "
                "of runs made with --test_after_fit true."
            )
        rows += found
    source = ", ".join([*results, *runs])
    return (filter_rows(rows, where, source) if where else rows), source


def load_summaries(
    paths: Sequence[str], sparsity: float | None = None, methods: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """pruning.json summaries from files, log dirs or folders above them, optionally filtered.

    One per run: a log dir of a resumed run without its own pruning.json gets the earlier
    attempt's, and a folder scan skips the pruning.json of attempts that a later one superseded.
    """
    summaries = []
    for path in map(Path, paths):
        own = find_pruning_json(path) if path.is_dir() else None
        if own is not None:
            summaries.append(read_pruning_json(own))
        elif path.is_dir():
            found = latest_pruning_jsons(path)
            if not found:
                raise ConfigError(
                    f"No {PRUNING_JSON} under {path}. Pass the folder of a pruned run (dense runs "
                    "write none) or the pruning.json itself."
                )
            summaries += [read_pruning_json(p) for p in found]
        else:
            summaries.append(read_pruning_json(path))
    chosen = [
        s
        for s in summaries
        if (sparsity is None or abs(s["sparsity"] - sparsity) < 1e-9)
        and (not methods or s["method"] in methods)
    ]
    if not chosen:
        have = sorted({(s["method"], s["sparsity"]) for s in summaries})
        raise ConfigError(
            f"None of the {len(summaries)} pruned runs matches the filter (sparsity {sparsity}, "
            f"methods {methods}); they are (method, sparsity): {have}."
        )
    return chosen


def summaries_from_table(rows: Sequence[dict[str, Any]], source: str) -> list[str]:
    """The run dirs of a results table (its run_dir column), pruned runs only."""
    require_columns(rows, text=["run_dir", "method"], source=source)
    require_columns(rows, numeric=["sparsity"], source=source)
    return [str(r["run_dir"]) for r in rows if r["sparsity"] > 0]


def save(fig, args: argparse.Namespace, tag: str) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=args.dpi)
    if args.tensorboard:
        figures.log_to_tensorboard(fig, args.tensorboard, f"figures/{tag}")
    print(f"wrote {out}")


# -- subcommands -----------------------------------------------------------------------------------


def cmd_accuracy(args: argparse.Namespace) -> None:
    rows, source = load_rows(args.results, args.runs, args.where)
    fig = figures.accuracy_sparsity_figure(
        rows, args.metric, args.title, source, effective=args.effective
    )
    save(fig, args, "accuracy")


def cmd_steps(args: argparse.Namespace) -> None:
    rows, source = load_rows(args.results, args.runs, args.where)
    fig = figures.accuracy_steps_figure(rows, args.sparsity, args.metric, args.title, source)
    save(fig, args, "accuracy_vs_steps")


def cmd_walltime(args: argparse.Namespace) -> None:
    rows, source = load_rows(args.results, args.runs, args.where)
    fig = figures.accuracy_walltime_figure(rows, args.sparsity, args.metric, args.title, source)
    save(fig, args, "accuracy_vs_mask_time")


def cmd_ablations(args: argparse.Namespace) -> None:
    rows, source = load_rows(args.results, args.runs, args.where)
    fig = figures.ablations_figure(rows, args.sparsity, args.metric, args.title, source)
    save(fig, args, "ablations")


def cmd_compare(args: argparse.Namespace) -> None:
    if bool(args.masks) == bool(args.results):
        raise ConfigError(
            "Give the masks to compare: --masks FILE_OR_RUN ... (two or more), or --results CSV "
            "of an earlier compare --out-csv."
        )
    if args.masks:
        rows, source = compare.compare_masks(compare.load_labelled(args.masks)), "the masks"
    else:
        rows, source = read_table(args.results), args.results
    fig = figures.mask_iou_figure(rows, args.layer, args.title, source)
    if args.out_csv:
        print(f"wrote {write_table(rows, args.out_csv, compare.COLUMNS)}")
    save(fig, args, "mask_iou")


def cmd_layers(args: argparse.Namespace) -> None:
    paths = list(args.runs)
    for table in args.results:
        paths += summaries_from_table(read_table(table), table)
    if not paths:
        raise ConfigError("Give the runs: --runs DIR (pruned runs) or --results CSV.")
    summaries = load_summaries(paths, args.sparsity, args.methods)
    save(figures.layer_fraction_figure(summaries, args.title), args, "kept_fraction_per_layer")


def cmd_progress(args: argparse.Namespace) -> None:
    summaries = load_summaries([args.run])
    if len(summaries) != 1:
        raise ConfigError(
            f"{args.run} holds {len(summaries)} pruned runs; pass the folder (or pruning.json) "
            "of exactly one progressive run."
        )
    fig = figures.progressive_layers_figure(summaries[0], args.max_masks, args.title)
    save(fig, args, "kept_fraction_per_step")


def cmd_recovery(args: argparse.Namespace) -> None:
    summaries = load_summaries(args.runs, args.sparsity, args.methods)
    progressive = [s for s in summaries if len(s.get("history") or []) > 1]
    # a sweep folder also holds one-shot runs (a one-step history): drop them, but fail if
    # nothing is left
    save(
        figures.pruned_recovered_figure(progressive or summaries[:1], args.title),
        args,
        "pruned_recovered",
    )


def config_overrides(args: argparse.Namespace) -> list[str]:
    """The CLI arguments of ``--set KEY=VALUE`` after checking that every ``--config`` exists."""
    for config in args.config:
        if not Path(config).is_file():
            raise ConfigError(f"--config {config!r} does not exist.")
    overrides = []
    for key, (value,) in parse_assignments(args.set, "--set"):
        overrides += [f"--{key}", value]
    return overrides


def cmd_saliency(args: argparse.Namespace) -> None:
    from pruning_lightning.analysis.saliency_sweep import build_from_config, saliency_rows
    from pruning_lightning.pruning.batches import seeded_loader

    bad = [m for m in args.methods if m not in figures.saliency_methods()]
    if bad:
        raise ConfigError(
            f"--methods {' '.join(bad)}: the saliency sweep compares progressive masks with "
            f"one-shot SNIP; choose from {', '.join(figures.saliency_methods())}."
        )
    for s in args.sparsities:
        if not 0.0 < s < 1.0:
            raise ConfigError(f"--sparsities must lie in (0, 1), got {s}. Write 99% as 0.99.")
    overrides = config_overrides(args)
    out = Path(args.out)
    rows = []
    for seed in args.seeds:
        model, loader = build_from_config(args.config, overrides, seed)
        model.to(args.device)
        rows += saliency_rows(
            model,
            seeded_loader(loader, seed),
            args.methods,
            args.sparsities,
            args.steps,
            seed=seed,
            schedule=args.schedule,
            num_batches=args.num_batches,
            eval_batches=args.eval_batches,
        )
        print(f"seed {seed}: {len(rows)} masks measured", flush=True)
    table = write_table(rows, out / "saliency.csv")
    print(f"wrote {table}")
    for name, fig in (
        (
            "saliency_ratio.png",
            figures.saliency_ratio_figure(rows, args.view, args.title, str(table)),
        ),
        ("saliency_views.png", figures.saliency_views_figure(rows, None, args.title, str(table))),
    ):
        fig.savefig(out / name, dpi=args.dpi)
        if args.tensorboard:
            figures.log_to_tensorboard(fig, args.tensorboard, f"figures/{name[:-4]}")
            print(f"wrote {out / name}")


def cmd_disconnection(args: argparse.Namespace) -> None:
    from pruning_lightning.analysis import disconnection
    from pruning_lightning.analysis.saliency_sweep import build_from_config
    from pruning_lightning.pruning.batches import seeded_loader

    plan = disconnection.settings(args.methods, args.sparsities, args.steps, args.widths or [None])
    overrides = config_overrides(args)
    if "--model.width" in overrides[::2] and args.widths:
        raise ConfigError("Give the width once: --widths, or --set model.width=W.")

    def build(seed: int, width: int | None):
        extra = [] if width is None else ["--model.width", str(width)]
        model, loader = build_from_config(args.config, [*overrides, *extra], seed)
        model.to(args.device)
        hp = model.hparams
        shape = (hp["in_channels"], hp["image_size"], hp["image_size"])
        return model, seeded_loader(loader, seed), shape

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    disconnection.write_study_record(out, {**vars(args), "func": None})
    rows, iou = disconnection.run_study(
        build, plan, args.seeds, out, num_batches=args.num_batches, schedule=args.schedule
    )
    print(f"wrote {out / disconnection.MASKS_CSV}, {out / disconnection.IOU_CSV}, "
          f"{out / disconnection.SUMMARY_CSV}")  # fmt: skip
    fig = figures.disconnection_figure(rows, iou, args.title, str(out / disconnection.MASKS_CSV))
    fig.savefig(out / disconnection.FIGURE, dpi=args.dpi)
    if args.tensorboard:
        figures.log_to_tensorboard(fig, args.tensorboard, "figures/disconnection")
    print(f"wrote {out / disconnection.FIGURE}")


def cmd_disconnection_figure(args: argparse.Namespace) -> None:
    rows = read_table(args.results)
    iou = read_table(args.iou) if args.iou else []
    save(figures.disconnection_figure(rows, iou, args.title, args.results), args, "disconnection")


def cmd_saliency_ratio(args: argparse.Namespace) -> None:
    rows = read_table(args.results)
    fig = figures.saliency_ratio_figure(rows, args.view, args.title, args.results)
    save(fig, args, "saliency_ratio")


def cmd_saliency_views(args: argparse.Namespace) -> None:
    rows = read_table(args.results)
    save(
        figures.saliency_views_figure(rows, args.steps, args.title, args.results),
        args,
        "saliency_views",
    )


def cmd_table(args: argparse.Namespace) -> None:
    rows, source = load_rows(args.results, args.runs, args.where)
    text = markdown_table(rows, args.metric, source)
    if args.out:
        Path(args.out).write_text(text)
    print(text, end="")


def markdown_table(rows: Sequence[dict[str, Any]], metric: str, source: str) -> str:
    """Mean +- std (over seeds, in %) of ``metric`` per method and sparsity, as Markdown."""
    require_columns(rows, numeric=["sparsity", metric], text=["method"], source=source)
    require_unique(rows, ["method", "sparsity", "seed"], source)
    levels = sorted({r["sparsity"] for r in rows})
    methods = figures.sort_methods([r["method"] for r in rows])
    cells = group_rows(rows, ["method", "sparsity"])
    header = "| method | " + " | ".join(f"{100 * s:g}% sparse" for s in levels) + " |"
    lines = [header, "|---" * (len(levels) + 1) + "|"]
    for method in methods:
        entries = []
        for s in levels:
            group = cells.get((method, s))
            if not group:
                entries.append("")
                continue
            mean, std = mean_std([100 * r[metric] for r in group])
            entries.append(f"{mean:.1f} ± {std:.1f} (n={len(group)})")
        lines.append(f"| {figures.method_label(method)} | " + " | ".join(entries) + " |")
    return "\n".join(lines) + "\n"


# -- parser ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pruning-figures",
        description="The paper's figures from logged results: one subcommand per figure.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def figure(name: str, func, help: str, out: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        if out:
            p.add_argument("--out", required=True, help="PNG to write")
        p.add_argument("--title", default="")
        p.add_argument("--dpi", type=int, default=150)
        p.add_argument("--tensorboard", metavar="DIR", help="also log the figure to TensorBoard")
        return p

    def model_inputs(p: argparse.ArgumentParser) -> None:
        """--config and --set: the model and data of a mask-only study, built as fit builds them."""
        p.add_argument(
            "--config",
            action="append",
            required=True,
            metavar="YAML",
            help="config that builds the model and data, as for pruning-lightning fit",
        )
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="CLI override, e.g. model.width=8 or data.data_dir=DIR (repeatable)",
        )

    def table_inputs(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--results",
            nargs="+",
            default=[],
            metavar="CSV",
            help="results table(s) written by pruning-sweep",
        )
        p.add_argument(
            "--runs",
            nargs="+",
            default=[],
            metavar="DIR",
            help="run folders (or a sweep folder) to read directly",
        )
        p.add_argument("--metric", default="test_acc1", help="accuracy column (default test_acc1)")
        p.add_argument(
            "--where",
            nargs="+",
            default=[],
            metavar="KEY=VALUE",
            help="only rows with these values, e.g. num_batches=1 pruning.steps=60",
        )

    p = figure(
        "accuracy", cmd_accuracy, "Accuracy against remaining weights per method (Figs 1-3)."
    )
    table_inputs(p)
    p.add_argument(
        "--effective",
        action="store_true",
        help="add a panel against the effective remaining weights (kept weights on an "
        "input-output path; the effective_sparsity column)",
    )
    for name, func, help in (
        ("steps", cmd_steps, "Accuracy at one sparsity against iterations T (Fig. 4 middle)."),
        (
            "walltime",
            cmd_walltime,
            "Accuracy against mask wall time, more batches vs more iterations (Fig. 4 right).",
        ),
        (
            "ablations",
            cmd_ablations,
            "Accuracy of each method's original mask next to its ablations (mean +- std over "
            "seeds) at one sparsity.",
        ),
    ):
        p = figure(name, func, help)
        table_inputs(p)
        p.add_argument("--sparsity", type=float, help="required when the table has several")
    p = figure(
        "compare",
        cmd_compare,
        "Pairwise IoU and Hamming distance of masks (globally and per layer); a heat map of "
        "the IoU.",
    )
    p.add_argument(
        "--masks",
        nargs="+",
        default=[],
        metavar="PATH",
        help="files of --pruning.save_masks_path, or run folders (mask of the newest checkpoint)",
    )
    p.add_argument("--results", metavar="CSV", help="or redraw the table of a --out-csv")
    p.add_argument("--out-csv", help="also write the pairwise table (per pair and layer)")
    p.add_argument(
        "--layer", default=compare.GLOBAL, help=f"layer of the heat map (default {compare.GLOBAL})"
    )
    p = figure("layers", cmd_layers, "Kept fraction per layer for each method (Figs 8, 13a/c).")
    p.add_argument(
        "--runs",
        nargs="+",
        default=[],
        metavar="DIR",
        help="pruned runs: log dirs, pruning.json files or a sweep folder",
    )
    p.add_argument(
        "--results",
        nargs="+",
        default=[],
        metavar="CSV",
        help="results table(s); their run_dir column names the runs",
    )
    p.add_argument("--sparsity", type=float, help="only runs at this sparsity")
    p.add_argument("--methods", nargs="+", help="only these methods")
    p = figure(
        "progress",
        cmd_progress,
        "Kept fraction per layer of every intermediate mask of one run (Fig. 13b/d).",
    )
    p.add_argument("--run", required=True, help="log dir or pruning.json of a force/iter_snip run")
    p.add_argument("--max-masks", type=int, default=12, help="draw at most this many steps")
    p = figure("recovery", cmd_recovery, "Weights pruned and recovered per step (Fig. 9).")
    p.add_argument(
        "--runs",
        nargs="+",
        required=True,
        metavar="DIR",
        help="progressive runs: log dirs, pruning.json files or a sweep folder",
    )
    p.add_argument("--sparsity", type=float, help="only runs at this sparsity")
    p.add_argument("--methods", nargs="+", help="only these methods")
    p = figure(
        "saliency",
        cmd_saliency,
        "Compute masks for many T and sparsities (no training) and their FORCE saliency; "
        "write saliency.csv, saliency_ratio.png (Figs 4 left, 6), saliency_views.png "
        "(Fig. 7).",
        out=False,
    )
    p.add_argument("--out", required=True, help="folder for the CSV and the two figures")
    model_inputs(p)
    p.add_argument("--methods", nargs="+", default=list(figures.saliency_methods()))
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.9, 0.99, 0.995])
    p.add_argument("--steps", nargs="+", type=int, default=[1, 5, 10, 20, 60])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--schedule", default="exp", choices=["exp", "linear"])
    p.add_argument("--num-batches", type=int, default=1, help="batches per saliency evaluation")
    p.add_argument(
        "--eval-batches",
        type=int,
        default=1,
        help="fixed training batches on which every mask's saliency is measured",
    )
    p.add_argument(
        "--view",
        default="pruning",
        choices=["pruning", "sparsification"],
        help="saliency view of the ratio figure",
    )
    p.add_argument("--device", default="cpu", help="e.g. cpu or cuda")
    p = figure(
        "disconnection",
        cmd_disconnection,
        "Compute masks over many seeds (no training): how many leave no input-output path, "
        "their collapsed layers, the step their FORCE saliency reaches 0 and the IoU between "
        "seeds; write disconnection.csv, seed_iou.csv, summary.csv, masks/ and "
        "disconnection.png (continues an interrupted study in the same --out).",
        out=False,
    )
    p.add_argument("--out", required=True, help="folder for the tables, masks and figure")
    model_inputs(p)
    p.add_argument("--methods", nargs="+", default=["force", "iter_snip"])
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.99, 0.995])
    p.add_argument(
        "--steps", nargs="+", type=int, default=[60], help="T of the progressive methods"
    )
    p.add_argument(
        "--widths",
        nargs="+",
        type=int,
        default=[],
        help="model.width values (default: the config's)",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=list(range(10)))
    p.add_argument("--schedule", default="exp", choices=["exp", "linear"])
    p.add_argument("--num-batches", type=int, default=1, help="batches per saliency step")
    p.add_argument("--device", default="cpu", help="e.g. cpu or cuda")
    p = figure(
        "disconnection-figure",
        cmd_disconnection_figure,
        "Redraw a disconnection study's figure from its disconnection.csv (and seed_iou.csv).",
    )
    p.add_argument("--results", required=True, metavar="CSV", help="disconnection.csv")
    p.add_argument("--iou", metavar="CSV", help="seed_iou.csv of the same study")
    p = figure(
        "saliency-ratio",
        cmd_saliency_ratio,
        "Saliency ratio to SNIP against T from a saliency.csv (Figs 4 left, 6).",
    )
    p.add_argument("--results", required=True, metavar="CSV", help="saliency.csv")
    p.add_argument("--view", default="pruning", choices=["pruning", "sparsification"])
    p = figure(
        "saliency-views",
        cmd_saliency_views,
        "Both saliency views against sparsity from a saliency.csv (Fig. 7).",
    )
    p.add_argument("--results", required=True, metavar="CSV", help="saliency.csv")
    p.add_argument("--steps", type=int, help="T of the progressive masks (default: the largest)")
    p = sub.add_parser(
        "table", help="Markdown table: mean +- std accuracy per method and sparsity."
    )
    p.set_defaults(func=cmd_table)
    table_inputs(p)
    p.add_argument("--out", help="also write the table to this file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (``pruning-figures``); bad input exits 2 with its message."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ConfigError as err:
        print(f"pruning-figures: error: {err}", file=sys.stderr)
        sys.exit(2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
