"""The record of a pruned run, ``pruning.json``: exactly what ran, and what the mask looks like.

:class:`RunRecord` is the one definition. The PruningCallback writes it once the mask is known
(and carries it in checkpoints); results, sweeps, figures, export and the backfill read it back
through :func:`read_record` / :meth:`RunRecord.from_dict`, which check it. Every option is the
*resolved* value the computation used (T after the method's default, the seed after
``seed_everything``), so a record is enough on its own: nobody rebuilds a value from a config file
or from the length of the history. Plain data in, plain data out: no Lightning here.

Records written before schema 2 lack the provenance fields (they read as None) and may hold
``steps``/``seed`` as null; :func:`upgrade_record` fills those once from the run's ``config.yaml``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import platform
import subprocess
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from pruning_lightning.errors import ConfigError
from pruning_lightning.pruning.masks import kept_total

if TYPE_CHECKING:
    from pruning_lightning.pruning.config import PruningConfig
    from pruning_lightning.pruning.engine import PruningResult

SCHEMA = 2
PRUNING_JSON = "pruning.json"

#: The :class:`PruningConfig` fields a record holds, resolved (amp_dtype as its name).
CONFIG_FIELDS = (
    "method",
    "sparsity",
    "steps",
    "schedule",
    "num_batches",
    "seed",
    "include",
    "exclude",
    "temperature",
    "amp_dtype",
    "ablation",
    "ablation_seed",
    "saliency_data",
    "prospr_first_order",
    "prospr_new_batches",
)


@dataclass
class RunRecord:
    """The content of ``pruning.json``, measured on the dense theta0 before pruned weights are
    zeroed (docs/METHODS.md "What a run records")."""

    # -- what was computed: the resolved PruningConfig ------------------------------------------
    method: str
    sparsity: float
    steps: int | None = None  # T as run (1 for one-shot methods); None only in old records
    schedule: str | None = None
    num_batches: int | None = None
    seed: int | None = None  # the mask computation's seed, after seed_everything
    include: list[str] | None = None
    exclude: list[str] | None = None
    temperature: float | None = None
    amp_dtype: str | None = None  # "bfloat16" / "float16" when the saliency ran under autocast
    ablation: str | None = None  # shuffle, reinit, shuffle_weights, invert (docs "Ablations")
    ablation_seed: int | None = None  # resolved (the seed by default); None without an ablation
    saliency_data: str | None = None  # random_labels / shuffled_pixels: corrupted saliency data
    prospr_first_order: bool | None = None  # ProsPr's options (None in older records)
    prospr_new_batches: bool | None = None
    # -- where the mask came from and when ------------------------------------------------------
    masks_path: str | None = None  # a loaded mask file (then no computation ran)
    prune_after_steps: int = 0
    prune_after_epochs: int = 0
    pruned_at_step: int | None = None  # trainer.global_step when the mask was made
    pruned_at_epoch: int | None = None
    global_seed: int | None = None  # seed_everything's seed (None: not seeded)
    input_shape: list[int] | None = None  # one example's shape, as the mask was measured
    mask_sha256: str | None = None  # of the mask's names, shapes and bits (:func:`mask_digest`)
    # the mask before a mask-level ablation (= mask_sha256 when the ablation keeps the mask)
    unablated_mask_sha256: str | None = None
    ablation_iou: float | None = None  # global IoU of the kept sets of the two masks
    world_size: int | None = None
    device_type: str | None = None  # where the mask was computed: cpu, cuda, ...
    versions: dict[str, Any] = field(default_factory=dict)  # torch, lightning, package, git
    schema: int = SCHEMA
    # -- what the mask looks like ---------------------------------------------------------------
    mask_seconds: float | None = None  # None for a mask loaded from a file
    global_sparsity: float = 0.0
    # 1 - (kept weights on an input-output path) / total; None where no input shape is known
    effective_sparsity: float | None = None
    # name -> {"kept", "total"} and, with effective_sparsity, "effective" (kept on a path)
    layers: dict[str, dict[str, int]] = field(default_factory=dict)
    collapsed_layers: list[str] = field(default_factory=list)  # layers with no weight left
    disconnected: bool = False  # no input-output path survives
    force_saliency: dict[str, float] = field(default_factory=dict)  # view -> S(m)
    history: list[dict[str, Any]] = field(default_factory=list)  # per step of a progressive run
    # the first step t whose recorded S(m_t) is exactly 0 (no gradient signal left), else None
    saliency_zero_step: int | None = None
    step_masks: str | None = None  # the masks m_1..m_T in the log dir (save_step_masks), else None

    @classmethod
    def measure(
        cls,
        config: PruningConfig,
        counts: Mapping[str, tuple[int, int]],
        *,
        connected: bool,
        saliency: Mapping[str, float],
        result: PruningResult | None,
        effective: Mapping[str, int] | None = None,
        **run: Any,
    ) -> RunRecord:
        """From the resolved config, the per-layer (kept, total) counts, the per-layer effective
        kept counts (None: unknown), the measurements and the run's provenance (``run``: the
        fields of the record's second block)."""
        kept, total = kept_total(counts)
        steps = result.steps if result is not None else []
        layers = {name: {"kept": k, "total": t} for name, (k, t) in counts.items()}
        if effective is not None:
            for name, entry in layers.items():
                entry["effective"] = effective[name]
        return cls(
            **config_fields(config),
            **run,
            layers=layers,
            mask_seconds=None if result is None else result.seconds,
            global_sparsity=1 - kept / total,
            effective_sparsity=(None if effective is None else 1 - sum(effective.values()) / total),
            collapsed_layers=[name for name, (k, _) in counts.items() if k == 0],
            disconnected=not connected,
            force_saliency=dict(saliency),
            history=[
                {
                    "step": r.step,
                    "kept": r.kept,
                    "pruned": r.pruned,
                    "recovered": r.recovered,
                    "saliency": r.saliency,
                }
                for r in steps
            ],
            saliency_zero_step=next((r.step for r in steps if r.saliency == 0), None),
        )

    @property
    def counts(self) -> dict[str, tuple[int, int]]:
        return {name: (entry["kept"], entry["total"]) for name, entry in self.layers.items()}

    @property
    def kept(self) -> int:
        return kept_total(self.counts)[0]

    @property
    def total(self) -> int:
        return kept_total(self.counts)[1]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, data: Any) -> RunRecord:
        """Check and load a parsed ``pruning.json``; ValueError naming the first problem.

        A file without ``schema`` is from before schema 2: its provenance fields read as None.
        """
        problem = _problem(data)
        if problem:
            raise ValueError(problem)
        known = {f.name for f in fields(cls)}
        return cls(**{"schema": 1, **{k: v for k, v in data.items() if k in known}})


