"""Logged runs -> tidy rows, and the checks every figure runs on its input table.

A run's log dir (``trainer.log_dir``) holds what the CLI wrote: ``test_metrics.json`` (with
``--test_after_fit true``), ``pruning.json`` (when it pruned) and LightningCLI's ``config.yaml``.
A run resumed from a checkpoint logs to a new ``version_N`` (except a requeued SLURM job, whose
version is its unchanged job id); :func:`find_log_dir` takes the newest one with test metrics, and
its mask statistics come from an earlier attempt's ``pruning.json`` when the resumed attempt wrote
none (:func:`find_pruning_json`). :func:`read_run` turns one such dir into one flat row;
:func:`read_table` reads a results CSV back with numbers parsed, and raises :class:`ConfigError`
naming the file and the fix when it is empty or malformed, so a figure never silently plots
nothing.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from pruning_lightning.errors import ConfigError
from pruning_lightning.pruning.registry import DENSE
from pruning_lightning.record import PRUNING_JSON, read_record

TEST_METRICS = "test_metrics.json"
#: The ``ablation`` column of a run without one (the method's own mask, or a dense run).
NO_ABLATION = "none"

#: The leading columns of every results table, in this order; any others follow.
RESULT_COLUMNS = [
    "method",
    "sparsity",
    "seed",
    "ablation",
    "steps",
    "schedule",
    "num_batches",
    "test_acc1",
    "test_acc5",
    "test_loss",
    "test_sparsity",
    "global_sparsity",
    "effective_sparsity",
    "mask_seconds",
    "collapsed_layers",
    "collapsed_layer_names",
    "disconnected",
    "force_saliency_pruning",
    "force_saliency_sparsification",
]


# -- one run ---------------------------------------------------------------------------------------


def find_log_dir(run_root: str | Path) -> Path | None:
    """The newest log dir under ``run_root`` that holds a finished run's test metrics, or None.

    Newest = highest ``version_N`` (a resumed run logs to the next version; under SLURM the
    version is the job id, which a requeued job keeps), then newest file.
    """
    found = [p.parent for p in Path(run_root).rglob(TEST_METRICS)]
    if not found:
        return None
    return max(found, key=lambda d: (_version_number(d), d.stat().st_mtime))


def _version_number(log_dir: Path) -> int:
    match = re.fullmatch(r"version_(\d+)", log_dir.name)
    return int(match.group(1)) if match else -1


def find_pruning_json(log_dir: str | Path) -> Path | None:
    """The ``pruning.json`` describing the mask of the run logged in ``log_dir``, or None.

    Its own, else (a run resumed from a checkpoint logs to a new ``version_N``, which may lack
    one) the newest one among the earlier attempts of the same run: the versions right before
    ``log_dir`` in its ``lightning_logs``, back to the nearest one that finished on its own (holds
    test metrics: another run). An attempt counts only when its ``config.yaml`` has the same
    ``pruning`` settings and ``seed_everything``, so an unrelated run sharing the folder never
    lends its mask (dense runs write none and get none).
    """
    log_dir = Path(log_dir)
    own = log_dir / PRUNING_JSON
    if own.is_file():
        return own
    number = _version_number(log_dir)
    if number < 0:
        return None
    config = read_config(log_dir)
    earlier = sorted(
        (n, d)
        for d in log_dir.parent.glob("version_*")
        if d.is_dir() and 0 <= (n := _version_number(d)) < number
    )
    for _, attempt in reversed(earlier):
        if (attempt / TEST_METRICS).is_file():
            return None
        if not _same_mask_settings(config, read_config(attempt)):
            continue
        if (attempt / PRUNING_JSON).is_file():
            return attempt / PRUNING_JSON
    return None


def latest_pruning_jsons(root: str | Path) -> list[Path]:
    """Every ``pruning.json`` under ``root``, one per run: of a run resumed from a checkpoint into
    later ``version_N`` folders (see :func:`find_pruning_json`), only the newest attempt's."""
    return [p for p in sorted(Path(root).rglob(PRUNING_JSON)) if not _superseded(p.parent)]


