"""Sweeps: methods x sparsities x seeds (x any config field) over one base config.

    python -m pruning_lightning.analysis.sweep --config configs/quickstart.yaml \\
        --methods force snip --sparsities 0.9 0.99 --seeds 0 1 2 \\
        --grid pruning.steps=1,10,60 --set trainer.max_epochs=5 --out sweeps/quick
    python -m pruning_lightning.analysis.sweep ... --ablations none shuffle reinit invert

Every run is a plain ``pruning-lightning fit --test_after_fit true`` in a subprocess, with its own
``--trainer.default_root_dir`` (``OUT/<run name>``) and ``--seed_everything``, so a sweep adds
nothing a single run does not have. Runs go one after another; a run is finished once its
``test_metrics.json`` exists, so invoking the same sweep again skips finished runs and continues
unfinished ones from their newest checkpoint (the same command plus ``--ckpt_path``; see
:mod:`pruning_lightning.analysis.resume`); an unfinished run without a checkpoint starts over. The
finished runs' results land in one tidy CSV (``OUT/results.csv``), one row per run.

``--slurm`` writes a job-array script instead: one array task per unfinished run, the same command
through ``srun`` (multi-GPU through Lightning's own ``--trainer.devices``/``--trainer.num_nodes``).
The script asks SLURM for ``--signal=SIGUSR1@90`` and ``--requeue``: 90 s before the time limit
Lightning's SLURMEnvironment saves ``hpc_ckpt_<N>.ckpt`` into the run folder and requeues the task,
and the requeued task resumes from it (Lightning loads it itself). A task of a re-submitted sweep
continues an unfinished run from its newest checkpoint the same way. ``--dry-run`` only prints the
commands.
"""

from __future__ import annotations

import argparse
import itertools
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pruning_lightning.analysis import resume
from pruning_lightning.analysis.assignments import parse_assignments
from pruning_lightning.analysis.results import (
    NO_ABLATION,
    dig,
    find_log_dir,
    read_config,
    read_run,
    write_table,
)
from pruning_lightning.errors import ConfigError
from pruning_lightning.pruning.ablations import INVERT
from pruning_lightning.pruning.config import ABLATIONS
from pruning_lightning.pruning.registry import DENSE, get_criterion, method_names

# Seconds before the time limit at which SLURM sends the requeue signal (SIGUSR1) to the runs.
REQUEUE_SIGNAL_SECONDS = 90
# Run directly by the SLURM script (stdlib only, so it does not import torch).
RESUME_SCRIPT = Path(resume.__file__).resolve()

# Keys the sweep sets itself; a --grid or --set on them would be silently overridden.
RESERVED = {
    "pruning.method": "--methods",
    "pruning.sparsity": "--sparsities",
    "pruning.ablation": "--ablations",
    "seed_everything": "--seeds",
    "trainer.default_root_dir": "--out",
    "test_after_fit": "nothing (the sweep always tests after fit)",
    "config": "--config",
    "trainer.devices": "--devices",
    "trainer.num_nodes": "--num-nodes",
}


@dataclass(frozen=True)
class RunSpec:
    """One configuration of a sweep; ``grid`` holds (dotted key, value) pairs as typed, and
    ``ablation`` a ``--pruning.ablation`` (None: the method's own mask)."""

    method: str
    sparsity: float
    seed: int
    grid: tuple[tuple[str, str], ...] = ()
    ablation: str | None = None

    @property
    def name(self) -> str:
        """A folder name spelling out the configuration:
        ``force-s0.99-seed1-shuffle-pruning.steps=10`` (no ablation part without one)."""
        parts = [self.method, f"s{self.sparsity:g}", f"seed{self.seed}"]
        parts += [self.ablation] if self.ablation else []
        parts += [f"{key}={_safe(value)}" for key, value in self.grid]
        return "-".join(parts)

    def overrides(self) -> list[str]:
        """The CLI arguments that make a base config into this run."""
        args = []
        for key, value in self.grid:
            args += [f"--{key}", value]
        if self.sparsity > 0:
            args += ["--pruning.method", self.method]
        if self.ablation:
            args += ["--pruning.ablation", self.ablation]
        args += [
            "--pruning.sparsity",
            repr(float(self.sparsity)),
            "--seed_everything",
            str(self.seed),
        ]
        return args


