"""The ablation axis of pruning-sweep, the ablation column of the results, and the figure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pruning_lightning.analysis import figures
from pruning_lightning.analysis.figures_cli import main as figures_main
from pruning_lightning.analysis.results import read_run, read_table
from pruning_lightning.analysis.sweep import expand
from pruning_lightning.analysis.sweep import main as sweep_main
from pruning_lightning.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")

# Test accuracy per (method, ablation), one value per seed 0, 1, 2 (sparsity 0.9).
ACCURACIES = {
    ("force", None): [0.5, 0.6, 0.7],  # mean 60 %, sample std 10 %
    ("force", "shuffle"): [0.3, 0.3, 0.3],
    ("force", "invert"): [0.1, 0.2, 0.3],  # mean 20 %, std 10 %
    ("snip", None): [0.4, 0.4, 0.4],
    ("snip", "shuffle"): [0.2, 0.25, 0.3],
}
DENSE = [0.8, 0.9, 0.85]


def fake_run(out: Path, name: str, seed: int, acc: float, method: str, ablation: str | None):
    """A finished run folder as the CLI leaves it: config.yaml, test_metrics.json and, when
    pruned (method not dense), a pruning.json recording the ablation."""
    log_dir = out / name / "lightning_logs" / "version_0"
    log_dir.mkdir(parents=True)
    sparsity = 0.0 if method == "dense" else 0.9
    (log_dir / "config.yaml").write_text(
        f"seed_everything: {seed}\npruning:\n  method: force\n  sparsity: {sparsity}\n"
    )
    (log_dir / "test_metrics.json").write_text(json.dumps({"test/acc1": acc}))
    if method != "dense":
        record = {"method": method, "sparsity": sparsity, "steps": 1, "seed": seed}
        record.update(global_seed=seed, schema=2, global_sparsity=sparsity)
        record.update(ablation=ablation, ablation_seed=None if ablation is None else seed)
        record["layers"] = {"fc.weight": {"kept": 1, "total": 10}}
        (log_dir / "pruning.json").write_text(json.dumps(record))
    return log_dir


@pytest.fixture
def sweep(tmp_path: Path) -> tuple[Path, list[str]]:
    """A sweep folder of finished fake runs, named as `pruning-sweep` names them, and the
    sweep's arguments."""
    out = tmp_path / "sweep"
    args = ["--config", QUICKSTART, "--methods", "force", "snip", "--sparsities", "0", "0.9"]
    args += ["--seeds", "0", "1", "2", "--ablations", "none", "shuffle", "invert"]
    args += ["--out", str(out)]
    for spec in expand(["force", "snip"], [0.0, 0.9], [0, 1, 2], (), ["none", "shuffle", "invert"]):
        if spec.method == "dense":
            acc = DENSE[spec.seed]
        else:
            accs = ACCURACIES.get((spec.method, spec.ablation))
            if accs is None:
                continue  # snip-invert did not finish
            acc = accs[spec.seed]
        fake_run(out, spec.name, spec.seed, acc, spec.method, spec.ablation)
    return out, args


def test_ablations_multiply_the_pruned_runs_only_and_keep_the_plain_names():
    plain = expand(["force", "random"], [0.0, 0.9], [0, 1])
    assert expand(["force", "random"], [0.0, 0.9], [0, 1], (), ["none"]) == plain
    assert [s.name for s in plain] == [
        "dense-s0-seed0",
        "dense-s0-seed1",
        "force-s0.9-seed0",
        "force-s0.9-seed1",
        "random-s0.9-seed0",
        "random-s0.9-seed1",
    ]
    specs = expand(["force", "random"], [0.0, 0.9], [0, 1], (), ["none", "shuffle", "invert"])
    names = {s.name for s in specs}
    assert len(names) == len(specs)
    assert {s.name for s in plain} <= names  # finished plain runs are still found
    # dense: one run per seed, no ablation
    dense = [s for s in specs if s.sparsity == 0]
    assert [(s.seed, s.ablation) for s in dense] == [(0, None), (1, None)]
    # random scores rank nothing: no invert run for them (PruningConfig refuses it)
    assert {(s.method, s.ablation) for s in specs if s.sparsity > 0} == {
        ("random", None),
        ("random", "shuffle"),
        ("force", None),
        ("force", "shuffle"),
        ("force", "invert"),
    }
    shuffled = next(s for s in specs if s.ablation == "shuffle" and s.method == "force")
    assert shuffled.name == "force-s0.9-seed0-shuffle"
    args = shuffled.overrides()
    assert args[args.index("--pruning.ablation") + 1] == "shuffle"
    for spec in specs:
        assert ("--pruning.ablation" in spec.overrides()) == (spec.ablation is not None)