def _superseded(log_dir: Path) -> bool:
    """Whether a later attempt of the same (unfinished here) run has its own pruning.json."""
    number = _version_number(log_dir)
    if number < 0 or (log_dir / TEST_METRICS).is_file():
        return False
    config = read_config(log_dir)
    later = sorted(
        (n, d)
        for d in log_dir.parent.glob("version_*")
        if d.is_dir() and (n := _version_number(d)) > number
    )
    for _, attempt in later:
        if (attempt / PRUNING_JSON).is_file() and _same_mask_settings(config, read_config(attempt)):
            return True
        if (attempt / TEST_METRICS).is_file():
            return False
    return False


def _same_mask_settings(a: dict, b: dict) -> bool:
    """Whether two saved configs would compute the same mask."""
    return all(a.get(key) == b.get(key) for key in ("pruning", "seed_everything"))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(
            f"Cannot read {path}: {err}. The run that wrote it did not finish cleanly; delete its "
            "run directory and rerun it (pruning-sweep redoes runs without test metrics)."
        ) from err


def dig(config: dict, dotted: str) -> Any:
    """``config['a']['b']`` for ``'a.b'``, looking through jsonargparse's ``init_args`` levels."""
    node: Any = config
    for key in dotted.split("."):
        if isinstance(node, dict) and key not in node and isinstance(node.get("init_args"), dict):
            node = node["init_args"]
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def read_config(log_dir: str | Path) -> dict:
    """LightningCLI's saved ``config.yaml`` of a run ({} when absent)."""
    path = Path(log_dir) / "config.yaml"
    if not path.is_file():
        return {}
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"Cannot parse {path}: {err}. Delete the run and rerun it.") from err


def read_pruning_json(path: str | Path) -> dict:
    """A checked run record as a dict (a ``pruning.json``, or a log dir holding one), with the
    file it came from under ``_path``."""
    path = Path(path)
    record = read_record(path).to_dict()
    record["_path"] = str(path / PRUNING_JSON if path.is_dir() else path)
    return record


def read_run(log_dir: str | Path) -> dict[str, Any]:
    """One tidy row from a finished run's log dir (see :data:`RESULT_COLUMNS`).

    Every pruning column comes from the run record (pruning.json); a resumed run whose log dir
    lacks one takes it from an earlier attempt (:func:`find_pruning_json`). A dense run (sparsity
    0) writes no record: its method is :data:`DENSE`, its seed ``seed_everything``'s from
    ``config.yaml``, and its mask columns are empty. ``ablation`` is the record's
    (:func:`ablation_name`; :data:`NO_ABLATION` when it has none, as for a dense run).
    """
    log_dir = Path(log_dir)
    metrics_path = log_dir / TEST_METRICS
    if not metrics_path.is_file():
        raise ConfigError(
            f"{log_dir} holds no {TEST_METRICS}: the run did not finish, or it ran without "
            "--test_after_fit true. Rerun it with --test_after_fit true."
        )
    metrics = _read_json(metrics_path)
    if not isinstance(metrics, dict) or not metrics:
        raise ConfigError(
            f"{metrics_path} holds no test metrics (the test loop logged nothing). Rerun the run "
            "with --test_after_fit true and limit_test_batches > 0."
        )
    config = read_config(log_dir)
    pruning_path = find_pruning_json(log_dir)
    summary = read_pruning_json(pruning_path) if pruning_path is not None else None
    row: dict[str, Any] = {}
    if summary is not None:
        row["method"], row["sparsity"] = summary["method"], summary["sparsity"]
        seed = summary["global_seed"]  # the run's seed, as sweeps count seeds
        row["seed"] = summary["seed"] if seed is None else seed
        row["ablation"] = ablation_name(summary)
        for key in ("steps", "schedule", "num_batches"):
            row[key] = summary[key]
    else:
        row.update(method=DENSE, sparsity=0.0, seed=config.get("seed_everything"))
        row["ablation"] = NO_ABLATION
        row.update(steps=None, schedule=None, num_batches=None)
    for key, value in metrics.items():
        row[key.replace("/", "_")] = value
    if summary is not None:
        collapsed = summary.get("collapsed_layers") or []
        row["global_sparsity"] = summary.get("global_sparsity")
        row["effective_sparsity"] = summary.get("effective_sparsity")
        row["mask_seconds"] = summary.get("mask_seconds")
        row["collapsed_layers"] = len(collapsed)
        row["collapsed_layer_names"] = ";".join(collapsed)
        row["disconnected"] = bool(summary.get("disconnected", False))
        saliency = summary.get("force_saliency") or {}
        row["force_saliency_pruning"] = saliency.get("pruning")
        row["force_saliency_sparsification"] = saliency.get("sparsification")
    else:
        # no mask, no effective figure (even a dense net has taps that only meet padding)
        row.update(global_sparsity=0.0, collapsed_layers=0, collapsed_layer_names="")
        row["disconnected"] = False
    row["run_dir"] = str(log_dir)
    return row


