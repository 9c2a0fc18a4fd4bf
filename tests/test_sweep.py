"""The sweep runner: the grid it expands, the commands and SLURM script it writes, and a real tiny
sweep through the CLI that gathers the right rows and, invoked again, skips what finished."""

from __future__ import annotations

import csv
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pruning_lightning.analysis.results import read_run
from pruning_lightning.analysis.sweep import (
    RunSpec,
    build_command,
    expand,
    main,
    parse_assignments,
    run_local,
    slurm_script,
)
from pruning_lightning.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
# A run of a few seconds: tiny network, two training batches, one epoch, one val/test batch.
TINY = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "trainer.num_sanity_val_steps=0",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.enable_checkpointing=false",
    "model.width=4",
    "pruning.steps=3",
    "pruning.log_figure=false",
]


def sweep_args(out: Path, *extra: str) -> list[str]:
    args = ["--config", QUICKSTART, "--methods", "force", "snip", "--sparsities", "0.5", "0.9"]
    args += ["--seeds", "0", "1", "--out", str(out)]
    for item in TINY:
        args += ["--set", item]
    return [*args, *extra]


# -- the grid and the commands (no runs) ----------------------------------------------------------


def test_expand_is_the_product_without_runs_that_repeat_another():
    grid = parse_assignments(["pruning.steps=1,10", "pruning.num_batches=1,5"], "--grid", True)
    specs = expand(["force", "snip"], [0.0, 0.9], [0, 1, 2], grid)
    assert len(set(specs)) == len(specs)
    assert len({s.name for s in specs}) == len(specs)  # one folder per run
    by_method = {m: [s for s in specs if s.method == m] for m in ("force", "snip", "dense")}
    # FORCE: every grid point x 3 seeds
    assert {s.grid for s in by_method["force"]} == {
        (("pruning.steps", a), ("pruning.num_batches", b)) for a in ("1", "10") for b in ("1", "5")
    }
    assert len(by_method["force"]) == 4 * 3
    # one-shot SNIP: T = 1 only, but every num_batches
    assert {s.grid for s in by_method["snip"]} == {
        (("pruning.steps", "1"), ("pruning.num_batches", b)) for b in ("1", "5")
    }
    assert len(by_method["snip"]) == 2 * 3
    # dense: one run per seed, whatever the methods and pruning settings
    assert [(s.sparsity, s.seed) for s in by_method["dense"]] == [(0.0, 0), (0.0, 1), (0.0, 2)]
    assert len(specs) == 12 + 6 + 3


def test_command_puts_the_sweep_settings_last_so_they_win():
    spec = RunSpec("force", 0.995, 3, (("pruning.steps", "10"),))
    command = build_command(spec, ["base.yaml"], [("trainer.max_epochs", "2")], Path("/o/r"), "py")
    assert command[:6] == ["py", "-m", "pruning_lightning", "fit", "--config", "base.yaml"]
    text = shlex.join(command)
    assert "--trainer.max_epochs 2 --pruning.steps 10 --pruning.method force" in text
    assert "--pruning.sparsity 0.995 --seed_everything 3" in text
    assert text.endswith("--trainer.default_root_dir /o/r --test_after_fit true")
    assert spec.name == "force-s0.995-seed3-pruning.steps=10"
    dense = build_command(RunSpec("dense", 0.0, 0), ["b.yaml"], [], Path("/o/d"), "py")
    assert "--pruning.method" not in dense and "--pruning.sparsity" in dense
    # a one-shot method runs with T = 1 even when the base config sets a T for FORCE
    snip = build_command(RunSpec("snip", 0.9, 0), ["b.yaml"], [("pruning.steps", "3")], Path("/o"))
    assert shlex.join(snip).count("--pruning.steps") == 2
    assert snip[snip.index("--pruning.steps", snip.index("--pruning.method")) + 1] == "1"


@pytest.mark.parametrize(
    ("items", "flag", "message"),
    [
        (["pruning.steps"], "--grid", "is not KEY=VALUE"),
        (["pruning.sparsity=0.9,0.99"], "--grid", "--sparsities"),
        (["seed_everything=1,2"], "--grid", "--seeds"),
        (["pruning.steps=1,,3"], "--grid", "empty value"),
        (["a.b=1", "a.b=2"], "--set", "twice"),
    ],
)
def test_bad_assignments_say_how_to_fix_them(items, flag, message):
    with pytest.raises(ConfigError, match=message):
        parse_assignments(items, flag, multi=flag == "--grid")