def _safe(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+=-]+", "_", value)


def expand(
    methods: Sequence[str],
    sparsities: Sequence[float],
    seeds: Sequence[int],
    grid: Sequence[tuple[str, Sequence[str]]] = (),
    ablations: Sequence[str] = (NO_ABLATION,),
) -> list[RunSpec]:
    """Every combination, seeds innermost, without runs that would only repeat another.

    Sparsity 0 is one dense run per seed (whatever the methods and ablations) and takes the first
    value of every ``pruning.*`` grid key, since nothing is pruned. One-shot methods run with
    T = 1 (they ignore a larger T), so a ``pruning.steps`` grid gives them one run. ``ablations``
    (:data:`NO_ABLATION` = the method's own mask) multiply the pruned runs; ``invert`` skips the
    methods whose scores rank nothing (random), which PruningConfig refuses.
    """
    if not methods or not sparsities or not seeds or not ablations:
        raise ConfigError(
            "A sweep needs at least one method, one sparsity, one seed and one ablation."
        )
    _check_methods(methods)
    _check_ablations(ablations)
    for s in sparsities:
        if not 0.0 <= s < 1.0:
            raise ConfigError(
                f"Sparsity {s} is outside [0, 1). Write 99.5% as 0.995; 0 trains a dense network."
            )
    keys = [k for k, _ in grid]
    first = {k: v[0] for k, v in grid}
    specs: list[RunSpec] = []
    for values in itertools.product(*(v for _, v in grid)):
        point = tuple(zip(keys, values, strict=True))
        combos = itertools.product(methods, sparsities, ablations, seeds)
        for method, sparsity, ablation, seed in combos:
            ablation = None if ablation == NO_ABLATION or sparsity == 0 else ablation
            if sparsity == 0:
                method = DENSE
                here = tuple((k, first[k] if k.startswith("pruning.") else v) for k, v in point)
            elif not get_criterion(method).progressive:
                here = tuple((k, "1" if k == "pruning.steps" else v) for k, v in point)
            else:
                here = point
            if ablation == INVERT and not get_criterion(method).ranked:
                continue
            spec = RunSpec(method, sparsity, seed, here, ablation)
            if spec not in specs:
                specs.append(spec)
    return specs


def _check_methods(methods: Sequence[str]) -> None:
    unknown = [m for m in methods if m not in method_names()]
    if unknown:
        raise ConfigError(
            f"Unknown pruning method(s) {', '.join(map(repr, unknown))}. Choose from: "
            f"{', '.join(method_names())} (dense runs: sparsity 0)."
        )


def _check_ablations(ablations: Sequence[str]) -> None:
    unknown = [a for a in ablations if a != NO_ABLATION and a not in ABLATIONS]
    if unknown:
        raise ConfigError(
            f"Unknown ablation(s) {', '.join(map(repr, unknown))}. Choose from: {NO_ABLATION} "
            f"(the method's own mask), {', '.join(ABLATIONS)}."
        )


def build_command(
    spec: RunSpec,
    configs: Sequence[str],
    sets: Sequence[tuple[str, str]],
    run_root: Path,
    python: str = sys.executable,
    devices: int | None = None,
    num_nodes: int | None = None,
) -> list[str]:
    """The ``fit`` command of one run; the sweep's own arguments come last so they win."""
    command = [python, "-m", "pruning_lightning", "fit"]
    for config in configs:
        command += ["--config", config]
    for key, value in sets:
        command += [f"--{key}", value]
    command += spec.overrides()
    if devices is not None:
        command += ["--trainer.devices", str(devices)]
    if num_nodes is not None:
        command += ["--trainer.num_nodes", str(num_nodes)]
    command += ["--trainer.default_root_dir", str(run_root), "--test_after_fit", "true"]
    return command


def run_status(run_root: Path) -> str:
    """``done`` (test metrics written), ``partial`` (folder without them) or ``new``."""
    if find_log_dir(run_root) is not None:
        return "done"
    return "partial" if run_root.exists() else "new"


