"""The same guarantees on a GPU: run where CUDA is available, skipped elsewhere (CI has no GPU)."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from conftest import OPTIMIZERS, batches, fit, pruned_weights, tiny_model

from pruning_lightning.callback import PruningCallback
from pruning_lightning.models import build_backbone
from pruning_lightning.pruning.engine import compute_masks

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


# (3, 32, 32) images of 10 classes, like CIFAR: three batches of 16
cifar_batches = partial(batches, 3, batch_size=16, image_shape=(3, 32, 32), num_classes=10)


def small_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_backbone("resnet18", 10, width=8)


@pytest.mark.parametrize("method", ["random", "magnitude"])
def test_data_free_masks_equal_cpu_and_cuda(method):
    cpu = compute_masks(small_net(), None, method, 0.9)
    gpu = compute_masks(small_net().cuda(), None, method, 0.9)
    for name, mask in cpu.items():
        assert gpu[name].is_cuda
        assert torch.equal(mask, gpu[name].cpu()), name


@pytest.mark.parametrize("method", ["snip", "grasp"])
def test_one_shot_masks_agree_with_cpu(method, monkeypatch):
    # cuDNN convolves float32 in TF32 by default (10-bit mantissas on Ampere and later): a 1e-3
    # error, near the margin below; without it the devices differ by the order of their sums only
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    cpu = compute_masks(small_net(), cifar_batches(), method, 0.9)
    gpu = compute_masks(small_net().cuda(), cifar_batches(), method, 0.9)
    kept = sum(int(m.sum()) for m in cpu.values())
    assert kept == sum(int(m.sum()) for m in gpu.values())
    # float reductions differ in order between devices: near-ties may flip, nothing more
    same = sum(int((m & gpu[n].cpu()).sum()) for n, m in cpu.items())
    assert same / kept > 0.97


@pytest.mark.parametrize("method", ["force", "iter_snip"])
def test_progressive_masks_are_deterministic_on_cuda(method, monkeypatch):
    # Progressive masks are chaotic (docs/METHODS.md): CPU and CUDA rounding may end far apart,
    # but the same device, seed and data must give the same mask, bit for bit: with cuDNN's
    # deterministic algorithms (its default choice may add with atomics, in any order)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    first = compute_masks(small_net().cuda(), cifar_batches(), method, 0.9, steps=5)
    second = compute_masks(small_net().cuda(), cifar_batches(), method, 0.9, steps=5)
    total = sum(m.numel() for m in first.values())
    assert sum(int(m.sum()) for m in first.values()) == round(0.1 * total)
    for name, mask in first.items():
        assert torch.equal(mask, second[name]), name


def test_autocast_saliency_pass_keeps_exact_count():
    masks = compute_masks(small_net().cuda(), cifar_batches(), "force", 0.95, steps=3,
                          amp_dtype=torch.float16)  # fmt: skip
    total = sum(m.numel() for m in masks.values())
    assert sum(int(m.sum()) for m in masks.values()) == round(0.05 * total)


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_mixed_precision_training_keeps_pruned_weights_zero(tmp_path, precision):
    callback = PruningCallback(method="snip", sparsity=0.8)
    model = tiny_model(OPTIMIZERS["sgd_momentum_wd"])
    # 16-mixed skips the first steps while the GradScaler backs off from its 2**16 start scale:
    # train long enough for real steps to happen (and so for optimizer state to exist)
    trainer, model = fit(
        tmp_path, callback, model, accelerator="gpu", precision=precision, limit_train_batches=30
    )
    assert torch.count_nonzero(pruned_weights(model, callback.masks)) == 0
    state = trainer.optimizers[0].state
    params = dict(model.named_parameters())
    for name, mask in callback.masks.items():
        buf = state[params[name]]["momentum_buffer"]
        assert torch.count_nonzero(buf[~mask.to(buf.device)]) == 0, name
