"""The sweep runner: the grid it expands, the commands and SLURM script it writes, and a real tiny
sweep through the CLI that gathers the right rows and, invoked again, skips what finished and
continues what did not from its newest checkpoint (locally, and as a requeued SLURM task)."""

from __future__ import annotations

import csv
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from pruning_lightning.analysis import resume
from pruning_lightning.analysis.assignments import parse_assignments
from pruning_lightning.analysis.figures_cli import load_summaries
from pruning_lightning.analysis.results import (
    find_log_dir,
    find_pruning_json,
    latest_pruning_jsons,
    read_run,
)
from pruning_lightning.analysis.sweep import (
    RESERVED,
    RunSpec,
    build_command,
    expand,
    main,
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


def tiny(**changes: object) -> list[str]:
    """TINY with some ``trainer.*`` values replaced, e.g. ``tiny(max_epochs=2)``."""
    items = dict(item.split("=", 1) for item in TINY)
    items.update({f"trainer.{key}": str(value) for key, value in changes.items()})
    return [f"{key}={value}" for key, value in items.items()]


def sweep_args(out: Path, *extra: str) -> list[str]:
    args = ["--config", QUICKSTART, "--methods", "force", "snip", "--sparsities", "0.5", "0.9"]
    args += ["--seeds", "0", "1", "--out", str(out)]
    for item in TINY:
        args += ["--set", item]
    return [*args, *extra]


# -- the grid and the commands (no runs) ----------------------------------------------------------


def fake_srun_env(tmp_path: Path, task: int) -> dict[str, str]:
    """The environment of SLURM array task ``task`` with a fake ``srun`` that records its
    arguments (one per line) in ``tmp_path / "srun.log"``."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$SRUN_LOG"\n')
    (fake / "srun").chmod(0o755)
    return {
        **os.environ,
        "PATH": f"{fake}:{os.environ['PATH']}",
        "SLURM_ARRAY_TASK_ID": str(task),
        "SRUN_LOG": str(tmp_path / "srun.log"),
    }


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
    # a base config's T for FORCE is passed on as is: the callback's one rule has a one-shot
    # method ignore it (tests/test_callback.py), and the run's record says T = 1
    snip = build_command(RunSpec("snip", 0.9, 0), ["b.yaml"], [("pruning.steps", "3")], Path("/o"))
    assert shlex.join(snip).count("--pruning.steps") == 1


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
        parse_assignments(items, flag, multi=flag == "--grid", reserved=RESERVED)


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
        "#SBATCH --signal=SIGUSR1@90",  # Lightning's SLURMEnvironment checkpoints on SIGUSR1
        "#SBATCH --requeue",  # ... and requeues the task with scontrol requeue
        "#SBATCH --open-mode=append",  # the requeued task's output adds to the first one's
    ):
        assert line in script
    assert 'eval "srun $command $resume"' in script
    assert "rm -rf" not in script and "rm " not in script  # checkpoints survive
    for command, run_dir in zip(commands, run_dirs, strict=True):
        tokens = shlex.split(command)
        assert tokens[tokens.index("--trainer.devices") + 1] == "4"
        assert tokens[tokens.index("--trainer.num_nodes") + 1] == "2"
        assert tokens[tokens.index("--trainer.default_root_dir") + 1] == run_dir
    # Array task 3 runs line 4 through srun, word for word (a fake srun records its arguments).
    env = fake_srun_env(tmp_path, task=3)
    subprocess.run(["bash", str(out / "slurm" / "sweep.sbatch")], check=True, env=env)
    assert (tmp_path / "srun.log").read_text().splitlines() == shlex.split(commands[3])
    assert (Path(run_dirs[3]) / "command.sh").is_file()
    # The script holds its own task table: writing the sweep's files again (say, a second
    # --slurm while tasks wait to be requeued) cannot make a task run another run.
    for name in ("commands.txt", "run_dirs.txt"):
        (out / "slurm" / name).write_text("")
    subprocess.run(["bash", str(out / "slurm" / "sweep.sbatch")], check=True, env=env)
    assert (tmp_path / "srun.log").read_text().splitlines() == shlex.split(commands[3])


def test_slurm_array_for_the_imagenet_config(tmp_path, capsys):
    # the README's cluster command: 2 nodes of 8 GPUs, per-device batch 256 / 16
    config = Path(__file__).parents[1] / "configs" / "imagenet_resnet50.yaml"
    args = [
        "--config", str(config), "--methods", "iter_snip", "force", "--sparsities", "0.95",
        "--seeds", "0", "--devices", "8", "--num-nodes", "2", "--set", "data.batch_size=16",
        "--set", "data.data_dir=/datasets/imagenet", "--out", str(tmp_path / "sweep"), "--slurm",
    ]  # fmt: skip
    assert main(args) == 0
    script = (tmp_path / "sweep" / "slurm" / "sweep.sbatch").read_text()
    for line in ("--array=0-1", "--nodes=2", "--ntasks-per-node=8", "--gres=gpu:8"):
        assert line in script
    commands = (tmp_path / "sweep" / "slurm" / "commands.txt").read_text().splitlines()
    for command, method in zip(commands, ["iter_snip", "force"], strict=True):
        tokens = shlex.split(command)
        assert tokens[tokens.index("--config") + 1] == str(config)
        assert tokens[tokens.index("--pruning.method") + 1] == method
        assert tokens[tokens.index("--data.batch_size") + 1] == "16"
        assert tokens[tokens.index("--trainer.num_nodes") + 1] == "2"


def test_slurm_script_without_gpus_has_no_gres():
    script = slurm_script(["a", "b", "c"], ["r", "s", "t"], Path("l"), Path("/w"), gpus=False)
    assert "--array=0-2" in script and "gres" not in script
    assert "--array=0-2%2" in slurm_script(
        ["a"] * 3, ["r"] * 3, Path("l"), Path("/w"), max_parallel=2
    )


def test_slurm_refuses_job_names_that_hide_slurm_from_lightning(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(sweep_args(tmp_path / "sweep", "--slurm", "--job-name", "interactive"))
    assert exit_info.value.code == 2
    assert "neither requeue" in capsys.readouterr().err


def fake_checkpoint(path: Path, mtime: float, complete: bool = True) -> Path:
    """A file that passes (or, cut short, fails) the completeness check, written at ``mtime``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:  # torch.save writes a zip archive too
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    if not complete:
        path.write_bytes(path.read_bytes()[:20])
    os.utime(path, (mtime, mtime))
    return path


def lightning_hpc_pick(run_dir: Path) -> str | None:
    """The hpc checkpoint Lightning itself would resume from with this default_root_dir."""
    from lightning.pytorch import Trainer

    trainer = Trainer(default_root_dir=run_dir, logger=False, enable_progress_bar=False)
    return trainer._checkpoint_connector._hpc_resume_path


def test_slurm_task_continues_from_the_newest_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    base = ["python", "-m", "pruning_lightning", "fit", "--trainer.default_root_dir", str(run_dir)]
    script = tmp_path / "sweep.sbatch"
    script.write_text(slurm_script([shlex.join(base)], [run_dir], tmp_path, tmp_path, gpus=False))
    env = fake_srun_env(tmp_path, task=0)

    def task() -> tuple[list[str], str]:
        """Run the array task; the arguments it added to the command, and what it said."""
        done = subprocess.run(
            ["bash", str(script)], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        words = (tmp_path / "srun.log").read_text().splitlines()
        assert words[: len(base)] == base
        return words[len(base) :], done.stderr

    assert task()[0] == []  # a new run starts from scratch
    assert (run_dir / "command.sh").read_text().split() == base
    checkpoints = run_dir / "lightning_logs" / "version_0" / "checkpoints"
    epoch = fake_checkpoint(checkpoints / "epoch=0-step=2.ckpt", 1000)
    (run_dir / "lightning_logs" / "version_0" / "events.out").write_text("kept")
    extra, said = task()
    assert extra == ["--ckpt_path", str(epoch)]
    assert f"resuming from {epoch}" in said
    assert (run_dir / "lightning_logs" / "version_0" / "events.out").read_text() == "kept"
    last = fake_checkpoint(checkpoints / "last.ckpt", 2000)
    assert task()[0] == ["--ckpt_path", str(last)]

    # Lightning's own requeue checkpoint, newest: Lightning loads it itself (ckpt_path None).
    hpc = fake_checkpoint(run_dir / "hpc_ckpt_1.ckpt", 3000)
    assert lightning_hpc_pick(run_dir) == str(hpc) == str(resume.lightning_hpc_checkpoint(run_dir))
    extra, said = task()
    assert extra == [] and f"resuming from {hpc} (Lightning's own hpc resume" in said
    # ... unless a newer checkpoint exists (trained on after that resume, then cancelled):
    # then --ckpt_path overrides Lightning's pick of the older hpc checkpoint.
    os.utime(last, (4000, 4000))
    assert task()[0] == ["--ckpt_path", str(last)]
    # A checkpoint cut short (the job died while writing it) is passed over, even if Lightning
    # would pick it.
    broken = fake_checkpoint(run_dir / "hpc_ckpt_2.ckpt", 5000, complete=False)
    assert lightning_hpc_pick(run_dir) == str(broken)
    assert task()[0] == ["--ckpt_path", str(last)]
    # No complete checkpoint at all: the folder is cleared and the run starts over.
    for path in (epoch, last, hpc):
        path.unlink()
    extra, said = task()
    assert extra == [] and "starting over" in said
    assert sorted(p.name for p in run_dir.iterdir()) == ["command.sh"]


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
        summary = json.loads((Path(row["run_dir"]) / "pruning.json").read_text())
        assert float(row["effective_sparsity"]) == summary["effective_sparsity"]
        assert float(row["global_sparsity"]) <= float(row["effective_sparsity"]) <= 1
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


# A stand-in for the CLI: logs its calls (and any --ckpt_path), writes the log dir a finished run
# has (the next version_N, as Lightning would), or fails.
FAKE_RUN = """
import json, pathlib, sys
root, outcome = pathlib.Path(sys.argv[1]), sys.argv[2]
with open(sys.argv[3], "a") as counter:
    counter.write(" ".join([root.name, *sys.argv[4:]]) + "\\n")
if outcome == "fail":
    print("something broke"); sys.exit(3)
logs = root / "lightning_logs"
log_dir = logs / f"version_{len(list(logs.glob('version_*'))) if logs.exists() else 0}"
log_dir.mkdir(parents=True)
(log_dir / "test_metrics.json").write_text(json.dumps({"test/acc1": 0.5}))
"""


def test_rerun_continues_unfinished_runs_and_reports_failures(tmp_path, capsys):
    out, counter = tmp_path / "sweep", tmp_path / "calls.txt"
    # done, unfinished without a checkpoint, unfinished with checkpoints, new, failing
    specs = [RunSpec("force", 0.9, seed) for seed in range(5)]
    outcomes = ["ok", "ok", "ok", "ok", "fail"]
    commands = [
        [sys.executable, "-c", FAKE_RUN, str(out / s.name), o, str(counter)]
        for s, o in zip(specs, outcomes, strict=True)
    ]
    done = out / specs[0].name / "lightning_logs" / "version_0"
    done.mkdir(parents=True)
    (done / "test_metrics.json").write_text('{"test/acc1": 0.9}')
    partial = out / specs[1].name / "lightning_logs" / "version_0"
    partial.mkdir(parents=True)
    (partial / "pruning.json").write_text("{}")  # crashed before its first checkpoint
    stopped_root = out / specs[2].name
    stopped = stopped_root / "lightning_logs" / "version_0"
    older = fake_checkpoint(stopped / "checkpoints" / "epoch=0-step=2.ckpt", time.time() - 60)
    newest = fake_checkpoint(stopped / "checkpoints" / "last.ckpt", time.time() - 30)
    (stopped_root / "run.log").write_text("the first attempt\n")
    writes = []

    failed = run_local(specs, commands, out, lambda: writes.append(1))
    printed = capsys.readouterr().out
    assert failed == [specs[4].name]
    calls = counter.read_text().splitlines()
    assert calls == [  # the finished one skipped, the stopped one continued from last.ckpt
        specs[1].name,
        f"{specs[2].name} --ckpt_path {newest}",
        specs[3].name,
        specs[4].name,
    ]
    assert f"{specs[0].name}: finished before, skipped" in printed
    assert f"{specs[1].name}: unfinished without a checkpoint, deleting it" in printed
    assert f"{specs[2].name}: unfinished, resuming from {newest}" in printed
    assert "FAILED (exit code 3)" in printed and "something broke" in printed
    assert not (partial / "pruning.json").exists()  # the run without checkpoint started over
    assert (partial / "test_metrics.json").is_file()
    # the stopped run kept its folder: checkpoints, first attempt's log and version_0
    assert older.is_file() and newest.is_file()
    assert (stopped.parent / "version_1" / "test_metrics.json").is_file()
    log = (stopped_root / "run.log").read_text()
    assert log.startswith("the first attempt\n") and f"resuming from {newest}" in log
    # command.sh holds the sweep's command (without --ckpt_path), so a rerun skips it quietly
    assert shlex.split((stopped_root / "command.sh").read_text()) == commands[2]
    assert (done / "test_metrics.json").read_text() == '{"test/acc1": 0.9}'  # untouched
    assert len(writes) == 3  # the table is rewritten after each run that finishes

    # Again: only the failed run is retried (it left a half-finished folder behind).
    counter.unlink()
    assert run_local(specs, commands, out, lambda: None) == [specs[4].name]
    assert counter.read_text().split() == [specs[4].name]
    assert "NOTE" not in capsys.readouterr().out
    # A run that fails while resuming says how to start it over instead.
    fake_checkpoint(out / specs[4].name / "last.ckpt", time.time())
    assert run_local(specs, commands, out, lambda: None) == [specs[4].name]
    assert f"delete {out / specs[4].name} to start the run over" in capsys.readouterr().out


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


def test_a_resumed_run_without_pruning_json_takes_the_earlier_attempts(tmp_path):
    logs = tmp_path / "run" / "lightning_logs"

    def version(n: int, seed: int, sparsity: float, pruned: bool, finished: bool) -> Path:
        log_dir = logs / f"version_{n}"
        log_dir.mkdir(parents=True)
        (log_dir / "config.yaml").write_text(
            f"seed_everything: {seed}\npruning:\n  method: force\n  sparsity: {sparsity}\n"
        )
        if pruned:
            summary = {"method": "force", "sparsity": sparsity, "mask_seconds": float(n)}
            summary.update(seed=seed, global_seed=seed, schema=2)
            summary["global_sparsity"] = sparsity
            summary["layers"] = {"fc.weight": {"kept": 1, "total": 10}}
            (log_dir / "pruning.json").write_text(json.dumps(summary))
        if finished:
            (log_dir / "test_metrics.json").write_text('{"test/acc1": 0.5}')
        return log_dir

    version(0, 0, 0.9, pruned=True, finished=True)  # a run of its own
    version(1, 1, 0.9, pruned=True, finished=False)  # attempt 1: pruned, then stopped
    version(2, 1, 0.5, pruned=True, finished=False)  # another run, crashed in between
    version(3, 1, 0.9, pruned=False, finished=False)  # attempt 2: resumed, stopped again
    resumed = version(4, 1, 0.9, pruned=False, finished=True)  # attempt 3: finished
    dense = version(5, 1, 0.0, pruned=False, finished=True)  # another run, dense
    version(6, 2, 0.9, pruned=True, finished=False)  # a run resumed once ...
    version(7, 2, 0.9, pruned=True, finished=True)  # ... whose callback rewrote pruning.json

    assert find_pruning_json(resumed) == logs / "version_1" / "pruning.json"
    row = read_run(resumed)
    assert row["mask_seconds"] == 1.0 and row["global_sparsity"] == 0.9 and row["seed"] == 1
    assert find_pruning_json(dense) is None and read_run(dense)["method"] == "dense"
    assert find_pruning_json(logs / "version_0") == logs / "version_0" / "pruning.json"
    assert find_log_dir(tmp_path / "run") == logs / "version_7"
    # one pruning.json per run for the figures: attempt 6 is superseded by 7, the others stay
    assert [p.parent.name for p in latest_pruning_jsons(tmp_path)] == [
        "version_0",
        "version_1",
        "version_2",
        "version_7",
    ]
    assert [s["mask_seconds"] for s in load_summaries([str(resumed), str(logs)])] == [
        1.0,
        0.0,
        1.0,
        2.0,
        7.0,
    ]


# -- resuming for real: a tiny run stopped after its first epoch, and a requeued SLURM task --------

SCRIPTS = Path(__file__).resolve().parent / "scripts"
# Keep every epoch's checkpoint (plus last.ckpt, as the paper configs do): a resumed run that
# retrained epoch 0 would leave an epoch=0 checkpoint in its new version folder.
KEEP_ALL = "trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
KEEP_ALL += "      init_args: {save_top_k: -1, save_last: true}\n"


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def masks_of(checkpoint: dict) -> dict[str, torch.Tensor]:
    (state,) = [v for k, v in checkpoint["callbacks"].items() if "PruningCallback" in k]
    return state["masks"]


def assert_same_masks(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and a
    for name, mask in a.items():
        assert torch.equal(mask, b[name]), name


def one_shot_sweep(out: Path, configs: list[str], settings: list[str]) -> list[str]:
    args = ["--methods", "force", "--sparsities", "0.9", "--seeds", "0", "--out", str(out)]
    for config in [QUICKSTART, *configs]:
        args += ["--config", config]
    for item in settings:
        args += ["--set", item]
    return args


@pytest.fixture
def one_thread(monkeypatch):
    """Tiny runs on 2 shared cores: one thread, here and in subprocesses (no oversubscription,
    which makes a tiny in-process run 20x slower on a busy machine)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_rerun_continues_an_interrupted_run_from_its_checkpoint(tmp_path, capsys, one_thread):
    from pruning_lightning.cli import main as cli_main

    out = tmp_path / "sweep"
    (tmp_path / "keep.yaml").write_text(KEEP_ALL)
    configs = [QUICKSTART, str(tmp_path / "keep.yaml")]
    spec = RunSpec("force", 0.9, 0)
    run_root = out / spec.name
    # The interrupted attempt: the sweep's own command, stopped after epoch 0 of 2 (before any
    # testing), run here in-process to save a start-up.
    settings = tiny(enable_checkpointing="true")
    first = build_command(spec, configs, [tuple(i.split("=")) for i in settings], run_root)
    cli_main([*first[3:], "--test_after_fit", "false"])
    logs = run_root / "lightning_logs"
    stopped = load(logs / "version_0" / "checkpoints" / "last.ckpt")
    assert (stopped["epoch"], stopped["global_step"]) == (0, 2)
    first_summary = json.loads((logs / "version_0" / "pruning.json").read_text())
    capsys.readouterr()

    args = one_shot_sweep(out, configs[1:], tiny(max_epochs=2, enable_checkpointing="true"))
    assert main(args) == 0
    printed = capsys.readouterr().out
    last = logs / "version_0" / "checkpoints" / "last.ckpt"
    assert f"unfinished, resuming from {last}" in printed
    run_log = (run_root / "run.log").read_text()
    assert "Restored all states from the checkpoint" in run_log, run_log[-3000:]
    # Training went on from epoch 1, step 2: the new version saved no epoch-0 checkpoint.
    resumed = logs / "version_1"
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir()) == [
        "epoch=1-step=4.ckpt",
        "last.ckpt",
    ]
    final = load(resumed / "checkpoints" / "last.ckpt")
    assert (final["epoch"], final["global_step"]) == (1, 4)
    assert_same_masks(masks_of(final), masks_of(stopped))  # the mask was kept, not recomputed
    # One row, with the mask statistics of the interrupted attempt (which computed the mask).
    rows = read_csv(out / "results.csv")
    assert len(rows) == 1 and rows[0]["run_dir"] == str(resumed)
    assert float(rows[0]["mask_seconds"]) == pytest.approx(first_summary["mask_seconds"])
    assert float(rows[0]["global_sparsity"]) == pytest.approx(first_summary["global_sparsity"])
    assert rows[0]["steps"] == "3"
    # Invoked again: finished, skipped, quietly (command.sh is the sweep's own command).
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "finished before, skipped" in printed and "NOTE" not in printed
    assert len(read_csv(out / "results.csv")) == 1


def wait_for(
    condition: Callable[[], bool],
    what: str,
    proc: subprocess.Popen,
    log: Path,
    timeout: float = 180.0,
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the task ended ({proc.returncode}) before {what}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout} s:\n{log.read_text()}")
        time.sleep(0.05)


def test_slurm_requeue_checkpoints_and_the_requeued_task_resumes(tmp_path, capsys, one_thread):
    """SLURM without SLURM: the sweep's array script with a fake srun (runs the command) and a fake
    scontrol (records the requeue), under the variables srun sets. SIGUSR1 mid-training makes
    Lightning save hpc_ckpt_1.ckpt and requeue the task; SIGTERM (what a requeue sends) stops it;
    running the same script again (the requeued task) resumes from hpc_ckpt_1.ckpt."""
    out = tmp_path / "sweep"
    (tmp_path / "pause.yaml").write_text(
        KEEP_ALL + "    - class_path: pause_callback.PauseOnce\n"  # holds step 3 still, once
    )
    settings = tiny(max_epochs=2, enable_checkpointing="true")
    args = one_shot_sweep(out, [str(tmp_path / "pause.yaml")], settings)
    assert main([*args, "--slurm", "--no-gpus", "--job-name", "sweep-test"]) == 0
    capsys.readouterr()
    script = out / "slurm" / "sweep.sbatch"
    run_dir = out / RunSpec("force", 0.9, 0).name
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text('#!/bin/sh\nexec "$@"\n')
    (fake / "scontrol").write_text('#!/bin/sh\nprintf "%s\\n" "$@" >> "$SCONTROL_LOG"\n')
    for tool in ("srun", "scontrol"):
        (fake / tool).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(
        PATH=f"{fake}:{env['PATH']}",
        PYTHONPATH=os.pathsep.join(filter(None, [str(SCRIPTS), env.get("PYTHONPATH")])),
        PAUSE_MARKER=str(tmp_path / "paused"),
        SCONTROL_LOG=str(tmp_path / "scontrol.log"),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(20000 + os.getpid() % 20000),
        # what sbatch/srun set for array task 0 of job 4240 (this task's own job id: 4242)
        SLURM_ARRAY_JOB_ID="4240",
        SLURM_ARRAY_TASK_ID="0",
        SLURM_JOB_ID="4242",
        SLURM_JOB_NAME="sweep-test",
        SLURM_NTASKS="1",
        SLURM_NTASKS_PER_NODE="1",
        SLURM_NNODES="1",
        SLURM_NODEID="0",
        SLURM_PROCID="0",
        SLURM_LOCALID="0",
    )

    log = tmp_path / "task.log"
    with log.open("w") as handle:
        task = subprocess.Popen(
            ["bash", str(script)],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        paused = tmp_path / "paused"
        wait_for(paused.exists, "pause at step 3", task, log)
        pid = int(paused.read_text())
        os.kill(pid, signal.SIGUSR1)  # SLURM, 90 s before the time limit
        requeue = tmp_path / "scontrol.log"
        wait_for(requeue.exists, "scontrol requeue", task, log, timeout=60)
        os.kill(pid, signal.SIGTERM)  # what scontrol requeue does to the running job
        task.wait(timeout=60)  # Lightning stops at the end of the batch
    finally:
        if task.poll() is None:
            os.killpg(task.pid, signal.SIGKILL)
            task.wait(timeout=10)
    assert requeue.read_text().split() == ["requeue", "4240_0"]  # the array task, via Lightning
    hpc = run_dir / "hpc_ckpt_1.ckpt"  # in default_root_dir = the run folder
    saved = load(hpc)
    assert (saved["epoch"], saved["global_step"]) == (1, 3)
    # Under SLURM, Lightning's default logger names its version after SLURM_JOB_ID, which a
    # requeue keeps: both attempts log to version_4242.
    log_dir = run_dir / "lightning_logs" / "version_4242"
    assert not list(run_dir.rglob("test_metrics.json"))
    epoch0 = log_dir / "checkpoints" / "epoch=0-step=2.ckpt"
    written = epoch0.stat().st_mtime_ns
    first = load(epoch0)
    assert_same_masks(masks_of(saved), masks_of(first))
    first_summary = json.loads((log_dir / "pruning.json").read_text())

    # The requeued task: the same script, the same variables.
    again = subprocess.Popen(
        ["bash", str(script)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output = again.communicate(timeout=300)[0]
    finally:
        if again.poll() is None:
            os.killpg(again.pid, signal.SIGKILL)
            again.wait(timeout=10)
    assert again.returncode == 0, output
    assert f"resuming from {hpc} (Lightning's own hpc resume picks it up)" in output
    assert f"Restoring states from the checkpoint path at {hpc}" in output
    # no --ckpt_path was passed: Lightning found hpc_ckpt_1.ckpt in default_root_dir itself
    assert "ckpt_path: null" in (log_dir / "config.yaml").read_text()
    assert requeue.read_text().split() == ["requeue", "4240_0"]  # no second requeue
    final = load(log_dir / "checkpoints" / "last.ckpt")
    assert (final["epoch"], final["global_step"]) == (1, 4)  # step 3 + the epoch's last batch
    assert epoch0.stat().st_mtime_ns == written  # epoch 0 was not trained again
    assert sorted(p.name for p in (log_dir / "checkpoints").iterdir()) == [
        "epoch=0-step=2.ckpt",
        f"epoch=1-step={final['global_step']}.ckpt",
        "last.ckpt",
    ]
    assert_same_masks(masks_of(final), masks_of(first))
    assert (log_dir / "test_metrics.json").is_file()

    assert main([*args, "--collect-only"]) == 0
    rows = read_csv(out / "results.csv")
    assert len(rows) == 1 and rows[0]["run_dir"] == str(log_dir)
    assert float(rows[0]["mask_seconds"]) == pytest.approx(first_summary["mask_seconds"])
