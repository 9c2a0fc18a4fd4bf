"""Compact export: the smaller network gives the masked network's logits, for every backbone, and
`pruning-lightning export` writes files that reload (torch.export, ONNX Runtime).

The masks are drawn (export_fixtures.forcelike_masks) or made by hand, never taken from a
progressive method alone: whether FORCE's mask is connected depends on float rounding."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from export_fixtures import forcelike_masks, pruned_run
from torch import nn

from pruning_lightning.errors import ConfigError
from pruning_lightning.models import BACKBONES, FIXED_WIDTH, build_backbone
from pruning_lightning.pruning import compute_masks, effective_masks
from pruning_lightning.pruning.compact import WithOffset, compact_network, inference_network
from pruning_lightning.pruning.masks import prunable_parameters

ROOT = Path(__file__).parents[1]


def trained_like(net: nn.Module) -> nn.Module:
    """BatchNorm statistics and affine terms as after training (so dead channels emit
    non-zero constants), in eval mode."""
    torch.manual_seed(1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_()
                m.bias.normal_()
    return net.eval()


def masked_copy(net: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    out = copy.deepcopy(net)
    with torch.no_grad():
        for name, p in out.named_parameters():
            if name in masks:
                p.mul_(masks[name])
    return out


def assert_equivalent(net, masks, shape, keep=()) -> nn.Module:
    small = compact_network(net, masks, shape, keep=keep)
    x = torch.randn(3, *shape)
    with torch.no_grad():
        expected, got = masked_copy(net, masks)(x), small(x)
    tolerance = 1e-4 * max(1.0, float(expected.abs().max()))
    assert float((expected - got).abs().max()) <= tolerance
    # the surviving weights are exactly the effective ones (a layer without a mask is all kept;
    # among 100M initial weights one can be exactly 0)
    weights = prunable_parameters(net)
    complete = {n: masks.get(n, torch.ones_like(p, dtype=torch.bool)) for n, p in weights.items()}
    effective = effective_masks(net, complete, shape)
    nonzero = sum(
        int((m.weight != 0).sum()) for m in small.modules() if isinstance(m, nn.Conv2d | nn.Linear)
    )
    assert nonzero == sum(int((e & (weights[n] != 0)).sum()) for n, e in effective.items())
    assert sum(p.numel() for p in small.parameters()) <= sum(p.numel() for p in net.parameters())
    return small


def with_path(net: nn.Module, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``masks`` plus the guaranteed path of forcelike_masks: connected whatever ``masks`` is."""
    spine = forcelike_masks(net, 0.0, dead=0.0)
    return {n: m | spine[n] for n, m in masks.items()}


CIFAR = [n for n in BACKBONES if n not in FIXED_WIDTH]


@pytest.mark.parametrize("name", CIFAR)
@pytest.mark.parametrize("density", [0.1, 0.01, 0.005])
def test_compact_network_gives_the_masked_logits(name, density):
    torch.manual_seed(0)
    net = build_backbone(name, 10, width=8 if name != "resnet110" else 4)
    masks = forcelike_masks(net, density)
    small = assert_equivalent(trained_like(net), masks, (3, 32, 32))
    # dead and unread channels were drawn in every layer: some go
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("name", CIFAR)
def test_the_written_form_folds_batchnorm_is_channels_last_and_gives_the_same_logits(name):
    torch.manual_seed(0)
    net = trained_like(build_backbone(name, 10, width=8 if name != "resnet110" else 4))
    masks = forcelike_masks(net, 0.01)
    small = compact_network(net, masks, (3, 32, 32))
    fast = inference_network(small, (3, 32, 32))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected, got = masked_copy(net, masks)(x), fast(x)
    assert float((expected - got).abs().max()) <= 1e-4 * max(1.0, float(expected.abs().max()))
    # a BatchNorm stays only behind a layer with a folded offset map (its input is no conv)
    called = [fast.get_submodule(n.target) for n in fast.graph.nodes if n.op == "call_module"]
    norms = [m for m in called if isinstance(m, nn.BatchNorm2d)]
    offsets = [m for m in small.modules() if isinstance(m, WithOffset)]
    assert len(norms) <= len(offsets)
    assert not any(m.training for m in fast.modules())
    for m in fast.modules():
        if isinstance(m, nn.Conv2d):
            assert m.weight.is_contiguous(memory_format=torch.channels_last)
    assert small.training is False and any(isinstance(m, nn.BatchNorm2d) for m in small.modules())


def test_the_written_form_of_a_network_torch_fx_cannot_trace_keeps_its_batchnorm():
    class Branchy(nn.Module):  # data-dependent control flow: symbolic tracing fails
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            y = self.bn(self.conv(x))
            if y.sum() > 0:
                y = y.relu()
            return self.fc(y.mean((2, 3)))

    net = trained_like(Branchy())
    fast = inference_network(net, (3, 8, 8))
    assert isinstance(fast.bn, nn.BatchNorm2d)
    assert fast.conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), net(x))