def ablation_name(record: Mapping[str, Any]) -> str:
    """The ``ablation`` column of a run: its mask ablation and its saliency-data corruption
    joined by ``+`` (``shuffle``, ``random_labels``, ``shuffle+random_labels``), or
    :data:`NO_ABLATION`, so a run on corrupted data is never averaged with the method's own."""
    parts = [record.get("ablation"), record.get("saliency_data")]
    return "+".join(p for p in parts if p) or NO_ABLATION


def collect_runs(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Rows of every finished run found under ``paths`` (log dirs or any folders above them)."""
    rows = []
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"{path} does not exist. Pass a run directory or a sweep folder.")
        log_dirs = sorted({p.parent for p in path.rglob(TEST_METRICS)})
        rows += [read_run(d) for d in log_dirs]
    return rows


# -- tables ----------------------------------------------------------------------------------------


def ordered_columns(rows: Sequence[dict[str, Any]], leading: Sequence[str] = ()) -> list[str]:
    """``leading``, then :data:`RESULT_COLUMNS`, then any other key in first-seen order."""
    columns: list[str] = []
    for key in [*leading, *RESULT_COLUMNS]:
        if key not in columns and any(key in row for row in rows):
            columns.append(key)
    for row in rows:
        columns += [key for key in row if key not in columns]
    if "run_dir" in columns:  # the long path reads best last
        columns.remove("run_dir")
        columns.append("run_dir")
    return columns


def write_table(
    rows: Sequence[dict[str, Any]], path: str | Path, leading: Sequence[str] = ()
) -> Path:
    """Write ``rows`` as a CSV (missing values empty) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = ordered_columns(rows, leading)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})
    return path