def _status_note(run_root: Path) -> str:
    """``[done]``, ``[new]``, ``[partial, resumes from X]`` or ``[partial, starts over]``."""
    status = run_status(run_root)
    if status != "partial":
        return f"[{status}]"
    checkpoint = resume.newest_checkpoint(run_root)
    return f"[partial, {f'resumes from {checkpoint}' if checkpoint else 'starts over'}]"


def collect(specs: Sequence[RunSpec], out: Path) -> list[dict[str, Any]]:
    """The tidy rows of the finished runs of ``specs``, with each grid key as a column holding
    the value the run's saved config has (what the run was given)."""
    rows = []
    for spec in specs:
        log_dir = find_log_dir(out / spec.name)
        if log_dir is None:
            continue
        row = read_run(log_dir)
        config = read_config(log_dir)
        row.update({key: dig(config, key) for key, _ in spec.grid})
        row["name"] = spec.name
        rows.append(row)
    return rows


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no output)"


def run_local(
    specs: Sequence[RunSpec],
    commands: Sequence[list[str]],
    out: Path,
    write_csv: Callable[[], Any],
) -> list[str]:
    """Run the unfinished runs one after another; returns the names of the runs that failed.

    A run folder without test metrics but with a checkpoint continues from its newest checkpoint
    (``command`` plus ``--ckpt_path``, appending to its ``run.log``); one without a checkpoint is
    deleted and runs from scratch. ``command.sh`` holds ``command`` itself either way.
    """
    failed = []
    total = len(specs)
    for i, (spec, command) in enumerate(zip(specs, commands, strict=True), start=1):
        run_root = out / spec.name
        status = run_status(run_root)
        saved = run_root / "command.sh"
        other = saved.is_file() and saved.read_text().strip() != shlex.join(command)
        if status == "done":
            note = " (NOTE: it ran another command, see command.sh; delete it to redo it)"
            print(f"[{i}/{total}] {spec.name}: finished before, skipped{note * other}", flush=True)
            continue
        checkpoint = resume.newest_checkpoint(run_root) if status == "partial" else None
        if checkpoint is not None:
            note = " (NOTE: it was started with another command, see command.sh)"
            print(
                f"[{i}/{total}] {spec.name}: unfinished, resuming from {checkpoint}{note * other}",
                flush=True,
            )
            run = [*command, "--ckpt_path", str(checkpoint)]
        else:
            if status == "partial":
                print(
                    f"[{i}/{total}] {spec.name}: unfinished without a checkpoint, deleting it and "
                    "starting over",
                    flush=True,
                )
                shutil.rmtree(run_root)
            run = list(command)
        run_root.mkdir(parents=True, exist_ok=True)
        saved.write_text(shlex.join(command) + "\n")
        print(f"[{i}/{total}] {spec.name}: running ...", flush=True)
        start = time.perf_counter()
        with (run_root / "run.log").open("a" if checkpoint else "w") as log:
            if checkpoint is not None:
                log.write(f"\n==== pruning-sweep: resuming from {checkpoint}\n{shlex.join(run)}\n")
                log.flush()
            code = subprocess.run(run, stdout=log, stderr=subprocess.STDOUT).returncode
        seconds = time.perf_counter() - start
        log_dir = find_log_dir(run_root)
        if code != 0 or log_dir is None:
            why = f"exit code {code}" if code else "no test_metrics.json written"
            hint = ""
            if checkpoint is not None:
                hint = (
                    f"\n(It resumed from {checkpoint}; if that checkpoint does not fit the "
                    f"command any more, delete {run_root} to start the run over.)"
                )
            print(
                f"[{i}/{total}] {spec.name}: FAILED ({why}) after {seconds:.1f} s; the end of "
                f"{run_root / 'run.log'}:\n{_tail(run_root / 'run.log')}{hint}",
                flush=True,
            )
            failed.append(spec.name)
            continue
        acc = read_run(log_dir).get("test_acc1")
        print(f"[{i}/{total}] {spec.name}: done in {seconds:.1f} s, test_acc1 {acc}", flush=True)
        write_csv()  # the table grows as runs finish, so a long sweep can be read midway
    return failed


