"""PruningCallback: the mask is computed once, enforced through training, checkpointed, logged."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import OPTIMIZERS, fit, pruned_weights, tiny_model
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pruning_lightning import compute_masks
from pruning_lightning.callback import PruningCallback
from pruning_lightning.data import DigitsDataModule
from pruning_lightning.errors import ConfigError
from pruning_lightning.pruning.connectivity import effective_masks
from pruning_lightning.pruning.masks import prunable_parameters
from pruning_lightning.pruning.saliency import force_saliency_views


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


class ZeroProbe(pl.Callback):
    """After every optimizer step: the largest |pruned weight| and |optimizer state| seen."""

    def __init__(self, pruning: PruningCallback) -> None:
        self.pruning = pruning
        self.weights: list[float] = []
        self.state: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.pruning.masks is None:
            return
        params = dict(pl_module.named_parameters())
        worst_weight, worst_state = 0.0, 0.0
        for name, mask in self.pruning.masks.items():
            pruned = ~mask.to(params[name].device)
            weight = torch.where(pruned, params[name].detach(), 0)
            worst_weight = max(worst_weight, weight.abs().max().item())
            for value in trainer.optimizers[0].state.get(params[name], {}).values():
                if isinstance(value, torch.Tensor) and value.shape == mask.shape:
                    worst_state = max(worst_state, torch.where(pruned, value, 0).abs().max().item())
        self.weights.append(worst_weight)
        self.state.append(worst_state)


def test_any_optimizer_gets_pruned_weights_re_zeroed_after_its_step(tmp_path):
    callback = PruningCallback(method="snip", sparsity=0.8)
    probe = ZeroProbe(callback)
    _, model = fit(
        tmp_path, callback, tiny_model(lambda p: NoisySGD(p, lr=0.1)), callbacks=[callback, probe]
    )
    assert len(probe.weights) == 4 and max(probe.weights) == 0.0  # after every single step
    assert torch.count_nonzero(pruned_weights(model, callback.masks)) == 0


class InfGradient(pl.Callback):
    """Sets every pruned entry's gradient to +inf after each backward."""

    def __init__(self, pruning: PruningCallback) -> None:
        self.pruning = pruning

    def on_after_backward(self, trainer, pl_module) -> None:
        params = dict(pl_module.named_parameters())
        for name, mask in self.pruning.masks.items():
            params[name].grad[~mask] = float("inf")


def test_masking_is_nan_safe_with_inf_gradients_and_adam_eps_zero(tmp_path):
    callback = PruningCallback(method="snip", sparsity=0.8)
    probe = ZeroProbe(callback)
    model = tiny_model(lambda p: torch.optim.Adam(p, lr=1e-2, eps=0.0))
    trainer, model = fit(
        tmp_path, callback, model, callbacks=[callback, InfGradient(callback), probe]
    )
    # inf * 0 and 0 / (0 + eps=0) are NaN: a multiply would leave NaN in the pruned entries
    assert probe.weights == [0.0] * 4 and probe.state == [0.0] * 4
    assert torch.count_nonzero(pruned_weights(model, callback.masks)) == 0
    params = dict(model.named_parameters())
    for name, mask in callback.masks.items():
        assert torch.isfinite(params[name].detach()[mask.cpu()]).all(), name


def test_resuming_a_dense_checkpoint_into_a_pruned_run_stays_pruned(tmp_path):
    dense = PruningCallback(sparsity=0.0)
    trainer, _ = fit(tmp_path / "dense", dense, max_epochs=2)
    ckpt = Path(trainer.checkpoint_callback.best_model_path)
    assert ckpt.is_file()

    callback = PruningCallback(method="snip", sparsity=0.8)
    probe = ZeroProbe(callback)
    trainer, model = fit(
        tmp_path / "pruned", callback, ckpt_path=ckpt, max_epochs=4, callbacks=[callback, probe]
    )
    # the restored momentum is dense: without zeroing it the first step moves pruned weights
    assert len(probe.weights) == 8 and max(probe.weights) == 0.0
    assert max(probe.state) == 0.0
    assert trainer.callback_metrics["val/sparsity"] == pytest.approx(0.8, abs=1e-4)