def test_unknown_ablation_and_an_ablation_grid_are_refused(tmp_path, capsys):
    with pytest.raises(ConfigError, match="Unknown ablation.*'shufle'.*none"):
        expand(["force"], [0.9], [0], (), ["none", "shufle"])
    for extra in (["--ablations", "bogus"], ["--grid", "pruning.ablation=shuffle,invert"]):
        args = ["--config", QUICKSTART, "--methods", "force", "--sparsities", "0.9"]
        with pytest.raises(SystemExit) as exit_info:
            sweep_main([*args, "--out", str(tmp_path), "--dry-run", *extra])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("pruning-sweep: error:") and len(err.splitlines()) == 1
        assert "--ablations" in err or "bogus" in err


def test_dry_run_adds_the_ablation_flag(tmp_path, capsys):
    args = ["--config", QUICKSTART, "--methods", "force", "--sparsities", "0", "0.9"]
    sweep_main([*args, "--ablations", "none", "reinit", "--out", str(tmp_path), "--dry-run"])
    printed = capsys.readouterr().out.splitlines()
    commands = dict(zip(printed[::2], printed[1::2], strict=True))
    by_name = {header.split()[1]: command for header, command in commands.items()}
    assert set(by_name) == {"dense-s0-seed0", "force-s0.9-seed0", "force-s0.9-seed0-reinit"}
    assert "--pruning.ablation reinit" in by_name["force-s0.9-seed0-reinit"]
    assert "--pruning.ablation" not in by_name["force-s0.9-seed0"]
    assert "--pruning.ablation" not in by_name["dense-s0-seed0"]


def test_a_sweep_says_which_methods_get_no_invert_run(tmp_path, capsys):
    args = ["--config", QUICKSTART, "--methods", "random", "force", "--sparsities", "0.9"]
    sweep_main([*args, "--ablations", "none", "invert", "--out", str(tmp_path), "--dry-run"])
    out = capsys.readouterr().out
    assert "note: no invert runs for random" in out
    assert "random-s0.9-seed0-invert" not in out and "force-s0.9-seed0-invert" in out


def test_the_ablation_column_comes_from_the_record(tmp_path):
    run = fake_run(tmp_path / "a", "x", 0, 0.5, "force", "shuffle")
    assert read_run(run)["ablation"] == "shuffle"
    # what the record says wins over anything the folder name or config suggests
    assert read_run(fake_run(tmp_path / "b", "x-shuffle", 0, 0.5, "force", None))["ablation"] == (
        "none"
    )
    assert read_run(fake_run(tmp_path / "c", "x", 0, 0.5, "dense", None))["ablation"] == "none"


@pytest.mark.parametrize(
    ("ablation", "saliency_data", "column"),
    [(None, "random_labels", "random_labels"), ("shuffle", "shuffled_pixels",
      "shuffle+shuffled_pixels")],
)  # fmt: skip
def test_a_run_on_corrupted_saliency_data_is_its_own_ablation(
    tmp_path, ablation, saliency_data, column
):
    run = fake_run(tmp_path, "x", 0, 0.5, "force", ablation)
    record = json.loads((run / "pruning.json").read_text())
    (run / "pruning.json").write_text(json.dumps({**record, "saliency_data": saliency_data}))
    assert read_run(run)["ablation"] == column
    assert figures.sort_ablations([column, "invert", "none"])[0] == "none"


