"""Backbones from outside the registry, through the console script on the quickstart's digits:
torchvision's ResNet-18, a timm network and a module from the working directory are pruned,
trained, tested and exported; weights come from disk; what does not fit is one line, exit 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pruning_lightning.cli import build_cli, main

CONFIGS = Path(__file__).parents[1] / "configs"
EXAMPLES = CONFIGS / "examples"
FAST = [
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=1",
    "--trainer.limit_test_batches=2",
    "--data.batch_size=32",
    "--pruning.steps=2",
]

MY_NET = (EXAMPLES / "my_net.py").read_text()


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """An empty current directory holding my_net.py; sys.path and sys.modules restored after."""
    (tmp_path / "my_net.py").write_text(MY_NET)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # main() adds the current directory
    monkeypatch.delitem(sys.modules, "my_net", raising=False)
    yield tmp_path
    sys.modules.pop("my_net", None)


def fit_test_export(root: Path, *configs: Path | str, extra: tuple[str, ...] = ()) -> Path:
    """fit (+ test) with the quickstart and ``configs``, then export; returns the run's folder."""
    args = ["--config", str(CONFIGS / "quickstart.yaml")]
    for config in configs:
        args += ["--config", str(config)]
    main(["fit", *args, *FAST, *extra, f"--trainer.default_root_dir={root}"])
    (run,) = (root / "lightning_logs").glob("version_*")
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert metrics["test/sparsity"] == pytest.approx(0.9, abs=1e-3)
    record = json.loads((run / "pruning.json").read_text())
    assert record["method"] == "force" and record["global_sparsity"] == pytest.approx(0.9, 1e-5)
    assert (run / "kept_fraction_per_layer.png").is_file()
    (ckpt,) = run.glob("checkpoints/*.ckpt")
    out = root / "model.pt2"
    main(["export", "--config", str(run / "config.yaml"), "--ckpt_path", str(ckpt),
          "--output", str(out)])  # fmt: skip
    channels = yaml.safe_load((run / "hparams.yaml").read_text())["in_channels"]
    logits = torch.export.load(out).module()(torch.zeros(3, channels, 8, 8))
    assert logits.shape == (3, 10)
    return run


