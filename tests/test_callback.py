"""PruningCallback: the mask is computed once, enforced through training, checkpointed, logged."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import pruning_lightning.pruning.callback as callback_module
from pruning_lightning.classifier import ImageClassifier
from pruning_lightning.data import DigitsDataModule
from pruning_lightning.errors import ConfigError
from pruning_lightning.pruning.callback import PruningCallback
from pruning_lightning.pruning.masks import prunable_parameters


def tiny_model(optimizer=None) -> ImageClassifier:
    kwargs = {} if optimizer is None else {"optimizer": optimizer}
    return ImageClassifier(
        "resnet18",
        num_classes=10,
        in_channels=1,
        image_size=8,
        width=4,
        lr_scheduler=None,
        **kwargs,
    )


def fit(tmp_path: Path, callback: PruningCallback, model=None, ckpt_path=None, **trainer_kwargs):
    pl.seed_everything(0)
    model = model or tiny_model()
    defaults = dict(
        default_root_dir=tmp_path,
        max_epochs=1,
        limit_train_batches=4,
        limit_val_batches=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
        log_every_n_steps=1,
    )
    trainer = pl.Trainer(callbacks=[callback], **{**defaults, **trainer_kwargs})
    trainer.fit(model, DigitsDataModule(batch_size=32), ckpt_path=ckpt_path)
    return trainer, model


def pruned_weights(model: ImageClassifier, masks: dict[str, torch.Tensor]) -> torch.Tensor:
    params = dict(model.named_parameters())
    # after fit Lightning moves the model back to the CPU; masks stay where they were made
    return torch.cat([params[n].detach()[~m.to(params[n].device)] for n, m in masks.items()])


OPTIMIZERS = {
    "sgd_momentum_wd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
}


@pytest.mark.parametrize(
    "optimizer, trainer_kwargs",
    [
        ("sgd_momentum_wd", {}),
        ("adam", {}),
        ("adamw", {"accumulate_grad_batches": 2}),
        ("sgd_momentum_wd", {"gradient_clip_val": 0.5}),
        ("adam", {"precision": "bf16-mixed"}),
    ],
)
def test_pruned_weights_and_optimizer_state_stay_zero(tmp_path, optimizer, trainer_kwargs):
    callback = PruningCallback(method="snip", sparsity=0.8)
    model = tiny_model(OPTIMIZERS[optimizer])
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer, model = fit(tmp_path, callback, model, **trainer_kwargs)

    masks = callback.masks
    params = dict(model.named_parameters())
    assert set(masks) == set(prunable_parameters(model))
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    assert kept == round(0.2 * total)
    assert torch.count_nonzero(pruned_weights(model, masks)) == 0
    # optimizer state (momentum, Adam moments) of pruned weights is exactly zero too
    optimizer_state = trainer.optimizers[0].state
    for name, mask in masks.items():
        for value in optimizer_state[params[name]].values():
            if isinstance(value, torch.Tensor) and value.shape == mask.shape:
                assert torch.count_nonzero(value[~mask]) == 0, name
    # the kept weights did train
    changed = [not torch.equal(params[n].detach()[m], initial[n][m]) for n, m in masks.items()]
    assert all(changed)


class NoisySGD(torch.optim.SGD):
    """An optimizer that moves every weight, gradient or not: only re-zeroing can keep the mask."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = super().step(closure)
        for group in self.param_groups:
            for p in group["params"]:
                p.add_(torch.randn_like(p), alpha=1e-3)
        return loss


def test_any_optimizer_gets_pruned_weights_re_zeroed_after_its_step(tmp_path, monkeypatch):
    callback = PruningCallback(method="snip", sparsity=0.8)
    _, model = fit(tmp_path / "a", callback, tiny_model(lambda p: NoisySGD(p, lr=0.1)))
    assert torch.count_nonzero(pruned_weights(model, callback.masks)) == 0

    # Trusting this optimizer to preserve zeros (as SGD/Adam/AdamW do) would break the mask:
    # so the re-zeroing after the step is what holds it.
    monkeypatch.setattr(callback_module, "ZERO_PRESERVING_OPTIMIZERS", (NoisySGD,))
    trusting = PruningCallback(method="snip", sparsity=0.8)
    _, model = fit(tmp_path / "b", trusting, tiny_model(lambda p: NoisySGD(p, lr=0.1)))
    assert torch.count_nonzero(pruned_weights(model, trusting.masks)) > 0


def test_sparsity_zero_trains_dense(tmp_path):
    callback = PruningCallback(method="force", sparsity=0.0)
    _, model = fit(tmp_path, callback)
    assert callback.masks is None
    weights = torch.cat([p.detach().flatten() for p in prunable_parameters(model).values()])
    assert torch.count_nonzero(weights) == weights.numel()


