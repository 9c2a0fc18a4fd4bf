"""Which checkpoint an unfinished sweep run continues from.

A run folder (the run's ``--trainer.default_root_dir``) collects every checkpoint the run wrote:
ModelCheckpoint's ``lightning_logs/version_N/checkpoints/*.ckpt`` (``last.ckpt`` with
``save_last: true``) and, on SLURM, the ``hpc_ckpt_<N>.ckpt`` that Lightning's SLURMEnvironment
saves into ``default_root_dir`` when the job gets its pre-timeout SIGUSR1. A run continues from the
most recently written complete one of them.

Only the standard library is imported here: the SLURM script of ``pruning-sweep --slurm`` runs this
file directly (``python .../resume.py RUN_DIR``), which prints the arguments to append to the run's
command, so an array task does not pay for importing torch just to find a file.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

CHECKPOINT_SUFFIX = ".ckpt"
HPC_PREFIX = "hpc_ckpt_"  # Lightning's name for the checkpoint it saves on the requeue signal


def is_complete(path: str | Path) -> bool:
    """Whether ``path`` looks like a whole checkpoint: torch.save writes a zip archive, whose
    directory sits at the end of the file, so a file cut short by a killed job fails this."""
    try:
        return Path(path).is_file() and zipfile.is_zipfile(path)
    except OSError:
        return False


def checkpoints(run_root: str | Path) -> list[Path]:
    """Every complete ``*.ckpt`` under ``run_root`` (any depth), oldest first."""
    root = Path(run_root)
    if not root.is_dir():
        return []
    found = []
    for path in root.rglob(f"*{CHECKPOINT_SUFFIX}"):
        if not is_complete(path):
            continue
        try:
            found.append((path.stat().st_mtime_ns, str(path), path))
        except OSError:  # vanished meanwhile
            continue
    return [path for _, _, path in sorted(found)]


def newest_checkpoint(run_root: str | Path) -> Path | None:
    """The most recently written complete checkpoint of a run, or None."""
    found = checkpoints(run_root)
    return found[-1] if found else None


def lightning_hpc_checkpoint(run_root: str | Path) -> Path | None:
    """The checkpoint Lightning resumes from by itself on SLURM (``fit`` with ``ckpt_path=None``).

    Mirrors ``_CheckpointConnector._hpc_resume_path`` of Lightning 2.x: among the entries directly
    in ``trainer.default_root_dir`` whose name contains ``hpc_ckpt_``, the highest number wins, and
    Lightning loads ``hpc_ckpt_<that number>.ckpt``. None when there is no such entry.
    """
    root = Path(run_root)
    if not root.is_dir():
        return None
    numbers = []
    for name in os.listdir(root):
        if HPC_PREFIX in name:
            digits = re.sub(r"[^0-9]", "", name.split(HPC_PREFIX)[-1])
            if digits:
                numbers.append(int(digits))
    return root / f"{HPC_PREFIX}{max(numbers)}{CHECKPOINT_SUFFIX}" if numbers else None


def resume_arguments(run_root: str | Path, slurm: bool = False) -> list[str]:
    """What to append to a run's ``fit`` command so it continues from its newest checkpoint.

    ``["--ckpt_path", newest]``, or ``[]`` when there is no checkpoint. With ``slurm`` (the command
    runs under SLURM, where Lightning's SLURMEnvironment is detected) it is also ``[]`` when the
    newest checkpoint is the hpc checkpoint Lightning picks up itself; an explicit ``--ckpt_path``
    overrides Lightning's choice, which matters when an older hpc checkpoint would win.
    """
    newest = newest_checkpoint(run_root)
    if newest is None:
        return []
    if slurm:
        hpc = lightning_hpc_checkpoint(run_root)
        if hpc is not None and hpc.is_file() and os.path.samefile(hpc, newest):
            return []
    return ["--ckpt_path", str(newest)]


def prepare_slurm_run(run_root: str | Path) -> list[str]:
    """For an array task of ``pruning-sweep --slurm`` about to run an unfinished run: the resume
    arguments (see :func:`resume_arguments`), after saying what happens on stderr. A run folder
    without any complete checkpoint is deleted, so the run starts over from scratch (an incomplete
    ``hpc_ckpt_*.ckpt`` would otherwise make Lightning fail to load it)."""
    root = Path(run_root)
    newest = newest_checkpoint(root)
    if newest is None:
        if root.exists():
            print(f"{root}: unfinished, no checkpoint; starting over", file=sys.stderr)
            shutil.rmtree(root)
        return []
    arguments = resume_arguments(root, slurm=True)
    how = "" if arguments else " (Lightning's own hpc resume picks it up)"
    print(f"{root}: unfinished; resuming from {newest}{how}", file=sys.stderr)
    return arguments


def main(argv: Sequence[str] | None = None) -> int:
    """``python resume.py RUN_DIR``: print the shell-quoted resume arguments (maybe none)."""
    parser = argparse.ArgumentParser(
        description="Print the arguments that make an unfinished sweep run continue from its "
        "newest checkpoint (used by the SLURM script of pruning-sweep --slurm)."
    )
    parser.add_argument("run_dir", help="the run's --trainer.default_root_dir")
    args = parser.parse_args(argv)
    print(shlex.join(prepare_slurm_run(args.run_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