def refused(capsys, *args: str) -> str:
    """``main(args)`` must exit 2 with one line on stderr (returned), no traceback."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len([line for line in err if "error:" in line]) == 1 and "Traceback" not in "".join(err)
    return err[-1]


@pytest.fixture(scope="module")
def torchvision_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("torchvision")
    return fit_test_export(root, EXAMPLES / "torchvision_resnet18.yaml")


def test_torchvision_resnet18_fits_tests_and_exports(torchvision_run):
    hparams = yaml.safe_load((torchvision_run / "hparams.yaml").read_text())
    assert hparams["backbone"]["class_path"] == "torchvision.models.resnet18"


def test_a_class_path_checkpoint_needs_its_config(torchvision_run, tmp_path, capsys):
    (ckpt,) = torchvision_run.glob("checkpoints/*.ckpt")
    line = refused(capsys, "export", "--ckpt_path", str(ckpt), "--output", str(tmp_path / "m"))
    assert "trained with the backbone torchvision.models.resnet18, which is code" in line
    # test with another config: the checkpoint never picks the class the CLI imports
    line = refused(
        capsys, "test", "--config", str(CONFIGS / "quickstart.yaml"), f"--ckpt_path={ckpt}",
        f"--trainer.default_root_dir={tmp_path}",
    )  # fmt: skip
    assert "--ckpt_path was trained with the backbone 'torchvision.models.resnet18'" in line


def test_timm_network_fits_tests_and_exports(tmp_path):
    pytest.importorskip("timm")
    fit_test_export(tmp_path, EXAMPLES / "timm_mobilenetv3.yaml")


def test_own_module_from_the_working_directory(workdir):
    fit_test_export(workdir, EXAMPLES / "user_module.yaml")


def test_weights_from_disk_are_what_magnitude_prunes(workdir):
    sys.path.append(str(workdir))
    from my_net import TinyNet

    torch.manual_seed(1)
    trained = TinyNet(num_classes=10, in_channels=1)
    torch.save(trained.state_dict(), workdir / "trained.pt")
    args = [
        "--config", str(CONFIGS / "quickstart.yaml"),
        "--config", str(EXAMPLES / "user_module.yaml"), "--model.weights=trained.pt",
    ]  # fmt: skip
    cli = build_cli(args, run=False)
    for name, value in trained.state_dict().items():
        assert torch.equal(cli.model.backbone.state_dict()[name], value), name
    main(["fit", *args, *FAST, "--pruning.method=magnitude", "--pruning.save_masks_path=m.pt",
          "--test_after_fit=false", f"--trainer.default_root_dir={workdir}"])  # fmt: skip
    masks = torch.load(workdir / "m.pt", weights_only=True)
    weights = {f"backbone.{k}": v for k, v in trained.state_dict().items()}
    kept = torch.cat([weights[n][m].abs() for n, m in masks.items()])
    pruned = torch.cat([weights[n][~m].abs() for n, m in masks.items()])
    assert kept.min() > pruned.max()  # the largest of the loaded weights, not of a fresh init


def test_weights_that_do_not_fit_name_the_keys(workdir, capsys):
    sys.path.append(str(workdir))
    from my_net import TinyNet

    state = TinyNet(num_classes=10, in_channels=1).state_dict()
    state["extra.weight"] = state.pop("classifier.weight")
    torch.save(state, workdir / "other.pt")
    line = refused(
        capsys, "fit", "--config", str(CONFIGS / "quickstart.yaml"),
        "--config", str(EXAMPLES / "user_module.yaml"), "--model.weights=other.pt",
    )  # fmt: skip
    assert "--model.weights other.pt does not fit the backbone my_net.TinyNet" in line
    assert "1 missing key (classifier.weight); 1 unexpected key (extra.weight)" in line
    assert "--model.weights_strict false" in line


@pytest.mark.parametrize(
    "backbone, data, says",
    [
        ({"num_classes": 1000}, 3, "outputs 1000 classes but the data has 10: set num_classes: 10"),
        ({"num_classes": 10}, 1, "takes 3 input channels but the data has 1"),
    ],
    ids=["classes", "channels"],
)
def test_a_backbone_that_does_not_fit_the_data(tmp_path, capsys, backbone, data, says):
    line = refused(
        capsys, "fit", "--config", str(CONFIGS / "quickstart.yaml"),
        "--model.backbone=torchvision.models.resnet18",
        *[f"--model.backbone.{k}={v}" for k, v in backbone.items()],
        "--model.width=null", f"--data.channels={data}", f"--trainer.default_root_dir={tmp_path}",
    )  # fmt: skip
    assert says in line


def test_a_model_without_a_classifier_head(tmp_path, capsys):
    line = refused(
        capsys, "fit", "--config", str(CONFIGS / "quickstart.yaml"),
        "--model.backbone=torch.nn.Conv2d", "--model.backbone.in_channels=1",
        "--model.backbone.out_channels=10", "--model.backbone.kernel_size=3", "--model.width=null",
        f"--trainer.default_root_dir={tmp_path}",
    )  # fmt: skip
    assert "outputs (2, 10, 6, 6), not logits (batch, classes)" in line


@pytest.mark.parametrize("config", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_example_config_parses(config, capsys, monkeypatch):
    monkeypatch.chdir(EXAMPLES)  # user_module.yaml imports my_net from here
    monkeypatch.setattr(sys, "path", list(sys.path))
    if "timm" in config.name:
        pytest.importorskip("timm")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / "quickstart.yaml"), "--config", str(config),
              "--print_config"])  # fmt: skip
    assert exit_info.value.code == 0
    assert yaml.safe_load(capsys.readouterr().out)["pruning"]["method"] == "force"


def test_a_missing_optional_package_is_one_line():
    from pruning_lightning.cli import _config_error

    try:
        try:
            raise ModuleNotFoundError("Requirement 'mlflow>=1.0.0' not met.\nHINT: ...")
        except ModuleNotFoundError as err:
            raise RuntimeError("instantiating the trainer failed") from err
    except RuntimeError as err:
        message = str(_config_error(err))
    assert message == (
        "Requirement 'mlflow>=1.0.0' not met: install the extra, pip install -e '.[mlflow]'."
    )
    missing_timm = ModuleNotFoundError("No module named 'timm'", name="timm")
    assert str(_config_error(missing_timm)).endswith("pip install -e '.[timm]'.")
    typo = ModuleNotFoundError("No module named 'my_nett'", name="my_nett")
    message = str(_config_error(typo))
    assert message.startswith("No module named 'my_nett': check the class_path")
    assert "extra" not in message and "\n" not in message