def test_weight_averaging_cannot_bring_pruned_weights_back(tmp_path):
    from lightning.pytorch.callbacks import WeightAveraging
    from torch.optim.swa_utils import get_ema_multi_avg_fn

    # early pruning: the average has seen dense weights before the mask existed
    callback = PruningCallback(method="magnitude", sparsity=0.6, prune_after_steps=2)
    ema = WeightAveraging(multi_avg_fn=get_ema_multi_avg_fn(0.9))
    trainer, model = fit(tmp_path, callback, callbacks=[ema, callback], limit_train_batches=5)
    assert trainer.callback_metrics["val/sparsity"] == pytest.approx(0.6, abs=1e-4)
    assert torch.count_nonzero(pruned_weights(model, callback.masks)) == 0
    state = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=True)
    for name, mask in callback.masks.items():
        assert torch.count_nonzero(state["state_dict"][name][~mask.cpu()]) == 0, name


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
    seen = {}

    class Snapshot(pl.Callback):  # the weights at the start of the third step, before pruning
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 2:
                seen.update({k: v.detach().clone() for k, v in pl_module.named_parameters()})

    initial = {k: v.detach().clone() for k, v in tiny_model().named_parameters()}
    trainer, model = fit(
        tmp_path, callback, limit_train_batches=5, callbacks=[Snapshot(), callback]
    )
    assert callback.masks is not None
    # the mask is the magnitude mask of the weights after two dense steps, not of theta_init
    assert all(not torch.equal(seen[n], initial[n]) for n in callback.masks)  # they moved
    trained = tiny_model()
    trained.load_state_dict({**trained.state_dict(), **seen})
    expected = compute_masks(trained, None, "magnitude", 0.5)
    assert all(torch.equal(callback.masks[n].cpu(), expected[n]) for n in expected)
    assert torch.count_nonzero(pruned_weights(model, callback.masks)) == 0
    optimizer_state = trainer.optimizers[0].state
    params = dict(model.named_parameters())
    for name, mask in callback.masks.items():
        buf = optimizer_state[params[name]]["momentum_buffer"]
        assert torch.count_nonzero(buf[~mask]) == 0


def test_logs_per_layer_sparsity_figure_and_summary(tmp_path, caplog):
    callback = PruningCallback(method="force", sparsity=0.9, steps=3)
    with caplog.at_level("INFO"):
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
    # effective sparsity: the same effective masks as computed directly on the model, per layer
    # and globally, in pruning.json and as a scalar
    effective = effective_masks(model, callback.masks, (1, 8, 8))
    for name, layer in summary["layers"].items():
        assert layer["effective"] == int(effective[name].sum()) <= layer["kept"], name
    total = sum(layer["total"] for layer in summary["layers"].values())
    kept_on_path = sum(int(e.sum()) for e in effective.values())
    assert summary["effective_sparsity"] == pytest.approx(1 - kept_on_path / total)
    assert summary["effective_sparsity"] >= summary["global_sparsity"]
    line = f"(sparsity 90.0000%, effective {summary['effective_sparsity']:.4%})"
    assert line in caplog.text
    logged = events.Scalars("pruning/effective_sparsity")[0].value
    assert logged == pytest.approx(summary["effective_sparsity"], abs=1e-6)


def test_force_saliency_views_are_measured_on_the_dense_theta0(tmp_path):
    model = tiny_model()
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    callback = PruningCallback(method="force", sparsity=0.9, steps=3)
    plain = DigitsDataModule(batch_size=32, augment=False)  # the first batch is reproducible
    trainer, model = fit(tmp_path, callback, model=model, datamodule=plain)
    saliency = json.loads((Path(trainer.log_dir) / "pruning.json").read_text())["force_saliency"]
    # the sparsification view adds the pruned weights' |theta0 * g|: zero if theta0 was zeroed
    # (the pruning view is 0 if the mask disconnects the network, which one seed's FORCE mask
    # may do on another CPU's rounding; the pruned weights' gradients vanish only if no
    # activation reaches them at all: at 90% FORCE keeps >= 27 of the stem's 36, seeds 0-3)
    assert 0 <= saliency["pruning"] < saliency["sparsification"]

    # the same numbers from an untouched copy of the initial model, on the first saliency batch
    dense = tiny_model()
    dense.load_state_dict({**dense.state_dict(), **theta0})
    batch = next(iter(callback._saliency_data(trainer)))
    expected = force_saliency_views(dense, callback.masks, [batch])
    assert saliency == pytest.approx(expected, rel=1e-4)