def test_collected_table_has_the_ablation_column_and_figures_keep_ablations_apart(sweep):
    out, args = sweep
    sweep_main([*args, "--collect-only"])
    rows = read_table(out / "results.csv")
    assert list(rows[0])[:4] == ["method", "sparsity", "seed", "ablation"]
    assert len(rows) == 3 + 5 * 3
    assert {(r["method"], r["ablation"]) for r in rows} == {
        ("dense", "none"),
        *((m, a or "none") for m, a in ACCURACIES),
    }
    # a figure that does not draw the ablations refuses to average them as if they were seeds
    with pytest.raises(ConfigError, match="differing in ablation.*--where ablation="):
        figures.accuracy_sparsity_figure(rows)
    figures.accuracy_sparsity_figure([r for r in rows if r["ablation"] == "none"])


def bars(fig) -> dict[str, list[tuple[float, float, float]]]:
    """Per legend label: (x, height, error bar length) of each of its bars."""
    (ax,) = fig.axes
    found = {}
    for container in ax.containers:
        if not hasattr(container, "errorbar"):
            continue
        (segments,) = [c.get_segments() for c in container.errorbar.lines[2]]
        found[container.get_label()] = [
            (bar.get_x() + bar.get_width() / 2, bar.get_height(), (seg[1][1] - seg[0][1]) / 2)
            for bar, seg in zip(container.patches, segments, strict=True)
        ]
    return found


def test_ablations_figure_draws_mean_and_std_over_seeds_per_method(sweep):
    out, args = sweep
    sweep_main([*args, "--collect-only"])
    fig = figures.ablations_figure(read_table(out / "results.csv"))
    drawn = bars(fig)
    assert list(drawn) == ["original mask", "shuffle", "invert"]
    force_x, snip_x = (bar[0] for bar in drawn["original mask"])
    assert force_x < snip_x  # registry order: FORCE left of SNIP
    (force_orig, snip_orig) = drawn["original mask"]
    assert force_orig[1:] == pytest.approx((60.0, 10.0))
    assert snip_orig[1:] == pytest.approx((40.0, 0.0))
    assert [v for b in drawn["shuffle"] for v in b[1:]] == pytest.approx([30.0, 0.0, 25.0, 5.0])
    (force_invert,) = drawn["invert"]  # SNIP's invert runs are missing
    assert force_invert[1:] == pytest.approx((20.0, 10.0))
    assert force_x < force_invert[0] < 0.5 < snip_x  # in FORCE's group (ticks at 0 and 1)
    labels = [t.get_text() for t in fig.axes[0].texts]
    assert labels.count("n=3") == 5
    (dense,) = [line for line in fig.axes[0].lines if line.get_label().startswith("Dense")]
    assert dense.get_ydata()[0] == pytest.approx(100 * sum(DENSE) / 3)  # the dense runs' mean
    assert dense.get_label() == "Dense (mean, n=3)"
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["FORCE", "SNIP"]


def test_ablations_command_writes_a_png_and_refuses_bad_tables(sweep, tmp_path, capsys):
    out, args = sweep
    sweep_main([*args, "--collect-only"])
    png = tmp_path / "ablations.png"
    figures_main(["ablations", "--results", str(out / "results.csv"), "--out", str(png)])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    old = tmp_path / "old.csv"
    old.write_text("method,sparsity,seed,test_acc1\nforce,0.9,0,0.5\n")
    for table, sparsity, message in (
        (old, [], "lacks the column(s) ablation"),
        (out / "results.csv", ["--sparsity", "0.5"], "no run at sparsity 0.5"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            figures_main(["ablations", "--results", str(table), "--out", str(png), *sparsity])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err