def config_fields(config: PruningConfig) -> dict[str, Any]:
    """The record's copy of a resolved config: JSON types only (tuples as lists, dtype by name)."""
    out = {}
    for name in CONFIG_FIELDS:
        value = getattr(config, name)
        if isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, torch.dtype):
            value = str(value).removeprefix("torch.")
        out[name] = value
    return out


def read_record(path: str | Path) -> RunRecord:
    """The checked record in ``path`` (a ``pruning.json`` or a log dir holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / PRUNING_JSON
    if not path.is_file():
        raise ConfigError(
            f"{path} does not exist. Pass a pruning.json written by a pruned run (or the run's "
            "log dir, lightning_logs/version_N); dense runs (sparsity 0) write none."
        )
    try:
        return RunRecord.from_dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(
            f"Cannot read {path}: {err}. The run that wrote it did not finish cleanly; delete its "
            "run directory and rerun it (pruning-sweep redoes runs without test metrics)."
        ) from None
    except ValueError as err:
        raise ConfigError(
            f"{path} is malformed: {err}. It must be the pruning.json that the pruning "
            "callback writes; rerun the run to regenerate it."
        ) from None


def mask_digest(masks: Mapping[str, Tensor]) -> str:
    """SHA-256 of a mask: every tensor's name, shape and bits (packed), in the mask's order.

    Two runs hold the same mask iff their digests are equal; it is computed on the host.
    """
    digest = hashlib.sha256()
    for name, mask in masks.items():
        bits = mask.detach().to("cpu", torch.bool).numpy().reshape(-1)
        digest.update(f"{name}:{tuple(mask.shape)};".encode())
        digest.update(np.packbits(bits).tobytes())
    return digest.hexdigest()


@functools.cache
def versions() -> dict[str, Any]:
    """torch, lightning, this package and Python, plus the git commit when run from a checkout."""
    import lightning

    try:
        package = importlib.metadata.version("pruning-lightning")
    except importlib.metadata.PackageNotFoundError:
        package = None
    commit, dirty = _git_state(Path(__file__).resolve().parent.parent)
    return {
        "pruning_lightning": package,
        "torch": str(torch.__version__),  # a TorchVersion: no class in a checkpoint
        "lightning": str(lightning.__version__),
        "python": platform.python_version(),
        "git_commit": commit,
        "git_dirty": dirty,
    }


def _git_state(root: Path) -> tuple[str | None, bool | None]:
    """(HEAD commit, uncommitted changes) of the checkout at ``root``; (None, None) elsewhere."""
    if not (root / ".git").exists():
        return None, None
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None, None
    return head or None, bool(status.strip())


def upgrade_record(data: Mapping[str, Any], run_config: Mapping[str, Any]) -> dict[str, Any]:
    """A pre-schema-2 ``pruning.json`` with its options resolved once from the run's saved
    ``config.yaml`` (LightningCLI's, which holds what the run was given): T after the method's
    default, the seed after ``seed_everything``, and the options old records left out. What the
    old run never recorded (checksum, versions, devices) stays None."""
    from pruning_lightning.pruning.config import PruningConfig, ignores_steps

    if data.get("schema", 1) >= SCHEMA:
        return dict(data)
    given = dict(run_config.get("pruning") or {})
    global_seed = run_config.get("seed_everything")
    if isinstance(global_seed, bool):  # seed_everything: true draws a seed it does not save
        global_seed = None
    options = {k: given[k] for k in CONFIG_FIELDS if given.get(k) is not None and k != "amp_dtype"}
    options.update(method=data["method"], sparsity=data["sparsity"])
    options["seed"] = given.get("seed") if given.get("seed") is not None else global_seed
    if data.get("steps") is not None:
        options["steps"] = data["steps"]
    if ignores_steps(options["method"], options.get("steps")):  # as the callback does
        del options["steps"]
    resolved = config_fields(PruningConfig(**options))
    precision = str((run_config.get("trainer") or {}).get("precision"))
    resolved["amp_dtype"] = {"bf16-mixed": "bfloat16", "16-mixed": "float16"}.get(precision)
    return {**data, **resolved, "global_seed": global_seed, "schema": SCHEMA}


# -- checks ----------------------------------------------------------------------------------------


def _problem(record: Any) -> str | None:
    if not isinstance(record, dict):
        return "the top level is not an object"
    for key in ("method", "sparsity", "layers"):
        if key not in record:
            return f"the key {key!r} is missing"
    layers = record["layers"]
    if not isinstance(layers, dict) or not layers:
        return "'layers' is empty or not an object"
    for name, entry in layers.items():
        if (
            not isinstance(entry, dict)
            or not _is_count(entry.get("kept"))
            or not (_is_count(entry.get("total")) and entry["total"] > 0)
        ):
            return f"layer {name!r} lacks integer 'kept' and positive 'total' counts"
        if entry["kept"] > entry["total"]:
            return f"layer {name!r} keeps more weights than it has"
        if "effective" in entry and not (
            _is_count(entry["effective"]) and entry["effective"] <= entry["kept"]
        ):
            return f"layer {name!r} has an 'effective' count that is not in [0, kept]"
    for key in ("steps", "seed", "ablation_seed", "global_seed", "pruned_at_step", "world_size",
                "saliency_zero_step"):  # fmt: skip
        value = record.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            return f"{key!r} is not an integer"
    iou = record.get("ablation_iou")
    if iou is not None and (isinstance(iou, bool) or not isinstance(iou, int | float)
                            or not 0 <= iou <= 1):  # fmt: skip
        return "'ablation_iou' is not a number in [0, 1]"
    history = record.get("history", [])
    if not isinstance(history, list):
        return "'history' is not a list"
    for i, entry in enumerate(history):
        if not isinstance(entry, dict) or not isinstance(entry.get("kept"), dict):
            return f"history entry {i} lacks its 'kept' counts"
        for key in ("step", "pruned", "recovered"):
            if not _is_count(entry.get(key)):
                return f"history entry {i} lacks an integer {key!r}"
        unknown = set(entry["kept"]) - set(layers)
        if unknown:
            return f"history entry {i} names layers not in 'layers': {sorted(unknown)[:3]}"
    return None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