def test_bad_methods_and_sparsities_are_refused():
    with pytest.raises(ConfigError, match="Unknown pruning method.*force"):
        expand(["forse"], [0.9], [0])
    with pytest.raises(ConfigError, match=r"outside \[0, 1\)"):
        expand(["force"], [99.5], [0])


def test_cli_errors_exit_2_with_the_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "--config",
                str(tmp_path / "nope.yaml"),
                "--methods",
                "force",
                "--sparsities",
                "0.9",
                "--out",
                str(tmp_path),
            ]
        )
    assert exit_info.value.code == 2
    assert "does not exist" in capsys.readouterr().err


def test_dry_run_prints_every_command_and_runs_nothing(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(sweep_args(out, "--grid", "pruning.num_batches=1,2", "--dry-run")) == 0
    printed = capsys.readouterr().out.splitlines()
    commands = [line for line in printed if not line.startswith("#")]
    assert len(commands) == 2 * 2 * 2 * 2
    assert all("[new]" in line for line in printed if line.startswith("#"))
    assert sum("--pruning.num_batches 2" in c for c in commands) == 8
    assert not out.exists()


def test_slurm_writes_an_array_over_the_runs_with_lightnings_ddp_settings(tmp_path, capsys):
    out = tmp_path / "sweep"
    options = "--slurm --devices 4 --num-nodes 2 --time 12:00:00 --sbatch account=lab"
    args = sweep_args(out, *options.split())
    assert main(args) == 0
    assert "sbatch" in capsys.readouterr().out
    script = (out / "slurm" / "sweep.sbatch").read_text()
    commands = (out / "slurm" / "commands.txt").read_text().splitlines()
    run_dirs = (out / "slurm" / "run_dirs.txt").read_text().splitlines()
    assert len(commands) == len(run_dirs) == 8
    for line in (
        "--array=0-7",
        "--nodes=2",
        "--ntasks-per-node=4",
        "--gres=gpu:4",
        "--time=12:00:00",
        "#SBATCH --account=lab",
    ):
        assert line in script
    assert 'eval "srun $command"' in script
    for command, run_dir in zip(commands, run_dirs, strict=True):
        tokens = shlex.split(command)
        assert tokens[tokens.index("--trainer.devices") + 1] == "4"
        assert tokens[tokens.index("--trainer.num_nodes") + 1] == "2"
        assert tokens[tokens.index("--trainer.default_root_dir") + 1] == run_dir
    # Array task 3 runs line 4 through srun, word for word (a fake srun records its arguments).
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$SRUN_LOG"\n')
    (fake / "srun").chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{fake}:{os.environ['PATH']}",
        "SLURM_ARRAY_TASK_ID": "3",
        "SRUN_LOG": str(tmp_path / "srun.log"),
    }
    subprocess.run(["bash", str(out / "slurm" / "sweep.sbatch")], check=True, env=env)
    assert (tmp_path / "srun.log").read_text().splitlines() == shlex.split(commands[3])
    assert (Path(run_dirs[3]) / "command.sh").is_file()


def test_slurm_script_without_gpus_has_no_gres():
    script = slurm_script(
        3, Path("c"), Path("r"), Path("l"), Path("/w"), gpus=False, max_parallel=2
    )
    assert "--array=0-2%2" in script and "gres" not in script


# -- a real tiny sweep through the CLI -------------------------------------------------------------


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def run_sweep(out: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pruning_lightning.analysis.sweep", *sweep_args(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny runs on 2 shared cores: no oversubscription
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)


