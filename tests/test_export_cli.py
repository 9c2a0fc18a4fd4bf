"""`pruning-lightning export` on bad input: one line on stderr, exit 2, and no file left behind
(no output, no `.export-*` temporary, no folder made for an output), whatever was wrong."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from export_fixtures import pruned_run

from pruning_lightning.cli import main


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return pruned_run(tmp_path_factory, "fit")


def tree(root: Path) -> set[str]:
    """Every path under ``root``, hidden ones included."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def refused(capfd, *args: str) -> str:
    """Run ``export`` with ``args`` in the current directory: it must exit 2 with one stderr line
    (returned) and leave the current directory and the checkpoint's folder as they were."""
    ckpt = Path(args[args.index("--ckpt_path") + 1]).absolute().parent
    before = tree(Path.cwd()), tree(ckpt)
    capfd.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["export", *args])
    assert exit_.value.code == 2
    err = capfd.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and "weights_only" not in err
    assert err.startswith("pruning-lightning export: error: ")
    assert (tree(Path.cwd()), tree(ckpt)) == before
    return err


@pytest.fixture
def inputs(tmp_path_factory) -> Path:
    """A folder for the bad input files, outside the checked current directory."""
    return tmp_path_factory.mktemp("inputs")


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """An empty current directory for the relative output paths."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_checkpoint_holding_a_tensor(capfd, workdir, inputs):
    torch.save(torch.zeros(3), inputs / "tensor.ckpt")
    err = refused(capfd, "--ckpt_path", str(inputs / "tensor.ckpt"), "--output", "m.pt2")
    assert "not a checkpoint of this application: it holds a Tensor" in err


@pytest.mark.parametrize(
    "text, says",
    [("model: [backbone: resnet18\n", "not a readable YAML file"), ("- a\n- b\n", "YAML list")],
)
def test_a_config_that_is_no_yaml_mapping(capfd, workdir, inputs, ckpt, text, says):
    config = inputs / "config.yaml"
    config.write_text(text)
    err = refused(capfd, "--config", str(config), "--ckpt_path", str(ckpt), "--output", "m.pt2")
    assert says in err


@pytest.mark.parametrize("flag, name", [("--output", "model.pt2"), ("--onnx", "model.onnx")])
def test_an_output_that_is_a_directory(capfd, workdir, ckpt, flag, name):
    (workdir / "out").mkdir()
    err = refused(capfd, "--ckpt_path", str(ckpt), flag, "out")
    assert f"{flag} out is a directory: name the file to write, e.g. out/{name}" in err


def test_an_output_under_a_regular_file(capfd, workdir, ckpt):
    (workdir / "some_file").write_text("")
    err = refused(capfd, "--ckpt_path", str(ckpt), "--output", "some_file/out.pt2")
    assert "some_file is a file, not a directory" in err


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs Linux's /proc")
def test_an_output_on_a_read_only_filesystem(capfd, workdir, ckpt):
    err = refused(capfd, "--ckpt_path", str(ckpt), "--onnx", "/proc/out.onnx")
    assert "cannot write --onnx /proc/out.onnx: creating a file in /proc failed" in err
    assert not os.path.exists("/proc/out.onnx")


def test_outputs_that_collide_with_each_other_or_the_checkpoint(capfd, workdir, ckpt):
    err = refused(capfd, "--ckpt_path", str(ckpt), "--output", "m", "--onnx", "./m")
    assert "name the same file" in err
    err = refused(capfd, "--ckpt_path", str(ckpt), "--output", str(ckpt))
    assert "is the checkpoint itself" in err


def test_a_failing_export_leaves_no_folder_it_made(capfd, workdir, inputs):
    (inputs / "text.ckpt").write_text("not a checkpoint")
    err = refused(
        capfd, "--ckpt_path", str(inputs / "text.ckpt"), "--output", "new/sub/m.pt2",
        "--onnx", "new/m.onnx",
    )  # fmt: skip
    assert "not a checkpoint of this application" in err


def test_an_output_without_suffix_is_a_pt2_program(ckpt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["export", "--ckpt_path", str(ckpt), "--output", "model"])
    assert tree(tmp_path) == {"model"}
    program = torch.export.load(tmp_path / "model").module()
    assert program(torch.zeros(3, 1, 8, 8)).shape == (3, 10)


def test_a_network_torch_export_cannot_capture(capfd, workdir, ckpt, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("data-dependent control flow\n  in forward")

    monkeypatch.setattr(torch.export, "export", fail)
    err = refused(capfd, "--ckpt_path", str(ckpt), "--output", "m.pt2")
    assert "torch.export cannot trace ResNet (RuntimeError: data-dependent control flow)" in err
