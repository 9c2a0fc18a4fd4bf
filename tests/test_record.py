"""The run record (pruning.json): it says exactly what ran, and every consumer reads it as is."""

from __future__ import annotations

import json
import re
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import fit

from pruning_lightning import record as run_record
from pruning_lightning.analysis.backfill import main as backfill_main
from pruning_lightning.analysis.results import find_log_dir, read_run
from pruning_lightning.callback import PruningCallback
from pruning_lightning.cli import main
from pruning_lightning.pruning.config import PruningConfig
from pruning_lightning.record import RunRecord, mask_digest, read_record, upgrade_record

CONFIGS = Path(__file__).parents[1] / "configs"
REPRO_RUNS = Path(__file__).parents[1] / "docs" / "results" / "cifar10_reduced" / "runs"


def _fit(root: Path, callback: PruningCallback, seed: int) -> pl.Trainer:
    return fit(root, callback, seed=seed, limit_train_batches=2)[0]


def test_the_record_holds_resolved_steps_and_seed(tmp_path):
    # neither T nor the seed is given: the record holds what the computation used
    callback = PruningCallback(method="iter_snip", sparsity=0.5, steps=None, seed=None)
    trainer = _fit(tmp_path, callback, seed=7)
    written = read_record(trainer.log_dir)
    assert written.steps == 60 and len(written.history) == 60  # the method's default
    assert written.seed == 7 and written.global_seed == 7  # seed_everything's
    assert written.schedule == "exp" and written.num_batches == 1
    assert written.temperature == 200.0 and written.include is None and written.exclude is None
    assert written.pruned_at_step == 0 and written.pruned_at_epoch == 0
    assert written.world_size == 1 and written.device_type == "cpu"
    assert written.input_shape == [1, 8, 8]
    assert written.mask_sha256 == mask_digest(callback.masks)

    # the same run seeded otherwise computes, and records, another seed
    other = PruningCallback(method="random", sparsity=0.5, seed=None)
    assert read_record(_fit(tmp_path / "b", other, seed=3).log_dir).seed == 3


def test_record_round_trips_through_json_and_checkpoints(tmp_path):
    callback = PruningCallback(method="random", sparsity=0.5, seed=4, exclude=["*.conv1.weight"])
    trainer = _fit(tmp_path, callback, seed=0)
    written = read_record(trainer.log_dir)
    assert written == callback.record
    assert RunRecord.from_dict(json.loads(written.to_json())) == written
    assert written.exclude == ["*.conv1.weight"] and written.seed == 4 and written.global_seed == 0

    (ckpt,) = Path(trainer.log_dir).glob("checkpoints/*.ckpt")
    state = torch.load(ckpt, weights_only=True)["callbacks"][callback.state_key]
    restored = PruningCallback(method="random", sparsity=0.5)
    restored.load_state_dict(state)
    assert restored.record == written
    assert mask_digest(restored.masks) == written.mask_sha256


def test_mask_digest_tells_masks_apart():
    mask = {"a": torch.tensor([True, False, True]), "b": torch.ones(2, 2, dtype=torch.bool)}
    same = {k: v.clone() for k, v in mask.items()}
    assert mask_digest(mask) == mask_digest(same)
    flipped = {**mask, "a": torch.tensor([True, True, True])}
    renamed = {"c": mask["a"], "b": mask["b"]}
    reshaped = {**mask, "b": torch.ones(4, dtype=torch.bool)}
    digests = {mask_digest(m) for m in (mask, flipped, renamed, reshaped)}
    assert len(digests) == 4


def test_versions_are_recorded_as_plain_strings():
    found = run_record.versions()
    assert found["torch"] == str(torch.__version__) and type(found["torch"]) is str
    assert type(found["lightning"]) is str and found["python"]
    assert set(found) >= {"pruning_lightning", "git_commit", "git_dirty"}