def test_sweep_runs_gathers_and_skips_finished_runs(tmp_path, capsys):
    out = tmp_path / "sweep"
    first = run_sweep(out)
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.count(": running ...") == 8
    rows = read_csv(out / "results.csv")
    assert sorted((r["method"], float(r["sparsity"]), int(r["seed"])) for r in rows) == sorted(
        (m, s, seed) for m in ("force", "snip") for s in (0.5, 0.9) for seed in (0, 1)
    )
    for row in rows:
        assert 0.0 <= float(row["test_acc1"]) <= 1.0
        assert float(row["global_sparsity"]) == pytest.approx(float(row["sparsity"]), abs=1e-3)
        assert float(row["mask_seconds"]) > 0
        assert int(row["collapsed_layers"]) >= 0
        assert row["disconnected"] in ("True", "False")
        assert row["steps"] == ("3" if row["method"] == "force" else "1")  # snip: T = 1
        assert (Path(row["run_dir"]) / "test_metrics.json").is_file()
        assert (Path(row["run_dir"]) / "pruning.json").is_file()
        # the run really used the sweep's seed and override
        config = (Path(row["run_dir"]) / "config.yaml").read_text()
        assert f"seed_everything: {row['seed']}" in config and "width: 4" in config
    metrics = {
        r["run_dir"]: (Path(r["run_dir"]) / "test_metrics.json").stat().st_mtime_ns for r in rows
    }

    # Second invocation: every run finished, so none runs again.
    second = run_sweep(out)
    assert second.returncode == 0, second.stdout + second.stderr
    assert second.stdout.count("finished before, skipped") == 8
    assert "running" not in second.stdout
    assert {d: (Path(d) / "test_metrics.json").stat().st_mtime_ns for d in metrics} == metrics
    assert [p.name for p in out.glob("*/lightning_logs/*")] == ["version_0"] * 8
    assert read_csv(out / "results.csv") == rows

    # --collect-only rebuilds the same table from the run folders.
    (out / "results.csv").unlink()
    assert main([*sweep_args(out), "--collect-only"]) == 0
    assert read_csv(out / "results.csv") == rows


# A stand-in for the CLI: counts its calls, writes the log dir a finished run has, or fails.
FAKE_RUN = """
import json, pathlib, sys
root, outcome = pathlib.Path(sys.argv[1]), sys.argv[2]
with open(sys.argv[3], "a") as counter:
    counter.write(root.name + "\\n")
if outcome == "fail":
    print("something broke"); sys.exit(3)
log_dir = root / "lightning_logs" / "version_0"
log_dir.mkdir(parents=True)
(log_dir / "test_metrics.json").write_text(json.dumps({"test/acc1": 0.5}))
"""


def test_resume_redoes_half_finished_runs_and_reports_failures(tmp_path, capsys):
    out, counter = tmp_path / "sweep", tmp_path / "calls.txt"
    specs = [RunSpec("force", 0.9, seed) for seed in range(4)]  # done, partial, new, failing
    outcomes = ["ok", "ok", "ok", "fail"]
    commands = [
        [sys.executable, "-c", FAKE_RUN, str(out / s.name), o, str(counter)]
        for s, o in zip(specs, outcomes, strict=True)
    ]
    done = out / specs[0].name / "lightning_logs" / "version_0"
    done.mkdir(parents=True)
    (done / "test_metrics.json").write_text('{"test/acc1": 0.9}')
    partial = out / specs[1].name / "lightning_logs" / "version_0"
    partial.mkdir(parents=True)
    (partial / "pruning.json").write_text("{}")  # crashed before testing
    writes = []

    failed = run_local(specs, commands, out, lambda: writes.append(1))
    printed = capsys.readouterr().out
    assert failed == [specs[3].name]
    assert counter.read_text().split() == [s.name for s in specs[1:]]  # the finished one skipped
    assert f"{specs[0].name}: finished before, skipped" in printed
    assert f"{specs[1].name}: half-finished, deleting it and redoing" in printed
    assert "FAILED (exit code 3)" in printed and "something broke" in printed
    assert not (partial / "pruning.json").exists()  # the half-finished run started over
    assert (partial / "test_metrics.json").is_file()
    assert (done / "test_metrics.json").read_text() == '{"test/acc1": 0.9}'  # untouched
    assert len(writes) == 2  # the table is rewritten after each run that finishes

    # Again: only the failed run is retried (it left a half-finished folder behind).
    counter.unlink()
    assert run_local(specs, commands, out, lambda: None) == [specs[3].name]
    assert counter.read_text().split() == [specs[3].name]


def test_read_run_of_a_dense_run_has_method_dense_and_no_mask_columns(tmp_path):
    (tmp_path / "test_metrics.json").write_text('{"test/acc1": 0.75, "test/loss": 0.5}')
    (tmp_path / "config.yaml").write_text(
        "seed_everything: 3\npruning:\n  method: force\n  sparsity: 0.0\n  steps: 10\n"
    )
    row = read_run(tmp_path)
    assert row["method"] == "dense" and row["sparsity"] == 0.0 and row["seed"] == 3
    assert row["test_acc1"] == 0.75 and row["test_loss"] == 0.5
    assert row["global_sparsity"] == 0.0 and row["collapsed_layers"] == 0
    assert row.get("mask_seconds") is None
    (tmp_path / "test_metrics.json").write_text("{}")
    with pytest.raises(ConfigError, match="no test metrics"):
        read_run(tmp_path)
