"""The command line as a user drives it: configs, subcommands, checkpoints and bad input."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch
import yaml
from data_fixtures import make_cifar_folder, make_tiny_imagenet

from pruning_lightning.classifier import ImageClassifier
from pruning_lightning.cli import build_cli, main
from pruning_lightning.pruning import method_names

CONFIGS = Path(__file__).parents[1] / "configs"
FAST = [
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
]


def run(*args: str) -> None:
    main(list(args))


def log_dir(root: Path) -> Path:
    (path,) = (root / "lightning_logs").glob("version_*")
    return path


@pytest.mark.parametrize("config", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run("fit", "--config", str(config), "--print_config")
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["pruning"]["method"] in {"force", "iter_snip", "snip"}
    assert printed["data"]["class_path"].startswith("pruning_lightning.data.")


def test_quickstart_fits_tests_and_reports(tmp_path, capsys):
    run(
        "fit", "--config", str(CONFIGS / "quickstart.yaml"), *FAST,
        "--trainer.max_epochs=1", "--trainer.limit_train_batches=3", "--pruning.steps=2",
        f"--trainer.default_root_dir={tmp_path}",
    )  # fmt: skip
    logs = log_dir(tmp_path)
    metrics = json.loads((logs / "test_metrics.json").read_text())
    assert 0.0 <= metrics["test/acc1"] <= 1.0
    assert metrics["test/sparsity"] == pytest.approx(0.9, abs=1e-3)
    summary = json.loads((logs / "pruning.json").read_text())
    assert summary["method"] == "force" and len(summary["history"]) == 2
    assert list(logs.glob("events.out.tfevents.*"))

    # `test` from the checkpoint reports the sparsity the checkpoint holds
    (ckpt,) = logs.glob("checkpoints/*.ckpt")
    capsys.readouterr()
    run(
        "test", "--config", str(CONFIGS / "quickstart.yaml"), *FAST,
        f"--ckpt_path={ckpt}", f"--trainer.default_root_dir={tmp_path / 'test'}",
    )  # fmt: skip
    assert "test/sparsity" in capsys.readouterr().out


@pytest.mark.parametrize("config", sorted(CONFIGS.glob("cifar10_*.yaml")), ids=lambda p: p.stem)
def test_cifar10_configs_run_fast_dev_run(config, tmp_path):
    data_dir = make_cifar_folder(tmp_path / "cifar", num_classes=10, train_per_class=2)
    cli = build_cli([
        "fit", "--config", str(config), *FAST, "--trainer.fast_dev_run=true",
        f"--data.data_dir={data_dir}", "--data.batch_size=4", "--data.num_workers=0",
        "--model.width=8", "--pruning.sparsity=0.9", "--pruning.steps=2",
        f"--trainer.default_root_dir={tmp_path}",
    ])  # fmt: skip
    assert cli.trainer.state.finished and cli.trainer.fast_dev_run
    assert cli.trainer.global_step == 1  # fast_dev_run: one training batch, one optimizer step
    # the classifier has one output per class folder of the fixture (CIFAR-10's fixed 10)
    classes = sorted(p.name for p in (data_dir / "train").iterdir())
    assert cli.datamodule.num_classes == len(classes) == 10
    assert cli.model.hparams.num_classes == len(classes)
    assert cli.model.backbone.classifier.out_features == len(classes)


def test_tiny_imagenet_config_derives_class_count(tmp_path):
    data_dir = make_tiny_imagenet(tmp_path / "tiny", per_class=2, val_per_class=1)
    wnids = sorted(p.name for p in (data_dir / "train").iterdir())  # the fixture's classes
    default = inspect.signature(ImageClassifier).parameters["num_classes"].default
    assert len(wnids) == 3 and default == 10  # a count the model would not get without the link
    cli = build_cli([
        "fit", "--config", str(CONFIGS / "tinyimagenet_resnet50.yaml"), *FAST,
        "--trainer.fast_dev_run=true", f"--data.data_dir={data_dir}", "--data.batch_size=4",
        "--data.num_workers=0", "--model.width=8", f"--trainer.default_root_dir={tmp_path}",
    ])  # fmt: skip
    assert cli.trainer.state.finished
    assert cli.datamodule.classes == wnids
    # the count flows from the datamodule into the model: its hyper-parameters, the classifier
    assert cli.model.hparams.num_classes == len(wnids)
    assert cli.model.backbone.classifier.out_features == len(wnids)


@pytest.mark.parametrize(
    "override, message",
    [
        ("--model.backbone=resnet51", "Unknown backbone 'resnet51'"),
        ("--pruning.method=snap", "Unknown pruning method 'snap'"),
        ("--pruning.sparsity=1.5", "sparsity must be a number in [0, 1)"),
        ("--data.val_fraction=1.0", "val_fraction"),
    ],
)
def test_bad_input_exits_with_one_clear_message(override, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(
            "fit", "--config", str(CONFIGS / "quickstart.yaml"), *FAST, override,
            f"--trainer.default_root_dir={tmp_path}",
        )  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_a_file_that_is_not_a_mask_gets_one_line(tmp_path, capsys):
    garbage = tmp_path / "m.pt"
    garbage.write_text("garbage\n")
    with pytest.raises(SystemExit) as exit_info:
        run(
            "fit", "--config", str(CONFIGS / "quickstart.yaml"), *FAST,
            f"--pruning.masks_path={garbage}", f"--trainer.default_root_dir={tmp_path}",
        )  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"pruning-lightning: error: --pruning.masks_path {str(garbage)!r} is not a mask file. "
        "Point it at a file written by --pruning.save_masks_path."
    )
    assert not any("weights_only" in line or "Traceback" in line for line in err)


@pytest.mark.parametrize("method", method_names())
def test_every_method_runs_on_the_quickstart_by_changing_only_the_method(method, tmp_path):
    run(
        "fit", "--config", str(CONFIGS / "quickstart.yaml"), f"--pruning.method={method}",
        *FAST, "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1",
        f"--trainer.default_root_dir={tmp_path}",
    )  # fmt: skip
    summary = json.loads((log_dir(tmp_path) / "pruning.json").read_text())
    assert summary["method"] == method
    assert summary["global_sparsity"] == pytest.approx(0.9, abs=1e-5)


def test_unknown_datamodule_lists_the_choices(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run("fit", "--config", str(CONFIGS / "quickstart.yaml"), "--data", "Cifar11DataModule")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Cifar11DataModule" in err and "CIFAR10DataModule, CIFAR100DataModule" in err


def test_any_torch_optimizer_from_the_config():
    cli = build_cli(
        ["--config", str(CONFIGS / "quickstart.yaml"), "--model.optimizer=torch.optim.Adam",
         "--model.optimizer.lr=0.003", "--model.lr_scheduler=null"],
        run=False,
    )  # fmt: skip
    optimizer = cli.model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.param_groups[0]["lr"] == 0.003


def test_predict_writes_class_predictions(tmp_path):
    run(
        "fit", "--config", str(CONFIGS / "quickstart.yaml"), *FAST, "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2", "--pruning.steps=2", "--test_after_fit=false",
        f"--trainer.default_root_dir={tmp_path}",
    )  # fmt: skip
    (ckpt,) = log_dir(tmp_path).glob("checkpoints/*.ckpt")
    out = tmp_path / "predictions.pt"
    run(
        "predict", "--config", str(CONFIGS / "quickstart.yaml"), *FAST, f"--ckpt_path={ckpt}",
        "--trainer.callbacks+=pruning_lightning.predictions.PredictionWriter",
        f"--trainer.callbacks.path={out}", f"--trainer.default_root_dir={tmp_path / 'predict'}",
    )  # fmt: skip
    predictions = torch.load(out, weights_only=True)
    assert predictions["probs"].shape == (360, 10)
    assert torch.equal(predictions["pred"], predictions["probs"].argmax(dim=1))
    preds = predictions["pred"]
    assert preds.shape == (360,)  # the digits test split
    assert preds.min() >= 0 and preds.max() < 10


def test_missing_dataset_names_the_fix(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(
            "fit", "--config", str(CONFIGS / "cifar10_resnet50.yaml"), *FAST,
            f"--data.data_dir={tmp_path / 'nothing'}", f"--trainer.default_root_dir={tmp_path}",
        )  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "download" in err and "Traceback" not in err
