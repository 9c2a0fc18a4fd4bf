"""A method is one registry entry plus its score function: a toy one runs through the API, the
CLI and the sweep runner without any other change."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import conv_net

from pruning_lightning import ConfigError, compute_masks
from pruning_lightning.analysis import figures
from pruning_lightning.pruning import Criterion, get_criterion, method_names, register
from pruning_lightning.pruning.registry import unregister

ROOT = Path(__file__).resolve().parents[1]

# The toy method: keep the weights of SMALLEST magnitude (the opposite of magnitude pruning).
TOY_MODULE = """
import torch
from pruning_lightning.pruning import Criterion, register


def smallest_score(ctx):
    theta0 = ctx.theta0

    def step(t, prev, views):
        for v, th in zip(views, theta0, strict=True):
            torch.abs(th, out=v).neg_()

    return step


register(Criterion("smallest", smallest_score, "Smallest", "#123456", needs_data=False))
"""


@pytest.fixture
def toy(tmp_path):
    """The toy registered in this process, and a PYTHONPATH that registers it in subprocesses."""
    (tmp_path / "toy_method.py").write_text(TOY_MODULE)
    (tmp_path / "sitecustomize.py").write_text("import toy_method  # noqa: F401\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import toy_method  # noqa: F401

        yield {**os.environ, "PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1"}
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("toy_method", None)
        unregister("smallest")


def test_the_toy_runs_through_the_api(toy):
    net = conv_net()
    masks = compute_masks(net, None, "smallest", 0.75)
    theta = torch.cat([net[i].weight.detach().abs().flatten() for i in (0, 3, 8)])
    kept = torch.cat([masks[f"{i}.weight"].flatten() for i in (0, 3, 8)])
    k = round(0.25 * theta.numel())
    assert int(kept.sum()) == k
    assert theta[kept].max() <= theta[~kept].min()  # exactly the k smallest magnitudes
    assert "smallest" in method_names() and get_criterion("smallest").label == "Smallest"
    assert figures.method_color("smallest") == "#123456"
    assert figures.method_label("smallest") == "Smallest"


def test_registering_a_taken_name_or_a_one_shot_with_steps_fails():
    with pytest.raises(ValueError, match="exists already"):
        register(get_criterion("force"))
    with pytest.raises(ValueError, match="needs progressive=True"):
        register(Criterion("x", get_criterion("snip").score, "X", "#000001", default_steps=5))
    with pytest.raises(ConfigError, match="Unknown pruning method 'smallest'"):
        get_criterion("smallest")


@pytest.mark.slow
def test_the_toy_runs_through_the_cli_and_the_sweep_runner(toy, tmp_path):
    help_text = subprocess.run(
        [sys.executable, "-m", "pruning_lightning", "fit", "--help"],
        capture_output=True, text=True, env=toy, cwd=ROOT, timeout=300,
    ).stdout  # fmt: skip
    assert "smallest" in help_text and "force" in help_text  # the help lists the registry

    out = tmp_path / "sweep"
    settings = [
        "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1", "trainer.num_sanity_val_steps=0",
        "trainer.enable_progress_bar=false", "trainer.enable_checkpointing=false",
        "model.width=4", "pruning.log_figure=false",
    ]  # fmt: skip
    command = [sys.executable, "-m", "pruning_lightning.analysis.sweep", "--config",
               str(ROOT / "configs" / "quickstart.yaml"), "--methods", "smallest",
               "--sparsities", "0.75", "--seeds", "0", "--out", str(out)]  # fmt: skip
    for item in settings:
        command += ["--set", item]
    run = subprocess.run(command, capture_output=True, text=True, env=toy, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    (row,) = list(csv.DictReader((out / "results.csv").open()))
    assert row["method"] == "smallest"
    assert float(row["global_sparsity"]) == pytest.approx(0.75, abs=1e-5)
    summary = json.loads((Path(row["run_dir"]) / "pruning.json").read_text())
    assert summary["method"] == "smallest" and summary["mask_seconds"] > 0
