"""The per-step hook: bit-packed step masks (round trip, one bit per weight per step) and the
warning at the first step whose FORCE saliency is zero (a toy criterion that removes the output
layer at step 2, where S(m_2) = 0 exactly)."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from conftest import batches, conv_net, fit, tiny_model
from torch import nn

from pruning_lightning.callback import PruningCallback
from pruning_lightning.errors import ConfigError
from pruning_lightning.pruning import Criterion, PruningConfig, register, run_pruning
from pruning_lightning.pruning.criteria import gradient_score
from pruning_lightning.pruning.registry import unregister
from pruning_lightning.pruning.step_masks import (
    STEP_MASKS,
    StepMaskWriter,
    load_step_masks,
    pack_bits,
)

ZERO_WARNING = "FORCE saliency of the mask reached 0"


def collapse_score(ctx):
    """FORCE's scores, but the last prunable tensor ranks first at step 1 (kept whole) and last
    from step 2 on (removed whole once k_2 fits in the other tensors): S(m_1) > 0, S(m_2) = 0."""
    force = gradient_score(ctx)

    def step(t, prev, views):
        saliency = force(t, prev, views)  # S(m_{t-1}), before the last tensor's scores change
        views[-1].fill_(1e30 if t == 1 else -1.0)  # every other score is >= 0
        return saliency

    return step


@pytest.fixture
def collapse():
    register(Criterion("collapse", collapse_score, "Collapse", "#010203", default_steps=3,
                       progressive=True, force_saliency_score=True))  # fmt: skip
    try:
        yield "collapse"
    finally:
        unregister("collapse")


def two_layer_net(seed: int = 0) -> nn.Sequential:
    """Flatten, Linear(64, 3), Linear(3, 10), no biases: ``1.weight`` (192), ``2.weight`` (30).
    Without the output layer the logits are exactly 0 and no gradient reaches ``1.weight``."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3, bias=False), nn.Linear(3, 10, bias=False))


def digit_batches(n: int, seed: int = 0):
    return batches(n, seed, image_shape=(1, 8, 8), num_classes=10)


class Events:
    """A step hook keeping copies of what it is shown (the event's tensors are loop buffers)."""

    def __init__(self):
        self.steps, self.masks, self.kept, self.saliency = [], [], [], []

    def __call__(self, event):
        self.steps.append(event.step)
        self.masks.append({n: m.clone() for n, m in event.masks.items()})
        self.kept.append(dict(event.kept))
        self.saliency.append(event.saliency)
        assert torch.equal(event.flat, torch.cat([m.reshape(-1) for m in event.masks.values()]))


# -- the hook in the engine ------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["force", "iter_snip", "synflow"])
def test_every_step_is_reported_once_in_order_with_its_record(method):
    net, steps = conv_net(), 5
    before = {k: v.clone() for k, v in net.state_dict().items()}
    events = Events()
    res = run_pruning(
        net, batches(8), PruningConfig(method, 0.9, steps=steps), record=True, on_step=events
    )
    assert events.steps == list(range(1, steps + 1))
    assert events.kept == [r.kept for r in res.steps]
    assert events.saliency == [r.saliency for r in res.steps]
    assert all(m.dtype == torch.bool for masks in events.masks for m in masks.values())
    for masks, r in zip(events.masks, res.steps, strict=True):
        assert {n: int(m.sum()) for n, m in masks.items()} == r.kept
    assert all(torch.equal(events.masks[-1][n], m) for n, m in res.masks.items())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


@pytest.mark.parametrize("method", ["force", "iter_snip"])
def test_the_hook_sees_the_same_masks_with_and_without_recording(method):
    # without recording FORCE keeps one mask buffer that m_t overwrites: the hook must read m_t
    # before step t+1's selection does
    config = PruningConfig(method, 0.95, steps=6)
    plain, recorded = Events(), Events()
    run_pruning(conv_net(1), batches(8, 1), config, on_step=plain)
    run_pruning(conv_net(1), batches(8, 1), config, record=True, on_step=recorded)
    assert plain.steps == recorded.steps == list(range(1, 7))
    assert plain.kept == recorded.kept
    assert all(s is None for s in plain.saliency)
    for a, b in zip(plain.masks, recorded.masks, strict=True):
        assert all(torch.equal(a[n], b[n]) for n in a)


