"""Figure commands: each renders a PNG from a small generated table and from a real tiny
progressive run; the plotted numbers are the logged ones; bad input gives a clear message."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib.image
import pytest
import torch

from pruning_lightning.analysis import figures
from pruning_lightning.analysis.figures_cli import main, markdown_table
from pruning_lightning.analysis.results import read_table, write_table
from pruning_lightning.errors import ConfigError
from pruning_lightning.pruning import method_names

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
FORCE_RED = figures.method_color("force")

# Test accuracy per (method, sparsity): one value per seed 0, 1, 2.
ACCURACIES = {
    ("force", 0.9): [0.5, 0.6, 0.7],  # mean 60 %, sample std 10 %
    ("force", 0.99): [0.4, 0.4, 0.4],
    ("snip", 0.9): [0.3, 0.5, 0.4],
    ("snip", 0.99): [0.1, 0.1, 0.1],
    ("dense", 0.0): [0.8, 0.9, 0.85],
}


def accuracy_rows() -> list[dict]:
    return [
        {"method": m, "sparsity": s, "seed": seed, "test_acc1": acc, "mask_seconds": 0.1 + seed}
        for (m, s), accs in ACCURACIES.items()
        for seed, acc in enumerate(accs)
    ]


def steps_rows() -> list[dict]:
    """Fig. 4 style: FORCE for several T (one batch), SNIP for several batches (T = 1)."""
    rows = []
    for seed in (0, 1):
        for t in (1, 3, 10):
            rows.append(
                {
                    "method": "force",
                    "sparsity": 0.995,
                    "seed": seed,
                    "steps": t,
                    "num_batches": 1,
                    "test_acc1": 0.3 + 0.01 * t + 0.01 * seed,
                    "mask_seconds": 0.2 * t,
                }
            )
        for b in (1, 5):
            rows.append(
                {
                    "method": "snip",
                    "sparsity": 0.995,
                    "seed": seed,
                    "steps": None,
                    "num_batches": b,
                    "test_acc1": 0.2 + 0.01 * seed,
                    "mask_seconds": 0.2 * b,
                }
            )
    return rows


def saliency_rows() -> list[dict]:
    rows = []
    for s in (0.9, 0.99):
        rows.append(
            {
                "method": "snip",
                "sparsity": s,
                "steps": 1,
                "seed": 0,
                "saliency_pruning": 2.0,
                "saliency_sparsification": 3.0,
                "ratio_pruning": 1.0,
                "ratio_sparsification": 1.0,
            }
        )
        for m, gain in (("force", 0.5), ("iter_snip", 0.25)):
            for t in (1, 4, 16):
                r = 1 + gain * (t - 1)
                rows.append(
                    {
                        "method": m,
                        "sparsity": s,
                        "steps": t,
                        "seed": 0,
                        "saliency_pruning": 2.0 * r,
                        "saliency_sparsification": 3.0 * r,
                        "ratio_pruning": r,
                        "ratio_sparsification": r,
                    }
                )
    return rows


def fake_summary(method: str, recovered: bool) -> dict:
    """A pruning.json of a 3-step run on three layers of 100, 200 and 300 weights."""
    layers = {"backbone.conv1.weight": 100, "backbone.conv2.weight": 200, "backbone.fc.weight": 300}
    kept = [
        {"backbone.conv1.weight": k1, "backbone.conv2.weight": k2, "backbone.fc.weight": k3}
        for k1, k2, k3 in ((60, 100, 140), (30, 50, 70), (15, 25, 20))
    ]
    history = [
        {
            "step": t + 1,
            "kept": kept[t],
            "pruned": p,
            "recovered": r if recovered else 0,
            "saliency": None,
        }
        for t, (p, r) in enumerate(((300, 0), (160, 10), (100, 10)))
    ]
    return {
        "method": method,
        "sparsity": 0.9,
        "global_sparsity": 0.9,
        "layers": {n: {"kept": kept[-1][n], "total": t} for n, t in layers.items()},
        "collapsed_layers": [],
        "disconnected": False,
        "history": history,
    }


@pytest.fixture
def tables(tmp_path: Path) -> dict[str, Path]:
    paths = {
        "accuracy": write_table(accuracy_rows(), tmp_path / "accuracy.csv"),
        "steps": write_table(steps_rows(), tmp_path / "steps.csv"),
        "saliency": write_table(saliency_rows(), tmp_path / "saliency.csv"),
    }
    for method, recovered in (("force", True), ("iter_snip", False)):
        run = tmp_path / "runs" / method
        run.mkdir(parents=True)
        (run / "pruning.json").write_text(json.dumps(fake_summary(method, recovered)))
        paths[method] = run
    return paths


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(path).shape
    assert height > 200 and width > 200


def line(fig, label: str):
    found = [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_label() == label]
    assert found, f"no line labelled {label!r}"
    return found[0]


# -- the numbers on the figures --------------------------------------------------------------------


def test_accuracy_figure_draws_mean_and_sample_std_on_an_inverted_log_axis():
    fig = figures.accuracy_sparsity_figure(read_rows(accuracy_rows()))
    force = line(fig, "FORCE")
    assert list(force.get_xdata()) == [10.0, 1.0]  # remaining weights in %
    assert list(force.get_ydata()) == pytest.approx([60.0, 40.0])
    snip = line(fig, "SNIP")
    assert list(snip.get_ydata()) == pytest.approx([40.0, 10.0])
    ax = fig.axes[0]
    band = ax.collections[0].get_paths()[0].vertices  # FORCE's +-1 std band is drawn first
    at_ten = sorted({round(y, 6) for x, y in band if x == pytest.approx(10.0)})
    assert at_ten == pytest.approx([50.0, 70.0])
    assert ax.get_xscale() == "log"
    left, right = ax.get_xlim()
    assert left > right  # sparser to the right
    dense = line(fig, "Dense (85.0%)")
    assert list(dense.get_ydata()) == pytest.approx([85.0, 85.0])
    assert "Remaining weights" in ax.get_xlabel() and "accuracy" in ax.get_ylabel()


def test_effective_panel_plots_each_methods_mean_effective_remaining_weights():
    rows = accuracy_rows()
    for r in rows:  # FORCE loses 0.1-0.3 points of remaining weights to dead ends, SNIP 2-6
        if r["sparsity"] > 0:
            lost = {"force": 0.001, "snip": 0.02}.get(r["method"], 0.0) * (1 + r["seed"])
            r["effective_sparsity"] = min(r["sparsity"] + lost, 1.0)
    fig = figures.accuracy_sparsity_figure(read_rows(rows), effective=True)
    nominal, effective = fig.axes[:2]
    force = [ln for ln in effective.get_lines() if ln.get_label() == "FORCE"][0]
    seeds = len(ACCURACIES[("force", 0.9)])
    mean_lost = 0.001 * (1 + (seeds - 1) / 2)
    assert list(force.get_xdata()) == pytest.approx(
        [100 * (0.1 - mean_lost), 100 * (0.01 - mean_lost)]
    )
    assert list(force.get_ydata()) == pytest.approx([60.0, 40.0])  # the same accuracies
    assert [ln.get_label() for ln in nominal.get_lines()][:1] == ["FORCE"]
    assert "Effective remaining" in effective.get_xlabel()
    # SNIP at 99% keeps no effective weight for some seeds: clamped to the marked sparse end
    assert effective.collections and min(effective.get_xlim()) > 0

    del rows[3]["effective_sparsity"]
    with pytest.raises(ConfigError, match="no effective_sparsity for 1 pruned run"):
        figures.accuracy_sparsity_figure(read_rows(rows), effective=True)


def read_rows(rows: list[dict]) -> list[dict]:
    """What the rows look like after a round trip through the CSV."""
    with tempfile.TemporaryDirectory() as folder:
        return read_table(write_table(rows, Path(folder) / "t.csv"))


def test_steps_figure_refuses_to_pool_settings_then_plots_the_chosen_one():
    rows = read_rows(steps_rows())
    with pytest.raises(ConfigError, match="differing in num_batches"):
        figures.accuracy_steps_figure(rows)  # two SNIP runs per seed: 1 and 5 batches
    fig = figures.accuracy_steps_figure([r for r in rows if r["num_batches"] == 1])
    force = line(fig, "FORCE")
    assert list(force.get_xdata()) == [1, 3, 10]
    assert list(force.get_ydata()) == pytest.approx([31.5, 33.5, 40.5])
    assert list(line(fig, "SNIP (T=1)").get_ydata()) == pytest.approx([20.5, 20.5])


def test_walltime_figure_separates_more_iterations_from_more_batches():
    fig = figures.accuracy_walltime_figure(read_rows(steps_rows()))
    iterations = line(fig, "FORCE, more iterations")
    assert list(iterations.get_xdata()) == pytest.approx([0.2, 0.6, 2.0])
    assert list(iterations.get_ydata()) == pytest.approx([31.5, 33.5, 40.5])
    batches = line(fig, "SNIP, more batches")
    assert list(batches.get_xdata()) == pytest.approx([0.2, 1.0])
    assert list(batches.get_ydata()) == pytest.approx([20.5, 20.5])
    assert batches.get_linestyle() == "--" and iterations.get_linestyle() == "-"


def test_layer_progress_and_recovery_figures_plot_the_logged_counts():
    force, iter_snip = fake_summary("force", True), fake_summary("iter_snip", False)
    fig = figures.layer_fraction_figure([force, iter_snip])
    assert list(line(fig, "FORCE").get_ydata()) == pytest.approx([0.15, 0.125, 20 / 300])
    fig = figures.progressive_layers_figure(force)
    drawn = fig.axes[0].get_lines()
    assert len(drawn) == 3
    assert list(drawn[0].get_ydata()) == pytest.approx([0.6, 0.5, 140 / 300])
    fig = figures.pruned_recovered_figure([force, iter_snip])
    top, bottom = fig.axes
    pruned = [ln for ln in top.get_lines() if ln.get_label() == "FORCE"][0]
    assert list(pruned.get_ydata()) == pytest.approx([0.5, 160 / 600, 100 / 600])
    recovered = [ln for ln in bottom.get_lines() if ln.get_label() == "Iterative SNIP"][0]
    assert list(recovered.get_ydata()) == [0.0, 0.0, 0.0]


def test_recovery_figure_has_one_legend_entry_per_method_and_skips_one_shot_runs(
    tables, tmp_path, monkeypatch
):
    seeds = [fake_summary("force", True), fake_summary("force", True)]
    fig = figures.pruned_recovered_figure([*seeds, fake_summary("iter_snip", False)])
    top = fig.axes[0]
    assert len(top.get_lines()) == 3  # every run is drawn
    assert [t.get_text() for t in top.get_legend().get_texts()] == ["FORCE", "Iterative SNIP"]
    # a sweep folder also holds one-shot runs, whose history is their single step
    one_shot = {
        **fake_summary("snip", False),
        "history": fake_summary("snip", False)["history"][:1],
    }
    run = tables["force"].parent / "snip"
    run.mkdir()
    (run / "pruning.json").write_text(json.dumps(one_shot))
    drawn = []
    original = figures.pruned_recovered_figure
    monkeypatch.setattr(
        figures,
        "pruned_recovered_figure",
        lambda summaries, title="": drawn.extend(summaries) or original(summaries, title),
    )
    main(["recovery", "--runs", str(run.parent), "--out", str(tmp_path / "r.png")])
    assert sorted(s["method"] for s in drawn) == ["force", "iter_snip"]


def test_saliency_figures():
    rows = read_rows(saliency_rows())
    fig = figures.saliency_ratio_figure(rows)
    assert len([ax for ax in fig.axes if ax.get_lines()]) == 2  # one panel per sparsity
    assert list(line(fig, "FORCE").get_ydata()) == pytest.approx([1.0, 2.5, 8.5])
    fig = figures.saliency_views_figure(rows)
    pruning_ax, sparsification_ax = fig.axes
    force = [ln for ln in sparsification_ax.get_lines() if ln.get_label() == "FORCE (T=16)"][0]
    assert list(force.get_ydata()) == pytest.approx([3.0 * 8.5, 3.0 * 8.5])


def test_one_colour_per_method_in_every_figure():
    acc, steps, sal = (
        read_rows(accuracy_rows()),
        read_rows(steps_rows()),
        read_rows(saliency_rows()),
    )
    summaries = [fake_summary("force", True), fake_summary("iter_snip", False)]
    drawn = [
        (figures.accuracy_sparsity_figure(acc), "FORCE"),
        (figures.accuracy_steps_figure([r for r in steps if r["num_batches"] == 1]), "FORCE"),
        (figures.accuracy_walltime_figure(steps), "FORCE, more iterations"),
        (figures.layer_fraction_figure(summaries), "FORCE"),
        (figures.pruned_recovered_figure(summaries), "FORCE"),
        (figures.saliency_ratio_figure(sal), "FORCE"),
        (figures.saliency_views_figure(sal), "FORCE (T=16)"),
    ]
    for fig, label in drawn:
        assert line(fig, label).get_color() == FORCE_RED
    known = [*method_names(), "dense"]
    assert len({figures.method_color(m) for m in known}) == len(known)
    assert figures.method_color("newmethod") == figures.method_color("newmethod")


def test_markdown_table_has_mean_and_std_per_cell():
    text = markdown_table(accuracy_rows(), "test_acc1", "t")
    assert "| FORCE | " in text and "60.0 ± 10.0 (n=3)" in text and "85.0 ± 5.0 (n=3)" in text


# -- the commands ------------------------------------------------------------------------------


COMMANDS = {
    "accuracy": lambda t: ["accuracy", "--results", str(t["accuracy"])],
    "steps": lambda t: ["steps", "--results", str(t["steps"]), "--where", "num_batches=1"],
    "walltime": lambda t: ["walltime", "--results", str(t["steps"])],
    "layers": lambda t: ["layers", "--runs", str(t["force"]), str(t["iter_snip"])],
    "progress": lambda t: ["progress", "--run", str(t["force"] / "pruning.json")],
    "recovery": lambda t: ["recovery", "--runs", str(t["force"].parent)],
    "saliency-ratio": lambda t: ["saliency-ratio", "--results", str(t["saliency"])],
    "saliency-views": lambda t: ["saliency-views", "--results", str(t["saliency"])],
}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_figure_command_renders_a_png(name, tables, tmp_path):
    out = tmp_path / f"{name}.png"
    assert main([*COMMANDS[name](tables), "--out", str(out)]) == 0
    assert_png(out)


def test_tensorboard_option_writes_an_event_file(tables, tmp_path):
    board = tmp_path / "tb"
    main(
        [
            "accuracy",
            "--results",
            str(tables["accuracy"]),
            "--out",
            str(tmp_path / "a.png"),
            "--tensorboard",
            str(board),
        ]
    )
    assert list(board.glob("events.out.tfevents.*"))


def write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("make", "command", "message"),
    [
        (lambda d: write_text(d / "e.csv", ""), "accuracy", "is empty"),
        (
            lambda d: write_text(d / "h.csv", "method,sparsity,seed,test_acc1\n"),
            "accuracy",
            "no rows",
        ),
        (
            lambda d: write_text(d / "c.csv", "method,seed,test_acc1\nforce,0,0.5\n"),
            "accuracy",
            "lacks the column",
        ),
        (
            lambda d: write_text(d / "n.csv", "method,sparsity,test_acc1\nforce,0.9,abc\n"),
            "accuracy",
            "not a number",
        ),
        (
            lambda d: write_text(d / "p.csv", "method,sparsity,test_acc1\nforce,0.9,87.5\n"),
            "accuracy",
            "not a fraction",
        ),
        (
            lambda d: write_text(d / "r.csv", "method,sparsity,test_acc1\nforce,0.9\n"),
            "accuracy",
            "number of cells",
        ),
        (lambda d: d / "missing.csv", "accuracy", "does not exist"),
        (
            lambda d: write_text(d / "s.csv", "method,sparsity,steps\nforce,0.9,3\n"),
            "saliency-ratio",
            "ratio_pruning",
        ),
    ],
)
def test_malformed_tables_exit_2_with_a_clear_message(make, command, message, tmp_path, capsys):
    path = make(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--results", str(path), "--out", str(tmp_path / "x.png")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("pruning-figures: error:") and message in err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(
    ("summary", "command", "message"),
    [
        ({"method": "force", "sparsity": 0.9}, "progress", "'layers' is missing"),
        (
            {"method": "force", "sparsity": 0.9, "layers": {"a": {"kept": 5, "total": 2}}},
            "progress",
            "keeps more weights",
        ),
        (
            {
                "method": "force",
                "sparsity": 0.9,
                "layers": {"a": {"kept": 2, "total": 5, "effective": 3}},
            },
            "progress",
            "'effective' count that is not in [0, kept]",
        ),
        ({**fake_summary("snip", False), "history": []}, "progress", "no per-step history"),
        ({**fake_summary("snip", False), "history": []}, "recovery", "no per-step history"),
    ],
)
def test_malformed_pruning_json_exits_2_with_a_clear_message(
    summary, command, message, tmp_path, capsys
):
    (tmp_path / "pruning.json").write_text(json.dumps(summary))
    flag = "--run" if command == "progress" else "--runs"
    with pytest.raises(SystemExit) as exit_info:
        main([command, flag, str(tmp_path), "--out", str(tmp_path / "x.png")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_empty_run_folder_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["accuracy", "--runs", str(tmp_path), "--out", str(tmp_path / "x.png")])
    assert exit_info.value.code == 2
    assert "No finished run" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


# -- a real tiny progressive run ------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    """The log dir of a real FORCE run (T = 4) of the quickstart, trained for two batches."""
    root = tmp_path_factory.mktemp("real")
    command = [
        sys.executable,
        "-m",
        "pruning_lightning",
        "fit",
        "--config",
        QUICKSTART,
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "2",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.limit_test_batches",
        "1",
        "--trainer.num_sanity_val_steps",
        "0",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_checkpointing",
        "false",
        "--model.width",
        "4",
        "--pruning.method",
        "force",
        "--pruning.sparsity",
        "0.95",
        "--pruning.steps",
        "4",
        "--test_after_fit",
        "true",
        "--trainer.default_root_dir",
        str(root),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # 2 shared cores: no oversubscription
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (log_dir,) = [p.parent for p in root.rglob("pruning.json")]
    return log_dir


def test_figures_of_a_real_progressive_run(real_run, tmp_path):
    summary = json.loads((real_run / "pruning.json").read_text())
    assert len(summary["history"]) == 4
    for name, args in {
        "progress": ["--run", str(real_run)],
        "recovery": ["--runs", str(real_run)],
        "layers": ["--runs", str(real_run)],
        "accuracy": ["--runs", str(real_run)],
    }.items():
        out = tmp_path / f"{name}.png"
        assert main([name, *args, "--out", str(out)]) == 0
        assert_png(out)
    # the figures show exactly the logged history
    total = sum(layer["total"] for layer in summary["layers"].values())
    fig = figures.pruned_recovered_figure([summary])
    pruned = fig.axes[0].get_lines()[0]
    assert list(pruned.get_ydata()) == pytest.approx(
        [r["pruned"] / total for r in summary["history"]]
    )
    fig = figures.progressive_layers_figure(summary)
    last = fig.axes[0].get_lines()[-1]
    expected = [layer["kept"] / layer["total"] for layer in summary["layers"].values()]
    assert list(last.get_ydata()) == pytest.approx(expected)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny network on 2 shared cores: threads only contend
    yield
    torch.set_num_threads(threads)


def test_saliency_command_computes_masks_without_training(tmp_path, one_thread):
    out = tmp_path / "saliency"
    args = [
        "saliency",
        "--config",
        QUICKSTART,
        "--set",
        "model.width=4",
        "--sparsities",
        "0.5",
        "0.9",
        "--steps",
        "1",
        "3",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    with (out / "saliency.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    # per sparsity: one-shot SNIP + force and iter_snip at T = 1 and 3
    assert len(rows) == 2 * (1 + 2 * 2)
    for row in rows:
        assert float(row["saliency_pruning"]) <= float(row["saliency_sparsification"]) * (1 + 1e-9)
        if int(row["steps"]) == 1:  # T = 1 is SNIP on the same batch: the same mask
            assert float(row["ratio_pruning"]) == pytest.approx(1.0)
    assert_png(out / "saliency_ratio.png")
    assert_png(out / "saliency_views.png")


def test_where_filters_rows_and_names_unknown_columns(tables, tmp_path, capsys):
    out = tmp_path / "w.png"
    args = ["accuracy", "--results", str(tables["accuracy"]), "--out", str(out)]
    assert main([*args, "--where", "seed=1"]) == 0
    assert_png(out)
    with pytest.raises(SystemExit):
        main([*args, "--where", "stepz=3"])
    assert "has no column 'stepz'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--where", "seed=7"])
    assert "No row" in capsys.readouterr().err