def test_quickstart_record_says_what_ran(tmp_path):
    main([
        "fit", "--config", str(CONFIGS / "quickstart.yaml"), "--seed_everything", "3",
        "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.accelerator=cpu", f"--trainer.default_root_dir={tmp_path}",
    ])  # fmt: skip
    (log_dir,) = (tmp_path / "lightning_logs").glob("version_*")
    written = read_record(log_dir)
    assert (written.method, written.steps, written.seed) == ("force", 10, 3)
    assert written.schema == run_record.SCHEMA
    assert written.versions["torch"] == str(torch.__version__)
    (ckpt,) = log_dir.glob("checkpoints/*.ckpt")
    masks = torch.load(ckpt, weights_only=True)["callbacks"]["PruningCallback"]["masks"]
    assert written.mask_sha256 == mask_digest(masks)
    # the results row is the record's, not the config's
    row = read_run(log_dir)
    assert (row["method"], row["steps"], row["seed"]) == ("force", 10, 3)


OLD_RECORD = {
    "method": "force",
    "sparsity": 0.99,
    "steps": None,
    "schedule": "exp",
    "num_batches": 1,
    "seed": None,
    "masks_path": None,
    "prune_after_steps": 0,
    "prune_after_epochs": 0,
    "mask_seconds": 1.0,
    "global_sparsity": 0.99,
    "layers": {"w": {"kept": 1, "total": 100}},
    "history": [],
}
OLD_CONFIG = {
    "seed_everything": 2,
    "trainer": {"precision": "32-true"},
    "pruning": {"method": "force", "sparsity": 0.99, "steps": None, "seed": None,
                "temperature": 200.0, "include": None, "exclude": None},
}  # fmt: skip


def test_an_old_record_reads_and_upgrades_once():
    old = RunRecord.from_dict(OLD_RECORD)
    assert old.schema == 1 and old.steps is None and old.versions == {}
    upgraded = RunRecord.from_dict(upgrade_record(OLD_RECORD, OLD_CONFIG))
    assert upgraded.schema == run_record.SCHEMA
    assert (upgraded.steps, upgraded.seed, upgraded.global_seed) == (60, 2, 2)
    assert upgraded.temperature == 200.0 and upgraded.amp_dtype is None
    assert upgraded.layers == old.layers and upgraded.mask_sha256 is None
    # a one-shot method's config with a T written for FORCE is resolved as the callback does
    snip = {**OLD_RECORD, "method": "snip"}
    config = {**OLD_CONFIG, "pruning": {**OLD_CONFIG["pruning"], "steps": 60, "seed": 5}}
    assert RunRecord.from_dict(upgrade_record(snip, config)).steps == 1
    assert RunRecord.from_dict(upgrade_record(snip, config)).seed == 5
    again = upgrade_record(upgrade_record(OLD_RECORD, OLD_CONFIG), {"seed_everything": 9})
    assert again["seed"] == 2  # schema 2 is never rewritten


def test_backfill_options_resolves_a_run_folder(tmp_path, capsys):
    log_dir = tmp_path / "run" / "lightning_logs" / "version_0"
    log_dir.mkdir(parents=True)
    (log_dir / "pruning.json").write_text(json.dumps(OLD_RECORD))
    (log_dir / "config.yaml").write_text(json.dumps(OLD_CONFIG))  # YAML is a superset
    assert backfill_main(["--options", str(tmp_path / "run")]) == 0
    assert read_record(log_dir).steps == 60 and read_record(log_dir).seed == 2


@pytest.mark.parametrize("run", sorted(REPRO_RUNS.glob("*-s0.9*")), ids=lambda p: p.name)
def test_committed_reproduction_records_are_resolved(run):
    # the finished attempt's record (a resumed run has an earlier, unfinished version locally)
    log_dir = find_log_dir(run)
    if log_dir is None:
        pytest.skip(f"{run.name} is still running here (a clone holds finished runs only)")
    written = read_record(log_dir / "pruning.json")
    config = PruningConfig(written.method, written.sparsity)
    assert written.schema == run_record.SCHEMA
    assert written.steps == config.steps  # the default T the runs used
    seed = int(re.search(r"-seed(\d+)", run.name).group(1))
    assert written.seed == written.global_seed == seed


def test_a_record_with_a_non_integer_seed_is_malformed():
    with pytest.raises(ValueError, match="'seed' is not an integer"):
        RunRecord.from_dict({**OLD_RECORD, "seed": "0"})