def test_mixed_precision_runs_the_saliency_passes_under_autocast(tmp_path, monkeypatch):
    import pruning_lightning.callback as callback_module

    seen = []  # the amp_dtype of each mask computation
    passes: list[tuple[bool, torch.dtype]] = []  # (autocast on, Linear output dtype) per forward
    real = callback_module.run_pruning

    def spy(*args, **kwargs):
        seen.append(args[2].amp_dtype)
        passes.clear()
        model = args[0]
        classifier = model.backbone.classifier if hasattr(model, "backbone") else model.classifier

        def hook(module, inputs, output):
            passes.append((torch.is_autocast_enabled("cpu"), output.dtype))

        handle = classifier.register_forward_hook(hook)  # the saliency passes' forwards only
        try:
            return real(*args, **kwargs)
        finally:
            handle.remove()

    monkeypatch.setattr(callback_module, "run_pruning", spy)
    fit(tmp_path / "bf16", PruningCallback(method="snip", sparsity=0.5), precision="bf16-mixed")
    # the callback runs outside Lightning's training-step autocast: only the engine's own
    # autocast can make the classifier compute in bfloat16
    assert passes and all(p == (True, torch.bfloat16) for p in passes), passes
    fit(tmp_path / "fp32", PruningCallback(method="snip", sparsity=0.5))
    assert passes and all(p == (False, torch.float32) for p in passes), passes
    assert seen == [torch.bfloat16, None]


def test_prunes_from_plain_train_dataloaders_without_a_datamodule(tmp_path):
    data = DigitsDataModule(batch_size=32)
    data.setup("fit")
    callback = PruningCallback(method="snip", sparsity=0.8)
    pl.seed_everything(0)
    trainer = pl.Trainer(
        default_root_dir=tmp_path, max_epochs=1, limit_train_batches=2, accelerator="cpu",
        enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
    )  # fmt: skip
    model = tiny_model()
    trainer.fit(model, train_dataloaders=data.train_dataloader())
    assert trainer.global_step == 2  # the loader built early is the one training used
    kept = sum(int(m.sum()) for m in callback.masks.values())
    total = sum(m.numel() for m in callback.masks.values())
    assert kept == round(0.2 * total)
    assert torch.count_nonzero(pruned_weights(model, callback.masks)) == 0


def test_saliency_loader_yields_full_batches_only(tmp_path):
    callback = PruningCallback(method="snip", sparsity=0.5)
    trainer, _ = fit(tmp_path, callback)
    sizes = {len(y) for _, y in callback._saliency_data(trainer)}
    assert sizes == {32}  # 1437 * 0.9 training digits: a short last batch is never scored


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
    garbage = tmp_path / "garbage.pt"
    garbage.write_text("garbage\n")
    with pytest.raises(ConfigError) as info:
        fit(tmp_path / "g", PruningCallback(masks_path=str(garbage)))
    assert str(info.value) == (
        f"--pruning.masks_path {str(garbage)!r} is not a mask file. Point it at a file written "
        "by --pruning.save_masks_path."
    )
    path = tmp_path / "wrong.pt"
    torch.save({"backbone.conv1.weight": torch.ones(3, 3, dtype=torch.bool)}, path)
    with pytest.raises(ConfigError):
        fit(tmp_path, PruningCallback(masks_path=str(path)))


def test_one_shot_method_ignores_a_configs_steps():
    # a config written for FORCE (steps: 10) must still run when only the method changes
    with pytest.warns(UserWarning, match="one-shot: it ignores --pruning.steps 10"):
        callback = PruningCallback(method="snip", sparsity=0.5, steps=10)
    assert callback.config.steps == 1
    assert PruningCallback(method="synflow", sparsity=0.5, steps=10).config.steps == 10


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"method": "snap"}, "Unknown pruning method"),
        ({"sparsity": 1.0}, r"\[0, 1\)"),
        ({"sparsity": -0.1}, r"\[0, 1\)"),
        ({"steps": 0}, "steps"),
        ({"num_batches": 0}, "num_batches"),
        ({"schedule": "cosine"}, "schedule"),
        ({"prune_after_steps": 2, "prune_after_epochs": 1}, "only one"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        PruningCallback(**kwargs)