def test_a_step_hook_that_is_not_callable_is_refused():
    with pytest.raises(ConfigError, match="on_step must be None or a callable"):
        run_pruning(conv_net(), batches(2), PruningConfig("snip", 0.5), on_step=3)


def test_the_event_at_the_collapse_has_zero_saliency_and_names_the_layer(collapse):
    for seed in range(3):
        events = Events()
        res = run_pruning(
            two_layer_net(seed),
            digit_batches(8, seed),
            PruningConfig(collapse, 0.5, steps=3, seed=seed),
            record=True,
            on_step=events,
        )
        assert [k["2.weight"] for k in events.kept] == [30, 0, 0]  # whole, then gone
        assert events.saliency[0] > 0  # a kept output layer and kept inputs carry a gradient
        assert events.saliency[1:] == [0.0, 0.0]
        assert [r.saliency for r in res.steps] == events.saliency


# -- bit-packed step masks -------------------------------------------------------------------------


def test_pack_bits_is_numpys_packbits():
    gen = torch.Generator().manual_seed(0)
    for n in (1, 7, 8, 9, 63, 1000):
        flat = torch.rand(n, generator=gen) < 0.3
        assert np.array_equal(pack_bits(flat).numpy(), np.packbits(flat.numpy()))
        assert pack_bits(flat).dtype == torch.uint8


@pytest.mark.parametrize("method", ["force", "iter_snip"])
def test_step_masks_round_trip_and_cost_one_bit_per_weight_per_step(tmp_path, method):
    net, steps = conv_net(2), 7
    writer, events = StepMaskWriter(), Events()

    def both(event):
        writer(event)
        events(event)

    res = run_pruning(
        net, batches(10, 2), PruningConfig(method, 0.97, steps=steps), record=True, on_step=both
    )
    path = tmp_path / STEP_MASKS
    writer.save(path)
    loaded = load_step_masks(path)
    assert len(loaded) == steps
    for got, want in zip(loaded, events.masks, strict=True):
        assert list(got) == list(want)
        assert all(g.dtype == torch.bool and torch.equal(g, want[n]) for n, g in got.items())
    assert all(torch.equal(loaded[-1][n], m) for n, m in res.masks.items())  # no ablation
    if method == "iter_snip":  # ranks only the kept weights: every mask inside the previous one
        for a, b in zip(loaded, loaded[1:], strict=False):
            assert all(bool((b[n] <= a[n]).all()) for n in a)
    total = sum(m.numel() for m in res.masks.values())
    assert path.stat().st_size <= steps * math.ceil(total / 8) + 2048
    # what the bound means: the same file for 50x the weights grows by the packed bytes only
    big = StepMaskWriter()
    for t in range(1, steps + 1):
        big(
            _event(
                t, {"w": torch.rand(50 * total, generator=torch.Generator().manual_seed(t)) < 0.5}
            )
        )
    big.save(tmp_path / "big.pt")
    assert (tmp_path / "big.pt").stat().st_size <= steps * math.ceil(50 * total / 8) + 2048


def test_the_last_step_mask_is_the_methods_own_under_a_mask_ablation(tmp_path):
    writer = StepMaskWriter()
    config = PruningConfig("force", 0.9, steps=3, ablation="shuffle")
    res = run_pruning(conv_net(), batches(6), config, record=True, on_step=writer)
    writer.save(tmp_path / STEP_MASKS)
    last = load_step_masks(tmp_path / STEP_MASKS)[-1]
    assert res.unablated is not None
    assert all(torch.equal(last[n], m) for n, m in res.unablated.items())
    assert not all(torch.equal(last[n], m) for n, m in res.masks.items())  # shuffled positions