@pytest.mark.parametrize("method", ["force", "snip"])
def test_compact_network_on_a_method_mask(method):
    """A real method's mask (whatever rounding made of it, plus one sure path) compacts exactly."""
    torch.manual_seed(0)
    net = build_backbone("resnet18", 10, width=8)
    data = [(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))]
    options = {"steps": 3} if method == "force" else {}
    masks = with_path(net, compute_masks(net, data, method, 0.99, **options))
    assert_equivalent(trained_like(net), masks, (3, 32, 32))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FIXED_WIDTH))
def test_compact_imagenet_backbones(name):
    torch.manual_seed(0)
    net = build_backbone(name, 10, image_size=32)
    assert_equivalent(trained_like(net), forcelike_masks(net, 0.05), (3, 32, 32))


@pytest.mark.parametrize("name", ["resnet18", "vgg19", "mobilenetv2"])
@pytest.mark.parametrize("position", ["first", "middle", "classifier"])
def test_a_dense_layer_gets_the_constants_of_the_dead_channels_it_reads(name, position):
    """A prunable layer left dense (``exclude``: absent from the masks) still reads dead channels;
    their constants must be folded into it as into a masked layer before they are removed."""
    torch.manual_seed(0)
    net = build_backbone(name, 10, width=8)
    masks = forcelike_masks(net, 0.05, dead=0.5)
    names = list(masks)
    dense = {"first": names[0], "middle": names[len(names) // 2], "classifier": names[-1]}
    del masks[dense[position]]
    small = assert_equivalent(trained_like(net), masks, (3, 32, 32))
    if position != "first":  # the dense layer lost the input columns of dead channels
        layer = small.get_submodule(dense[position].removesuffix(".weight"))
        layer = layer.layer if isinstance(layer, WithOffset) else layer
        assert layer.weight.shape[1] < net.get_submodule(dense[position][:-7]).weight.shape[1]


def conv_head_net() -> nn.Sequential:
    """A classifier without nn.Linear: a 1x1 conv writes the logits, then global pooling."""
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 3, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


def test_a_network_without_a_linear_head_needs_keep_and_then_exports_exactly():
    torch.manual_seed(0)
    net = trained_like(conv_head_net())
    masks = {"0.weight": torch.ones(4, 2, 3, 3, dtype=torch.bool),
             "3.weight": torch.ones(3, 4, 1, 1, dtype=torch.bool)}  # fmt: skip
    masks["0.weight"][3] = False  # a dead channel, folded into the head's bias
    masks["3.weight"][2] = False  # logit 2 reads nothing: a constant, but it stays a logit
    with pytest.raises(ConfigError, match="no nn.Linear head.*keep="):
        compact_network(net, masks, (2, 5, 5))
    with pytest.raises(ConfigError, match="keep names.*'head'"):
        compact_network(net, masks, (2, 5, 5), keep=["head"])
    small = assert_equivalent(net, masks, (2, 5, 5), keep=["3"])
    assert small[3].out_channels == 3 and small[0].out_channels == 3


def test_a_dead_channel_is_removed_and_its_constant_folded_exactly():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Conv2d(3, 2, 3, padding=1),  # reads the dead channel: a constant map, padded
        nn.BatchNorm2d(2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2, 4),
    )
    trained_like(net)
    with torch.no_grad():  # the dead channel emits relu(bn(bias)) = 1 everywhere
        net[0].bias[2], net[1].running_mean[2], net[1].weight[2], net[1].bias[2] = 0, 0, 0, 1
    masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in net.named_parameters()}
    masks = {n: m for n, m in masks.items() if n.endswith("weight") and n[0] in "038"}
    masks["0.weight"][2] = False  # channel 2 is fed by nothing: relu(bn(bias)) everywhere
    small = assert_equivalent(net, masks, (1, 5, 5))
    first = small[0]
    assert first.out_channels == 2 and small[1].num_features == 2
    # the second conv reads a constant with zero padding around it: a position-dependent offset
    assert isinstance(small[3], WithOffset) and small[3].layer.in_channels == 2
    assert small[3].offset.shape == (2, 5, 5)


def test_disconnected_masks_are_refused():
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    masks = {"0.weight": torch.ones(4, 4, dtype=torch.bool), "2.weight": torch.zeros(2, 4).bool()}
    with pytest.raises(ConfigError, match="disconnected"):
        compact_network(net, masks, (4,))
    net = build_backbone("resnet18", 10, width=4)
    masks = forcelike_masks(net, 0.1)
    masks["conv1.weight"][:] = False  # the stem cut: the residual network has no path left
    with pytest.raises(ConfigError, match="no path from the input to the output"):
        compact_network(net, masks, (3, 32, 32))


def test_a_network_the_dependency_graph_cannot_trace_is_a_clear_error(monkeypatch):
    import torch_pruning

    def fail(self, *args, **kwargs):
        raise RuntimeError("unsupported operation\n  File ...")

    monkeypatch.setattr(torch_pruning.DependencyGraph, "build_dependency", fail)
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    masks = {"0.weight": torch.ones(4, 4, dtype=torch.bool)}
    with pytest.raises(ConfigError, match="cannot trace the channel .* of Sequential") as err:
        compact_network(net, masks, (4,))
    assert "unsupported operation" in str(err.value) and "\n" not in str(err.value)


