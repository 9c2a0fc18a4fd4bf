"""Reading a checkpoint never runs code from it: `export` and the backfill load it with torch's
safe loader only, refuse anything else in one line (exit 2), and still read every kind of
checkpoint the project writes (fit, early pruning, resumed, DDP)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from export_fixtures import forcelike_masks, pruned_run, quickstart_model

from pruning_lightning.analysis import backfill
from pruning_lightning.export import export_checkpoint

BIN = Path(sys.executable).parent
QUICKSTART = str(Path(__file__).parents[1] / "configs" / "quickstart.yaml")


class WritesMarker:
    """Unpickled, it writes ``marker``: what a hostile checkpoint would do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def hostile_checkpoint(path: Path, marker: Path, fmt: str) -> Path:
    """A checkpoint-shaped dict whose mask unpickles into code: torch.save's zip format, or a
    plain pickle (torch.load reads those too)."""
    checkpoint = {
        "state_dict": {},
        "hyper_parameters": {"backbone": "resnet18"},
        "callbacks": {"PruningCallback": {"masks": WritesMarker(marker)}},
    }
    if fmt == "torch":
        torch.save(checkpoint, path)
    else:
        path.write_bytes(pickle.dumps(checkpoint, protocol=2))
    return path


def one_line(err: str) -> str:
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and "weights_only" not in err
    return err