def test_a_record_with_a_non_integer_zero_step_is_refused():
    from pruning_lightning.record import RunRecord

    good = {"method": "force", "sparsity": 0.5, "layers": {"w": {"kept": 1, "total": 2}}}
    assert RunRecord.from_dict({**good, "saliency_zero_step": 3}).saliency_zero_step == 3
    assert RunRecord.from_dict(good).step_masks is None
    with pytest.raises(ValueError, match="'saliency_zero_step' is not an integer"):
        RunRecord.from_dict({**good, "saliency_zero_step": "3"})


def _event(t, masks):
    from pruning_lightning.pruning.progressive import StepEvent

    flat = torch.cat([m.reshape(-1) for m in masks.values()])
    kept = {n: int(m.sum()) for n, m in masks.items()}
    return StepEvent(step=t, flat=flat, masks=masks, kept=kept, saliency=None)


def test_a_foreign_file_is_not_read_as_step_masks(tmp_path):
    torch.save({"0.weight": torch.ones(3, dtype=torch.bool)}, tmp_path / "mask.pt")
    for path in (tmp_path / "mask.pt", tmp_path / "missing.pt"):
        with pytest.raises(ConfigError, match="is not a step-mask file") as err:
            load_step_masks(path)
        assert "\n" not in str(err.value)


# -- the callback ----------------------------------------------------------------------------------


def test_the_callback_saves_the_step_masks_in_the_log_dir(tmp_path):
    callback = PruningCallback(method="force", sparsity=0.9, steps=3, save_step_masks=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer, _ = fit(tmp_path, callback)
    record = json.loads((tmp_path / "lightning_logs/version_0/pruning.json").read_text())
    assert record["step_masks"] == STEP_MASKS == callback.record.step_masks
    loaded = load_step_masks(f"{trainer.log_dir}/{STEP_MASKS}")
    assert [{n: int(m.sum()) for n, m in masks.items()} for masks in loaded] == [
        h["kept"] for h in record["history"]
    ]
    assert all(torch.equal(loaded[-1][n], m.cpu()) for n, m in callback.masks.items())
    # the warning fires iff a recorded saliency is zero (none is, at 90% of a width-4 ResNet)
    zero = [h["step"] for h in record["history"] if h["saliency"] == 0]
    assert record["saliency_zero_step"] == (zero[0] if zero else None)
    assert any(ZERO_WARNING in str(w.message) for w in caught) == bool(zero)


def test_without_the_option_nothing_is_saved(tmp_path):
    callback = PruningCallback(method="force", sparsity=0.5, steps=2)
    trainer, _ = fit(tmp_path, callback)
    assert callback.record.step_masks is None
    assert not (tmp_path / "lightning_logs/version_0" / STEP_MASKS).exists()


def test_the_callback_warns_at_the_step_the_saliency_reaches_zero(tmp_path, collapse):
    callback = PruningCallback(method=collapse, sparsity=0.5, steps=3)
    model = tiny_model()
    model.backbone = two_layer_net()
    with pytest.warns(UserWarning, match=ZERO_WARNING) as caught:
        fit(tmp_path, callback, model=model)
    messages = [str(w.message) for w in caught if ZERO_WARNING in str(w.message)]
    assert len(messages) == 1  # once, though S(m_3) is zero too
    assert "at step 2 of 3" in messages[0]
    assert "Layers already gone: backbone.2.weight." in messages[0]
    assert callback.record.saliency_zero_step == 2
    record = json.loads((tmp_path / "lightning_logs/version_0/pruning.json").read_text())
    assert record["saliency_zero_step"] == 2
    assert [h["saliency"] == 0 for h in record["history"]] == [False, True, True]


def test_step_masks_of_a_loaded_mask_are_refused(tmp_path):
    path = tmp_path / "mask.pt"
    torch.save({}, path)
    with pytest.raises(ConfigError, match="drop one of them"):
        PruningCallback(masks_path=str(path), save_step_masks=True)