# --- the command --------------------------------------------------------------------------------


def console(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).parent / "pruning-lightning"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def pruned_checkpoint(tmp_path_factory) -> tuple[Path, float, nn.Module]:
    """The quickstart's network (ResNet-18 at width 16 on the digits) with a FORCE-like mask at
    99% sparsity, trained briefly: checkpoint, test accuracy as Lightning measured it, and the
    model."""
    import lightning.pytorch as pl

    from pruning_lightning.classifier import ImageClassifier
    from pruning_lightning.data import DigitsDataModule

    ckpt = pruned_run(tmp_path_factory, "fit")
    model = ImageClassifier.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        default_root_dir=ckpt.parent,
    )  # fmt: skip
    (result,) = trainer.test(model, datamodule=DigitsDataModule(batch_size=64), verbose=False)
    return ckpt, result["test/acc1"], model


def accuracy(forward, data) -> float:
    correct = total = 0
    for x, y in data:
        correct += int((forward(x).argmax(1) == y).sum())
        total += len(y)
    return correct / total


def test_export_writes_smaller_files_that_reload_and_keep_the_accuracy(pruned_checkpoint, tmp_path):
    import numpy as np
    import onnxruntime

    from pruning_lightning.data import DigitsDataModule

    ckpt, test_acc, model = pruned_checkpoint
    config = tmp_path.parent / "run.yaml"  # the run's model: the quickstart's
    config.write_text(json.dumps({"model": {"backbone": "resnet18", "width": 16}}))
    proc = console(
        "export", "--config", str(config), "--ckpt_path", str(ckpt),
        "--output", "model.pt2", "--onnx", "model.onnx", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Exported" in proc.stdout
    program = torch.export.load(tmp_path / "model.pt2").module()
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    data = DigitsDataModule(batch_size=50, num_workers=0)
    data.setup("test")
    loader = data.test_dataloader()
    assert accuracy(program, loader) == pytest.approx(test_acc, abs=1e-6)

    def run_onnx(x):
        return torch.from_numpy(session.run(None, {"images": x.numpy()})[0])

    assert accuracy(run_onnx, loader) == pytest.approx(test_acc, abs=1e-6)
    x = next(iter(loader))[0]
    assert np.allclose(run_onnx(x).numpy(), program(x).detach().numpy(), atol=1e-4)
    parameters = sum(p.numel() for p in program.parameters())
    assert parameters < 0.5 * sum(p.numel() for p in model.backbone.parameters())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.pt2"]


def test_export_bad_input_is_a_clear_error_and_writes_nothing(pruned_checkpoint, tmp_path):
    ckpt, _, model = pruned_checkpoint
    other = tmp_path / "other.yaml"
    other.write_text(json.dumps({"model": {"backbone": "vgg19"}}))  # YAML reads JSON
    proc = console(
        "export", "--config", str(other), "--ckpt_path", str(ckpt), "--output", "m.pt2",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2 and "model.backbone='vgg19'" in proc.stderr
    dense = tmp_path / "dense.ckpt"
    state = torch.load(ckpt, weights_only=True)
    del state["callbacks"]["PruningCallback"]
    torch.save(state, dense)
    proc = console("export", "--ckpt_path", str(dense), "--output", "m.pt2", cwd=tmp_path)
    assert proc.returncode == 2 and "holds no mask" in proc.stderr
    proc = console("export", "--ckpt_path", str(ckpt), cwd=tmp_path)
    assert proc.returncode == 2 and "--output model.pt2 and/or --onnx" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dense.ckpt", "other.yaml"]


def test_export_of_a_run_with_a_dense_layer_is_exact_and_counts_what_it_writes(
    pruned_checkpoint, tmp_path
):
    """A run trained with ``--pruning.exclude '["*.classifier.weight"]'``: the checkpoint's mask
    has no entry for the classifier. Its trained BatchNorm statistics make every dead channel a
    non-zero constant, which the dense classifier reads."""
    from pruning_lightning.export import export_checkpoint

    ckpt, _, model = pruned_checkpoint
    state = torch.load(ckpt, weights_only=True)
    masks = state["callbacks"]["PruningCallback"]["masks"]
    del masks["backbone.classifier.weight"]
    excluded = tmp_path / "excluded.ckpt"
    torch.save(state, excluded)
    _, report = export_checkpoint(excluded, tmp_path / "model.pt2")
    local = {n.removeprefix("backbone."): m for n, m in masks.items()}
    effective = effective_masks(model.backbone, local, (1, 8, 8))
    assert report.effective == sum(int(e.sum()) for e in effective.values())
    assert report.kept == sum(int(m.sum()) for m in masks.values())
    program = torch.export.load(tmp_path / "model.pt2")
    held = [*program.state_dict.values(), *program.constants.values()]
    assert report.parameters_after == sum(t.numel() for t in held)
    assert report.parameters_before == sum(t.numel() for t in model.backbone.state_dict().values())
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        expected = masked_copy(model.backbone.eval(), local)(x)
    assert torch.allclose(program.module()(x), expected, atol=1e-4)