def test_resume_keeps_the_mask_and_never_recomputes(tmp_path):
    first = PruningCallback(method="random", sparsity=0.9, seed=1)
    trainer, _ = fit(tmp_path, first, max_epochs=1)
    ckpt = Path(trainer.checkpoint_callback.best_model_path)
    assert ckpt.is_file()
    before = {n: m.clone() for n, m in first.masks.items()}

    # A different seed would give a different random mask if it were recomputed.
    second = PruningCallback(method="random", sparsity=0.9, seed=2)
    fresh = PruningCallback(method="random", sparsity=0.9, seed=2)
    _, other = fit(tmp_path / "other", fresh)
    assert any(not torch.equal(before[n], fresh.masks[n]) for n in before)

    _, model = fit(tmp_path, second, ckpt_path=ckpt, max_epochs=2)
    assert set(second.masks) == set(before)
    for name in before:
        assert torch.equal(second.masks[name].cpu(), before[name].cpu()), name
    assert torch.count_nonzero(pruned_weights(model, second.masks)) == 0


def test_saved_masks_round_trip(tmp_path):
    path = tmp_path / "mask.pt"
    first = PruningCallback(method="snip", sparsity=0.7, save_masks_path=str(path))
    fit(tmp_path / "a", first)
    saved = torch.load(path, weights_only=True)
    assert all(saved[n].dtype == torch.bool for n in saved)
    reuse = PruningCallback(masks_path=str(path))
    _, model = fit(tmp_path / "b", reuse)
    for name, mask in saved.items():
        assert torch.equal(reuse.masks[name].cpu(), mask)
    assert torch.count_nonzero(pruned_weights(model, saved)) == 0


def test_early_pruning_prunes_after_dense_steps(tmp_path):
    callback = PruningCallback(method="magnitude", sparsity=0.5, prune_after_steps=2)
    trainer, model = fit(tmp_path, callback, limit_train_batches=5)
    assert callback.masks is not None
    assert torch.count_nonzero(pruned_weights(model, callback.masks)) == 0
    optimizer_state = trainer.optimizers[0].state
    params = dict(model.named_parameters())
    for name, mask in callback.masks.items():
        buf = optimizer_state[params[name]]["momentum_buffer"]
        assert torch.count_nonzero(buf[~mask]) == 0


def test_logs_per_layer_sparsity_figure_and_summary(tmp_path):
    callback = PruningCallback(method="force", sparsity=0.9, steps=3)
    trainer, model = fit(tmp_path, callback)
    log_dir = Path(trainer.log_dir)
    events = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    names = list(prunable_parameters(model))
    assert "pruning/global_sparsity" in scalars
    assert {f"pruning/kept_fraction/{n}" for n in names} <= scalars
    assert {"pruning/step/pruned", "pruning/step/recovered"} <= scalars
    assert "pruning/kept_fraction_per_layer" in events.Tags()["images"]
    sparsity = events.Scalars("pruning/global_sparsity")[0].value
    assert sparsity == pytest.approx(0.9, abs=1e-4)

    summary = json.loads((log_dir / "pruning.json").read_text())
    assert summary["method"] == "force"
    assert [h["step"] for h in summary["history"]] == [1, 2, 3]
    assert sum(layer["kept"] for layer in summary["layers"].values()) == sum(
        int(m.sum()) for m in callback.masks.values()
    )
    assert (log_dir / "kept_fraction_per_layer.png").is_file()


def test_warns_about_layer_collapse_and_disconnection(tmp_path):
    callback = PruningCallback(method="magnitude", sparsity=0.5, exclude=["backbone.conv1.weight"])
    model = tiny_model()
    with torch.no_grad():
        model.backbone.classifier.weight.mul_(1e-6)  # magnitude pruning removes it entirely
    with pytest.warns(UserWarning, match="DISCONNECTED") as record:
        fit(tmp_path, callback, model=model)
    messages = [str(w.message) for w in record]
    assert any("Layer collapse" in m and "backbone.classifier.weight" in m for m in messages)


def test_collapse_inside_a_residual_branch_is_not_called_disconnected(tmp_path):
    callback = PruningCallback(method="magnitude", sparsity=0.3)
    model = tiny_model()
    with torch.no_grad():
        model.backbone.layer1[0].conv1.weight.mul_(1e-6)  # a whole residual-branch conv goes
    with pytest.warns(UserWarning, match="Layer collapse") as record:
        fit(tmp_path, callback, model=model)
    messages = [str(w.message) for w in record]
    assert any("still survives" in m for m in messages)
    assert not any("DISCONNECTED" in m for m in messages)


def test_bad_masks_path(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        PruningCallback(masks_path=str(tmp_path / "missing.pt"))
    path = tmp_path / "wrong.pt"
    torch.save({"backbone.conv1.weight": torch.ones(3, 3, dtype=torch.bool)}, path)
    with pytest.raises(ConfigError):
        fit(tmp_path, PruningCallback(masks_path=str(path)))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"method": "snap"}, "Unknown pruning method"),
        ({"sparsity": 1.0}, r"\[0, 1\)"),
        ({"sparsity": -0.1}, r"\[0, 1\)"),
        ({"method": "snip", "steps": 10}, "one-shot"),
        ({"steps": 0}, "steps"),
        ({"num_batches": 0}, "num_batches"),
        ({"schedule": "cosine"}, "schedule"),
        ({"prune_after_steps": 2, "prune_after_epochs": 1}, "only one"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        PruningCallback(**kwargs)
