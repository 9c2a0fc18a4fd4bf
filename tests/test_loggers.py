"""Every logger of a run gets the pruning scalars, the per-step history and the per-layer figure
(and pruning.json where the logger keeps files): CSV, MLflow (local file store) and Weights &
Biases (offline), each through the console script on the quickstart."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import yaml

from pruning_lightning.cli import main

CONFIGS = Path(__file__).parents[1] / "configs"
FAST = [
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.accelerator=cpu",
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=1",
    "--pruning.steps=2",
    "--test_after_fit=false",
]


def fit_with_loggers(tmp_path: Path, *loggers: dict) -> None:
    """The quickstart (FORCE, T = 2) logging to ``loggers`` (class_path/init_args dicts)."""
    extra = tmp_path / "loggers.yaml"
    extra.write_text(yaml.safe_dump({"trainer": {"logger": list(loggers)}}))
    main(["fit", "--config", str(CONFIGS / "quickstart.yaml"), "--config", str(extra), *FAST])


def test_csv_logger_gets_scalars_history_and_figure(tmp_path):
    fit_with_loggers(
        tmp_path,
        {
            "class_path": "lightning.pytorch.loggers.CSVLogger",
            "init_args": {"save_dir": str(tmp_path / "csv"), "name": "run"},
        },
    )
    (folder,) = (tmp_path / "csv" / "run").glob("version_*")
    with open(folder / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    sparsity = [r["pruning/global_sparsity"] for r in rows if r.get("pruning/global_sparsity")]
    assert float(sparsity[0]) == pytest.approx(0.9, abs=1e-5)
    steps = [int(r["step"]) for r in rows if r.get("pruning/step/kept")]
    assert steps == [1, 2]
    assert (folder / "kept_fraction_per_layer.png").stat().st_size > 0
    assert json.loads((folder / "pruning.json").read_text())["method"] == "force"


def test_mlflow_logger_gets_metrics_figure_and_record(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for a database
    from mlflow.tracking import MlflowClient

    uri = f"file:{tmp_path / 'mlruns'}"
    fit_with_loggers(
        tmp_path,
        {
            "class_path": "lightning.pytorch.loggers.MLFlowLogger",
            "init_args": {"tracking_uri": uri, "experiment_name": "pruning"},
        },
    )
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("pruning").experiment_id])
    history = client.get_metric_history(run.info.run_id, "pruning/global_sparsity")
    assert history[0].value == pytest.approx(0.9, abs=1e-5)
    steps = client.get_metric_history(run.info.run_id, "pruning/step/kept")
    assert sorted(m.step for m in steps) == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"kept_fraction_per_layer.png", "pruning.json"} <= artifacts


def test_wandb_logger_gets_metrics_image_and_record(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    fit_with_loggers(
        tmp_path,
        {
            "class_path": "lightning.pytorch.loggers.WandbLogger",
            "init_args": {"save_dir": str(tmp_path), "offline": True, "project": "pruning"},
        },
    )
    import wandb

    wandb.finish()  # flush the offline run's files
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    files = run / "files"
    images = list((files / "media" / "images").rglob("*.png"))
    assert any("kept_fraction_per_layer" in p.name for p in images), images
    assert json.loads((files / "pruning.json").read_text())["method"] == "force"
    # an offline run keeps its history only in the binary .wandb file (protobuf records, with no
    # public reader), where each key and its JSON value are stored as text
    (history,) = run.glob("*.wandb")
    data = history.read_bytes()
    value = re.search(rb"pruning/global_sparsity[^0-9]{1,4}([0-9.]+)", data)
    assert value is not None and float(value.group(1)) == pytest.approx(0.9, abs=1e-5)
    assert data.count(b"pruning/step/kept") >= 2  # one per step of T = 2