def slurm_script(
    commands: Sequence[str],
    run_dirs: Sequence[str | Path],
    log_folder: Path,
    workdir: Path,
    job_name: str = "pruning-sweep",
    devices: int = 1,
    num_nodes: int = 1,
    gpus: bool = True,
    cpus_per_task: int | None = None,
    time_limit: str | None = None,
    partition: str | None = None,
    max_parallel: int | None = None,
    sbatch_lines: Sequence[str] = (),
    python: str = sys.executable,
    signal_seconds: int = REQUEUE_SIGNAL_SECONDS,
) -> str:
    """A SLURM job-array script: task i runs ``commands[i]`` (a shell command line) through ``srun``
    for the run folder ``run_dirs[i]`` (its ``--trainer.default_root_dir``).

    One SLURM task per device on each node, as Lightning's SLURM support expects. SLURM sends
    SIGUSR1 ``signal_seconds`` before the time limit; Lightning's SLURMEnvironment (auto_requeue,
    its default) then saves ``hpc_ckpt_<N>.ckpt`` into ``trainer.default_root_dir`` (the run folder)
    and requeues the task with ``scontrol requeue``. A task whose run has finished meanwhile exits
    at once; an unfinished one continues from its newest checkpoint (``resume.py``, run by
    ``python``, appends ``--ckpt_path`` unless it is the hpc checkpoint that Lightning loads by
    itself); one without a checkpoint starts over. The task table is part of the script, which
    SLURM copies at submission: a requeued task runs its own run even if the sweep's files were
    written again meanwhile.
    """
    if len(commands) != len(run_dirs) or not commands:
        raise ValueError("slurm_script needs one run folder per command, and at least one.")
    array = f"0-{len(commands) - 1}" + (f"%{max_parallel}" if max_parallel else "")
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={job_name}",
        f"#SBATCH --array={array}",
        f"#SBATCH --nodes={num_nodes}",
        f"#SBATCH --ntasks-per-node={devices}",
        # Lightning's SLURMEnvironment checkpoints and requeues on this signal
        f"#SBATCH --signal=SIGUSR1@{signal_seconds}",
        "#SBATCH --requeue",
    ]
    if gpus:
        lines.append(f"#SBATCH --gres=gpu:{devices}")
    if cpus_per_task:
        lines.append(f"#SBATCH --cpus-per-task={cpus_per_task}")
    if time_limit:
        lines.append(f"#SBATCH --time={time_limit}")
    if partition:
        lines.append(f"#SBATCH --partition={partition}")
    lines.append(f"#SBATCH --output={log_folder}/%A_%a.out")
    lines.append("#SBATCH --open-mode=append")  # a requeued task adds to its log
    for line in sbatch_lines:
        line = line if line.startswith(("#SBATCH", "-")) else f"--{line}"
        lines.append(line if line.startswith("#SBATCH") else f"#SBATCH {line}")
    lines += [
        "",
        "# One array task per configuration of the sweep; each runs the same CLI command as a",
        "# local sweep would (written by pruning_lightning.analysis.sweep --slurm). On SIGUSR1",
        "# Lightning saves hpc_ckpt_<N>.ckpt into the run folder (its default_root_dir) and",
        "# requeues the task; a requeued or re-submitted task resumes from the newest checkpoint.",
        "set -euo pipefail",
        f"cd {shlex.quote(str(workdir))}",
        "# The task table (SLURM keeps this script as submitted: a requeued task runs its own run)",
        "run_dirs=(",
        *(f"    {shlex.quote(str(d))}" for d in run_dirs),
        ")",
        "commands=(",
        *(f"    {shlex.quote(c)}" for c in commands),
        ")",
        "run_dir=${run_dirs[$SLURM_ARRAY_TASK_ID]}",
        "command=${commands[$SLURM_ARRAY_TASK_ID]}",
        'if [ -n "$(find "$run_dir" -name test_metrics.json 2>/dev/null)" ]; then',
        '    echo "$run_dir finished already"; exit 0',
        "fi",
        "# --ckpt_path NEWEST, or nothing: no checkpoint (the folder is cleared) or the newest is",
        "# the hpc checkpoint, which Lightning loads by itself when ckpt_path is None",
        f'resume=$({shlex.quote(python)} {shlex.quote(str(RESUME_SCRIPT))} "$run_dir")',
        'mkdir -p "$run_dir"',
        'echo "$command" > "$run_dir/command.sh"',
        'eval "srun $command $resume"',
        "",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pruning-sweep",
        description="Run methods x sparsities x seeds (x grid) of pruning-lightning fit+test and "
        "gather the results into one CSV. Invoking the same sweep again skips finished runs and "
        "continues unfinished ones from their newest checkpoint (--ckpt_path).",
    )
    parser.add_argument(
        "--config",
        action="append",
        required=True,
        metavar="YAML",
        help="base config(s) of every run, as for pruning-lightning fit",
    )
    parser.add_argument(
        "--methods", nargs="+", required=True, help="pruning methods, e.g. force snip"
    )
    parser.add_argument(
        "--sparsities",
        nargs="+",
        type=float,
        required=True,
        help="sparsities in [0, 1), e.g. 0.9 0.99 0.995; 0 = dense",
    )
    parser.add_argument(
        "--seeds", nargs="+", type=int, default=[0], help="--seed_everything values"
    )
    parser.add_argument(
        "--ablations",
        nargs="+",
        default=[NO_ABLATION],
        metavar="NAME",
        help=f"--pruning.ablation of the pruned runs: {NO_ABLATION} (the method's own mask), "
        f"{', '.join(ABLATIONS)}; e.g. none shuffle reinit invert",
    )
    parser.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="also sweep this CLI option, e.g. pruning.steps=1,10,60 (repeatable)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fixed override of every run, e.g. trainer.max_epochs=5 (repeatable)",
    )
    parser.add_argument("--out", required=True, help="sweep folder: one subfolder per run")
    parser.add_argument("--csv", help="results table (default: OUT/results.csv)")
    parser.add_argument(
        "--python", default=sys.executable, help="Python that runs the CLI (default: this one)"
    )
    parser.add_argument("--devices", type=int, help="--trainer.devices of every run (per node)")
    parser.add_argument("--num-nodes", type=int, help="--trainer.num_nodes of every run")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    mode.add_argument(
        "--collect-only",
        action="store_true",
        help="only (re)write the CSV from the runs that finished",
    )
    mode.add_argument(
        "--slurm",
        action="store_true",
        help="write a SLURM job-array script instead of running; it requests SIGUSR1 90 s before "
        "the time limit and --requeue, so Lightning checkpoints (hpc_ckpt_N.ckpt in the run "
        "folder) and requeues a task that runs out of time, and the task resumes",
    )
    slurm = parser.add_argument_group("SLURM (with --slurm)")
    slurm.add_argument(
        "--job-name",
        default="pruning-sweep",
        help="not bash/interactive: Lightning would not detect SLURM (no requeue, no resume)",
    )
    slurm.add_argument("--time", dest="time_limit", help="e.g. 24:00:00")
    slurm.add_argument("--partition")
    slurm.add_argument("--cpus-per-task", type=int)
    slurm.add_argument("--max-parallel", type=int, help="at most this many array tasks at once")
    slurm.add_argument("--no-gpus", action="store_true", help="no --gres=gpu line (CPU cluster)")
    slurm.add_argument(
        "--sbatch",
        action="append",
        default=[],
        metavar="LINE",
        help="extra #SBATCH option, e.g. account=abc or mem=32G (repeatable)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (``pruning-sweep``); bad input exits 2 with its message."""
    try:
        return _main(build_parser().parse_args(argv))
    except ConfigError as err:
        print(f"pruning-sweep: error: {err}", file=sys.stderr)
        sys.exit(2)


def _main(args: argparse.Namespace) -> int:
    for config in args.config:
        if not Path(config).is_file():
            raise ConfigError(
                f"--config {config!r} does not exist. Pass a YAML such as configs/quickstart.yaml."
            )
    for flag, value in (("--devices", args.devices), ("--num-nodes", args.num_nodes)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}.")
    configs = [str(Path(c).resolve()) for c in args.config]
    grid = parse_assignments(args.grid, "--grid", multi=True, reserved=RESERVED)
    sets = [(k, v[0]) for k, v in parse_assignments(args.set, "--set", reserved=RESERVED)]
    clash = {k for k, _ in grid} & {k for k, _ in sets}
    if clash:
        raise ConfigError(f"{', '.join(sorted(clash))} is both in --grid and --set; keep one.")
    out = Path(args.out).resolve()
    specs = expand(args.methods, args.sparsities, args.seeds, grid, args.ablations)
    unranked = [m for m in args.methods if not get_criterion(m).ranked]
    if INVERT in args.ablations and unranked:
        print(f"note: no {INVERT} runs for {', '.join(unranked)}: random scores rank nothing")
    commands = [
        build_command(s, configs, sets, out / s.name, args.python, args.devices, args.num_nodes)
        for s in specs
    ]
    csv_path = Path(args.csv) if args.csv else out / "results.csv"
    leading = ["method", "sparsity", "seed", "ablation", *(k for k, _ in grid)]

    def write_csv() -> int:
        rows = collect(specs, out)
        if rows:
            write_table(rows, csv_path, leading)
        return len(rows)

    if args.dry_run:
        for spec, command in zip(specs, commands, strict=True):
            print(f"# {spec.name} {_status_note(out / spec.name)}\n{shlex.join(command)}")
        return 0
    if args.collect_only:
        n = write_csv()
        print(f"{n} of {len(specs)} runs finished; table: {csv_path if n else '(none written)'}")
        return 0
    if args.slurm:
        return _write_slurm(args, specs, commands, out)
    out.mkdir(parents=True, exist_ok=True)
    failed = run_local(specs, commands, out, write_csv)
    n = write_csv()
    print(f"{n} of {len(specs)} runs finished; results table: {csv_path if n else '(none)'}")
    if failed:
        print(
            f"{len(failed)} run(s) failed: {', '.join(failed)}. Fix the cause and invoke the "
            "same sweep again: finished runs are skipped.",
            file=sys.stderr,
        )
        return 1
    return 0


def _write_slurm(
    args: argparse.Namespace, specs: Sequence[RunSpec], commands: Sequence[list[str]], out: Path
) -> int:
    if args.job_name in ("bash", "interactive"):
        raise ConfigError(
            f"--job-name {args.job_name} makes Lightning treat the job as an interactive session: "
            "it would neither requeue a task that runs out of time nor resume it. Pick another "
            "name, e.g. --job-name pruning-sweep."
        )
    pending = [
        (s, c) for s, c in zip(specs, commands, strict=True) if run_status(out / s.name) != "done"
    ]
    if not pending:
        print(
            f"All {len(specs)} runs have finished; nothing to submit. Collect the table with "
            "--collect-only."
        )
        return 0
    folder = out / "slurm"
    folder.mkdir(parents=True, exist_ok=True)
    commands_file = folder / "commands.txt"
    run_dirs_file = folder / "run_dirs.txt"
    lines = [shlex.join(c) for _, c in pending]
    run_dirs = [out / s.name for s, _ in pending]
    # for reading (the script holds its own copy of the table)
    commands_file.write_text("".join(f"{line}\n" for line in lines))
    run_dirs_file.write_text("".join(f"{d}\n" for d in run_dirs))
    script = slurm_script(
        lines,
        run_dirs,
        folder,
        Path.cwd(),
        job_name=args.job_name,
        devices=args.devices or 1,
        num_nodes=args.num_nodes or 1,
        gpus=not args.no_gpus,
        cpus_per_task=args.cpus_per_task,
        time_limit=args.time_limit,
        partition=args.partition,
        max_parallel=args.max_parallel,
        sbatch_lines=args.sbatch,
        python=args.python,
    )
    script_path = folder / "sweep.sbatch"
    script_path.write_text(script)
    resuming = sum(resume.newest_checkpoint(out / s.name) is not None for s, _ in pending)
    print(
        f"Wrote {script_path}: {len(pending)} array tasks, one per unfinished run of the "
        f"{len(specs)} ({resuming} continue from a checkpoint); the task table is also in "
        f"{commands_file} and {run_dirs_file}.\n"
        f"Submit it with:  sbatch {script_path}\n"
        "When the jobs are done, gather the table by invoking this sweep again with "
        "--collect-only instead of --slurm."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