@pytest.mark.parametrize("fmt", ["torch", "pickle"])
def test_export_refuses_a_checkpoint_that_would_run_code(tmp_path, fmt):
    marker = tmp_path / "marker"
    ckpt = hostile_checkpoint(tmp_path / "hostile.ckpt", marker, fmt)
    proc = subprocess.run(
        [str(BIN / "pruning-lightning"), "export", "--ckpt_path", str(ckpt), "--output", "m.pt2"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    err = one_line(proc.stderr)
    assert "is not a checkpoint of this application" in err and "exec" in err
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hostile.ckpt"]


def test_the_backfill_refuses_a_checkpoint_that_would_run_code(tmp_path_factory, tmp_path, capfd):
    """The hostile file is the newest checkpoint of a genuine run's log dir."""
    log_dir = tmp_path / "run"
    genuine = pruned_run(tmp_path_factory, "fit").parents[1]
    (log_dir / "checkpoints").mkdir(parents=True)
    for name in ("pruning.json", "hparams.yaml"):
        if (genuine / name).is_file():
            (log_dir / name).write_text((genuine / name).read_text())
    marker = tmp_path / "marker"
    hostile_checkpoint(log_dir / "checkpoints" / "last.ckpt", marker, "torch")
    capfd.readouterr()
    assert backfill.main([str(log_dir)]) == 2
    err = one_line(capfd.readouterr().err)
    assert "is not a checkpoint of this application" in err
    assert not marker.exists()


@pytest.fixture(scope="module")
def ddp_checkpoint(tmp_path_factory) -> Path:
    """The quickstart fit under DDP (2 CPU processes) through the console script, with a drawn
    mask so that its connectivity owes nothing to rounding."""
    root = tmp_path_factory.mktemp("ddp")
    torch.save(forcelike_masks(quickstart_model(), 0.05), root / "mask.pt")
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1"}
    env.pop("MASTER_PORT", None)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    proc = subprocess.run(
        [
            str(BIN / "pruning-lightning"), "fit", "--config", QUICKSTART,
            "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu",
            "--trainer.max_epochs=1", "--trainer.limit_train_batches=4",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            "--test_after_fit=false", "--pruning.sparsity=0",
            f"--pruning.masks_path={root / 'mask.pt'}",
        ],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    (ckpt,) = root.rglob("*.ckpt")
    return ckpt


@pytest.fixture
def checkpoint(request, tmp_path_factory, tmp_path) -> Path:
    kind = request.param
    if kind == "ddp":
        return request.getfixturevalue("ddp_checkpoint")
    if kind != "fit, with more plain state":
        return pruned_run(tmp_path_factory, kind)
    # the PruningCallback's state may grow: any plain data is fine
    state = torch.load(pruned_run(tmp_path_factory, "fit"), weights_only=True)
    extra = {"a": 1, "b": [1.5, None, True, "x"], "c": {"d": {"e": -2}}}
    state["callbacks"]["PruningCallback"]["later"] = extra
    torch.save(state, tmp_path / "later.ckpt")
    return tmp_path / "later.ckpt"


@pytest.mark.parametrize(
    "checkpoint",
    [
        "fit",
        "early",
        "resumed",
        "fit, with more plain state",
        pytest.param("ddp", marks=pytest.mark.slow),
    ],
    indirect=True,
)
def test_every_kind_of_checkpoint_exports_through_the_safe_loader(
    checkpoint, tmp_path, monkeypatch
):
    calls = []
    load = torch.load

    def recorded(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recorded)
    compact, report = export_checkpoint(checkpoint, tmp_path / "model.pt2")
    assert calls and all(w is True for w in calls)  # Lightning's loader would pass None
    program = torch.export.load(tmp_path / "model.pt2").module()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(program(x), compact(x), atol=1e-5)
    assert 0 < report.effective <= report.kept


def _mask_as_tensor(state):
    state["callbacks"]["PruningCallback"]["masks"] = torch.ones(3, dtype=torch.bool)


def _other_backbone(state):
    state["hyper_parameters"]["backbone"] = "resnet34"


def _backbone_not_a_name(state):
    state["hyper_parameters"]["backbone"] = 5


def _mask_of_another_shape(state):
    masks = state["callbacks"]["PruningCallback"]["masks"]
    masks["backbone.conv1.weight"] = torch.ones(2, 2, dtype=torch.bool)


@pytest.mark.parametrize(
    "damage, says",
    [
        (_mask_as_tensor, "its mask is not a dict"),
        (_other_backbone, "its weights do not fit its hyperparameters"),
        (_backbone_not_a_name, "hyper_parameters do not describe an ImageClassifier"),
        (_mask_of_another_shape, "mask 'backbone.conv1.weight' has shape (2, 2)"),
    ],
)
def test_plain_data_that_is_no_checkpoint_of_ours_is_one_line(
    tmp_path_factory, tmp_path, capfd, damage, says
):
    from pruning_lightning.cli import main

    state = torch.load(pruned_run(tmp_path_factory, "fit"), weights_only=True)
    damage(state)
    torch.save(state, tmp_path / "damaged.ckpt")
    capfd.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "export",
                "--ckpt_path",
                str(tmp_path / "damaged.ckpt"),
                "--output",
                str(tmp_path / "m"),
            ]
        )
    assert exit_.value.code == 2
    err = one_line(capfd.readouterr().err)
    assert "is not a checkpoint of this application" in err and says in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged.ckpt"]


@pytest.mark.parametrize("subcommand", ["fit", "test"])
def test_fit_and_test_refuse_a_checkpoint_that_would_run_code(tmp_path, subcommand, capsys):
    # Lightning loads --ckpt_path with torch's safe default; the refusal is one line, exit 2
    from pruning_lightning.cli import main

    marker = tmp_path / "marker"
    ckpt = hostile_checkpoint(tmp_path / "hostile.ckpt", marker, "torch")
    with pytest.raises(SystemExit) as info:
        main([
            subcommand, "--config", QUICKSTART, f"--ckpt_path={ckpt}",
            "--trainer.enable_progress_bar=false", "--trainer.accelerator=cpu",
            f"--trainer.default_root_dir={tmp_path / 'run'}", "--trainer.logger=false",
        ])  # fmt: skip
    assert info.value.code == 2
    err = one_line(capsys.readouterr().err)
    assert "--ckpt_path is not a checkpoint of this application" in err and "exec" in err
    assert not marker.exists()
