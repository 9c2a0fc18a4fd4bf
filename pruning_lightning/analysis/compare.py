"""Masks side by side: IoU and Hamming distance of pairs of masks, globally and per layer.

    pruning-figures compare --masks force0.pt force1.pt snip0.pt --out iou.png --out-csv iou.csv
    pruning-figures compare --masks sweeps/quick/force-s0.9-seed0 sweeps/quick/snip-s0.9-seed0 ...

A mask is a file of ``--pruning.save_masks_path`` (``torch.save`` of parameter name -> bool
tensor), or a run folder, whose mask is the PruningCallback state of its newest checkpoint (read
by the safe loader, :func:`pruning_lightning.export.load_pruned_checkpoint`). A file's label is its
stem; a run's is what its record says (method, seed, T, ablation). :func:`compare_masks` gives one
tidy row per pair and layer (layer :data:`GLOBAL` for all prunable tensors together), which is the
CSV and what :func:`~pruning_lightning.analysis.figures.mask_iou_figure` draws.
"""

from __future__ import annotations

import itertools
import pickle
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pruning_lightning.analysis import resume
from pruning_lightning.analysis.results import NO_ABLATION, latest_pruning_jsons, read_pruning_json
from pruning_lightning.errors import ConfigError
from pruning_lightning.pruning.ablations import mask_iou

Masks = Mapping[str, Tensor]

#: The ``layer`` of the rows over all tensors of the masks.
GLOBAL = "(global)"
#: The columns of :func:`compare_masks`' rows.
COLUMNS = ("a", "b", "layer", "iou", "hamming", "kept_a", "kept_b", "total")

__all__ = ["GLOBAL", "compare_masks", "hamming", "load_masks", "mask_iou"]


def hamming(a: Masks, b: Masks) -> float:
    """Fraction of entries (over all tensors of ``a``) where the two masks differ."""
    differ = sum(int(torch.count_nonzero(a[n] != b[n].to(a[n].device))) for n in a)
    total = sum(a[n].numel() for n in a)
    return differ / total if total else 0.0


def check_same_tensors(a: Masks, b: Masks, label_a: str = "a", label_b: str = "b") -> None:
    """Raise ConfigError naming the first tensor that one mask lacks or that differs in shape."""
    for name in [*a, *(n for n in b if n not in a)]:
        if name not in a or name not in b:
            has, lacks = (label_a, label_b) if name in a else (label_b, label_a)
            raise ConfigError(
                f"Mask {lacks} has no tensor {name!r}, which mask {has} has: compare masks of "
                "one network (same backbone, width and include/exclude)."
            )
        if tuple(a[name].shape) != tuple(b[name].shape):
            raise ConfigError(
                f"Tensor {name!r} is {tuple(a[name].shape)} in mask {label_a} and "
                f"{tuple(b[name].shape)} in mask {label_b}: compare masks of one network."
            )


def compare_masks(masks: Mapping[str, Masks]) -> list[dict[str, Any]]:
    """Every pair (in the given order, each pair once) of the labelled masks: one row for all
    tensors together (layer :data:`GLOBAL`) and one per tensor, with IoU of the kept sets,
    Hamming distance (fraction of differing entries) and the counts."""
    labels = list(masks)
    if len(labels) < 2:
        raise ConfigError(f"Comparing masks needs two or more; got {len(labels)}.")
    for other in labels[1:]:
        check_same_tensors(masks[labels[0]], masks[other], labels[0], other)
    rows = []
    for x, y in itertools.combinations(labels, 2):
        a, b = masks[x], masks[y]
        parts = [(GLOBAL, a, b), *((n, {n: a[n]}, {n: b[n]}) for n in a)]
        for layer, part_a, part_b in parts:
            rows.append(
                {
                    "a": x,
                    "b": y,
                    "layer": layer,
                    "iou": mask_iou(part_a, part_b),
                    "hamming": hamming(part_a, part_b),
                    "kept_a": sum(int(torch.count_nonzero(t)) for t in part_a.values()),
                    "kept_b": sum(int(torch.count_nonzero(t)) for t in part_b.values()),
                    "total": sum(t.numel() for t in part_a.values()),
                }
            )
    return rows


# -- files ----------------------------------------------------------------------------------------


def load_masks(path: str | Path) -> tuple[str, dict[str, Tensor]]:
    """(label, mask) of a mask file or a run folder (see the module docstring)."""
    path = Path(path)
    if path.is_dir():
        return _load_run(path)
    if not path.is_file():
        raise ConfigError(
            f"--masks {path} does not exist. Pass a file of --pruning.save_masks_path or a run "
            "folder."
        )
    return path.stem, _read_mask_file(path)


def _read_mask_file(path: Path) -> dict[str, Tensor]:
    notmask = (
        f"--masks {path} is not a mask file (torch.save of parameter name -> bool tensor, as "
        "--pruning.save_masks_path writes)"
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ConfigError(f"{notmask}: it holds more than tensors and plain data.") from None
    except Exception as err:  # not torch.save's, truncated, corrupted
        raise ConfigError(f"{notmask}: torch.load fails ({type(err).__name__}).") from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{notmask}: it holds a {type(data).__name__}, not a non-empty dict.")
    for name, mask in data.items():
        if not isinstance(name, str) or not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise ConfigError(f"{notmask}: its entry {name!r} is not a bool tensor.")
    return data


def _load_run(run: Path) -> tuple[str, dict[str, Tensor]]:
    from pruning_lightning.export import load_pruned_checkpoint

    records = latest_pruning_jsons(run)
    if len(records) > 1:
        raise ConfigError(
            f"--masks {run} holds {len(records)} pruned runs (e.g. {records[0].parent}); pass "
            "each run's own folder."
        )
    checkpoint = resume.newest_checkpoint(run)
    if checkpoint is None:
        raise ConfigError(
            f"--masks {run} holds no checkpoint: pass a run folder of a pruned run trained with "
            "checkpointing, or the file written by --pruning.save_masks_path."
        )
    _, masks, _ = load_pruned_checkpoint(checkpoint)
    return (_run_label(records[0]) if records else run.name), masks


def _run_label(path: Path) -> str:
    """``force seed1 T60`` (plus the ablation) from a run's record."""
    record = read_pruning_json(path)
    seed = record["seed"] if record["global_seed"] is None else record["global_seed"]
    label = f"{record['method']} seed{seed} T{record['steps']}"
    if (record.get("ablation") or NO_ABLATION) != NO_ABLATION:
        label += f" {record['ablation']}"
    return label


def load_labelled(paths: Sequence[str | Path]) -> dict[str, dict[str, Tensor]]:
    """label -> mask of each path; a label given twice gets the path's parent folder added."""
    loaded = [load_masks(p) for p in paths]
    counts: dict[str, int] = {}
    for label, _ in loaded:
        counts[label] = counts.get(label, 0) + 1
    out: dict[str, dict[str, Tensor]] = {}
    for path, (label, mask) in zip(paths, loaded, strict=True):
        if counts[label] > 1:
            label = f"{Path(path).resolve().parent.name}/{Path(path).name}: {label}"
        if label in out:
            raise ConfigError(f"--masks names {path} twice; pass each mask once.")
        out[label] = mask
    return out