def parse_value(text: str) -> Any:
    """CSV cell -> None (empty), bool, int, float or the string itself."""
    text = text.strip()
    if text == "":
        return None
    if text in ("True", "true", "False", "false"):
        return text in ("True", "true")
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def read_table(path: str | Path) -> list[dict[str, Any]]:
    """A results CSV as a list of rows with parsed values; ConfigError when missing or empty."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"Results table {path} does not exist. Write one with pruning-sweep (results.csv in "
            "the sweep folder) or pass the right path."
        )
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames
            raw = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ConfigError(f"Cannot read results table {path}: {err}. Pass a CSV file.") from err
    if not header:
        raise ConfigError(
            f"Results table {path} is empty (no header). Did the sweep finish any run? Rerun "
            "pruning-sweep, which rewrites the table from the finished runs."
        )
    if not raw:
        raise ConfigError(
            f"Results table {path} has a header but no rows: no run has finished yet. Let the "
            "sweep finish (or rerun it) before drawing figures."
        )
    rows = []
    for i, record in enumerate(raw, start=2):
        if None in record or any(v is None for v in record.values()):
            raise ConfigError(
                f"Results table {path}, line {i}: the row has a different number of cells than "
                "the header. Regenerate the table with pruning-sweep --collect-only."
            )
        rows.append({k: parse_value(v) for k, v in record.items()})
    return rows


def require_columns(
    rows: Sequence[dict[str, Any]],
    numeric: Sequence[str] = (),
    text: Sequence[str] = (),
    source: str = "the results table",
    hint: str = "",
) -> None:
    """Raise ConfigError unless every row has a number in each ``numeric`` column and a value in
    each ``text`` column; the message names the column, the row and the fix."""
    if not rows:
        raise ConfigError(f"{source} has no rows to plot. {hint}".strip())
    columns = set().union(*(row.keys() for row in rows))
    missing = [c for c in [*numeric, *text] if c not in columns]
    if missing:
        raise ConfigError(
            f"{source} lacks the column(s) {', '.join(missing)} (it has: "
            f"{', '.join(sorted(columns))}). {hint}".strip()
        )
    for i, row in enumerate(rows, start=1):
        for column in numeric:
            value = row.get(column)
            if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
                raise ConfigError(
                    f"{source}, row {i}: column {column!r} is {value!r}, not a number. "
                    "Fix or drop that row (a crashed run?), or regenerate the table."
                )
        for column in text:
            if row.get(column) in (None, ""):
                raise ConfigError(
                    f"{source}, row {i}: column {column!r} is empty. Fix or drop that row."
                )


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def group_rows(
    rows: Iterable[dict[str, Any]], keys: Sequence[str]
) -> dict[tuple, list[dict[str, Any]]]:
    """Rows bucketed by their values of ``keys``, in first-seen order."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(k) for k in keys), []).append(row)
    return groups


# Columns a run measures (as opposed to the settings that define it).
_MEASURED = {
    "mask_seconds",
    "global_sparsity",
    "effective_sparsity",
    "collapsed_layers",
    "collapsed_layer_names",
    "disconnected",
    "force_saliency_pruning",
    "force_saliency_sparsification",
    "run_dir",
    "name",
}


def filter_rows(
    rows: Sequence[dict[str, Any]], where: Sequence[str], source: str = "the results table"
) -> list[dict[str, Any]]:
    """The rows matching every ``KEY=VALUE`` of ``where`` (values parsed like CSV cells)."""
    chosen = list(rows)
    columns = set().union(*(row.keys() for row in rows)) if rows else set()
    for item in where:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(
                f"--where {item!r} is not KEY=VALUE; write e.g. --where num_batches=1."
            )
        if key not in columns:
            raise ConfigError(
                f"--where {item!r}: {source} has no column {key!r}; it has: "
                f"{', '.join(sorted(columns))}."
            )
        value = parse_value(text)
        chosen = [r for r in chosen if _equal(r.get(key), value)]
    if not chosen:
        raise ConfigError(f"No row of {source} matches --where {' '.join(where)}.")
    return chosen


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def require_unique(
    rows: Sequence[dict[str, Any]], keys: Sequence[str], source: str = "the results table"
) -> None:
    """Raise ConfigError if two rows share ``keys`` (say two runs of one seed that differ in
    ``pruning.steps``): averaging them as if they were seeds would be wrong."""
    for group in group_rows(rows, keys).values():
        if len(group) < 2:
            continue
        differ = sorted(
            k
            for k in set().union(*(r.keys() for r in group))
            if k not in _MEASURED
            and not k.startswith("test_")
            and len({repr(r.get(k)) for r in group}) > 1
        )
        where = ", ".join(
            f"{k}={v}" for k, v in zip(keys, (group[0].get(k) for k in keys), strict=True)
        )
        raise ConfigError(
            f"{source} has {len(group)} runs with {where}"
            + (f", differing in {', '.join(differ)}" if differ else " (duplicates)")
            + ". Pick one setting with --where KEY=VALUE"
            + (f" (e.g. --where {differ[0]}={group[0].get(differ[0])})" if differ else "")
            + " or pass one sweep's table."
        )
