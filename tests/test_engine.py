"""run_pruning / compute_masks: determinism, an untouched model, data handling, hooks, errors."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import batches, conv_net
from torch import nn

from pruning_lightning import ConfigError, compute_masks
from pruning_lightning.pruning import PruningConfig, PruningResult, method_names, run_pruning

METHODS = method_names()

STEPS = {"force": 3, "iter_snip": 3, "synflow": 3, "grasp_it": 3, "ntk_sap": 3}
# uniform_plus keeps conv_net's first layer (162 of 582 weights) dense: 90% is beyond its budget
SPARSITY = {"uniform_plus": 0.6}


# conv_net(dropout=True) (from conftest): prunable 0.weight, 4.weight, 9.weight
TOTAL = 162 + 324 + 96


def prune(net, data, method, sparsity=None, record=False, **kwargs) -> PruningResult:
    sparsity = SPARSITY.get(method, 0.9) if sparsity is None else sparsity
    kwargs.setdefault("steps", STEPS.get(method))
    run = {k: kwargs.pop(k) for k in ("loss_fn", "grad_reduce", "progress") if k in kwargs}
    return run_pruning(net, data, PruningConfig(method, sparsity, **kwargs), record=record, **run)


class Counting:
    """An iterable that counts iter() calls and the batches it hands out."""

    def __init__(self, items):
        self.items, self.iters, self.drawn = items, 0, []

    def __iter__(self):
        self.iters += 1
        for i, item in enumerate(self.items):
            self.drawn.append(i)
            yield item


# --- results ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_and_data_give_identical_masks(method):
    net, data = conv_net(dropout=True), batches(4)
    a, b = prune(net, data, method).masks, prune(net, data, method).masks
    assert list(a) == ["0.weight", "4.weight", "9.weight"]
    for name, p in net.named_parameters():
        if name in a:
            assert a[name].dtype == torch.bool and a[name].shape == p.shape
            assert torch.equal(a[name], b[name])
    assert sum(int(m.sum()) for m in a.values()) == round((1 - SPARSITY.get(method, 0.9)) * TOTAL)


@pytest.mark.parametrize("method", METHODS)
def test_sparsity_zero_keeps_everything(method):
    masks = prune(conv_net(dropout=True), batches(2), method, sparsity=0.0).masks
    assert all(m.all() for m in masks.values())


@pytest.mark.parametrize("method", METHODS)
def test_model_is_left_bit_identical(method):
    net = conv_net(dropout=True)
    net.eval()  # a mix of modes must come back as it was
    net[3].train()
    net[0].bias.requires_grad_(False)
    net[4].weight.grad = torch.full_like(net[4].weight, 0.25)
    grad_before = net[4].weight.grad
    calls = []
    handle = net[2].register_forward_hook(lambda *_: calls.append(1))
    net[9].weight.register_hook(lambda g: g)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    flags = [(n, p.requires_grad) for n, p in net.named_parameters()]
    modes = [m.training for m in net.modules()]
    hooks = [(dict(m._forward_hooks), dict(m._forward_pre_hooks)) for m in net.modules()]
    tensor_hooks = dict(net[9].weight._backward_hooks)
    rng = torch.get_rng_state()

    prune(net, batches(3), method)

    for k, v in net.state_dict().items():
        assert v.dtype == state[k].dtype and torch.equal(v, state[k]), k
    assert [(n, p.requires_grad) for n, p in net.named_parameters()] == flags
    assert [m.training for m in net.modules()] == modes
    assert [(dict(m._forward_hooks), dict(m._forward_pre_hooks)) for m in net.modules()] == hooks
    assert dict(net[9].weight._backward_hooks) == tensor_hooks
    assert net[4].weight.grad is grad_before and bool((grad_before == 0.25).all())
    assert all(p.grad is None for n, p in net.named_parameters() if n != "4.weight")
    assert torch.equal(torch.get_rng_state(), rng)
    handle.remove()


def test_seed_fixes_dropout_and_data_order():
    net = conv_net(dropout=True)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.randn(32, 3, 6, 6), torch.randint(0, 4, (32,))),
        batch_size=4,
        shuffle=True,
    )
    a = prune(net, loader, "force", seed=5).masks
    b = prune(net, loader, "force", seed=5).masks
    assert all(torch.equal(a[n], b[n]) for n in a)
    # the seed is what fixes them: another seed shuffles the data (and drops units) otherwise
    c = prune(net, loader, "force", seed=6).masks
    assert any(not torch.equal(a[n], c[n]) for n in a)
    # on fixed batches only dropout is random: the seed still decides the mask
    fixed = batches(3)
    d, e = prune(net, fixed, "snip", seed=1).masks, prune(net, fixed, "snip", seed=2).masks
    assert any(not torch.equal(d[n], e[n]) for n in d)
    assert all(torch.equal(d[n], m) for n, m in prune(net, fixed, "snip", seed=1).masks.items())


def test_result_fields_and_compute_masks():
    net, data = conv_net(dropout=True), batches(2)
    res = prune(net, data, "snip")
    assert res.seconds > 0 and res.steps == []
    masks = compute_masks(net, data, "snip", 0.9)
    assert all(torch.equal(masks[n], res.masks[n]) for n in masks)
    assert all(m.device == net[0].weight.device for m in masks.values())
    with pytest.raises(ConfigError, match="record"):
        compute_masks(net, data, "snip", 0.9, record=True)


def test_include_exclude_narrow_the_masks():
    net, data = conv_net(dropout=True), batches(2)
    masks = prune(net, data, "force", include=["0.*", "4.*"], exclude=["0.*"]).masks
    assert list(masks) == ["4.weight"]
    assert int(masks["4.weight"].sum()) == round(0.1 * 324)


def test_amp_bfloat16_runs_and_keeps_exact_counts():
    net, data = conv_net(dropout=True), batches(2)
    res = prune(net, data, "force", amp_dtype=torch.bfloat16, record=True)
    assert sum(int(m.sum()) for m in res.masks.values()) == round(0.1 * TOTAL)
    assert all(r.saliency is not None and math.isfinite(r.saliency) for r in res.steps)


# --- data -------------------------------------------------------------------------------------


def test_one_iterator_when_the_data_suffices():
    data = Counting(batches(10))
    prune(conv_net(dropout=True), data, "force", steps=5, num_batches=2)
    assert data.iters == 1 and data.drawn == list(range(10))


def test_iterator_cycles_only_when_exhausted():
    data = Counting(batches(3))
    prune(conv_net(dropout=True), data, "iter_snip", steps=5, num_batches=2, record=True)
    # 5 steps x 2 batches + 2 for the saliency of the last mask = 12 draws from 3 batches
    assert data.drawn == [0, 1, 2] * 4
    assert data.iters == 4


def test_generator_that_runs_out():
    gen = (b for b in batches(2))
    with pytest.raises(ConfigError, match="data yielded no batch after 2 batches"):
        prune(conv_net(dropout=True), gen, "force", steps=3)


@pytest.mark.parametrize("method", ["force", "grasp", "snip"])
def test_at_most_one_batch_on_the_device(monkeypatch, method):
    # stand-in for a GPU: every move to "the device" makes a copy whose lifetime we track;
    # when the net runs, only the batch it is running on may still be alive
    import weakref

    from pruning_lightning.pruning import batches as batch_module

    alive: list[weakref.ref] = []

    def to_device(batch, device):
        x, y = batch[0].clone(), batch[1].clone()
        alive.append(weakref.ref(x))
        return x, y

    monkeypatch.setattr(batch_module, "to_device", to_device)
    net = conv_net(dropout=True)
    on_device = []
    net.register_forward_pre_hook(
        lambda m, args: on_device.append(sum(r() is not None for r in alive))
    )
    steps = 3 if method == "force" else None
    prune(net, batches(8), method, steps=steps, num_batches=4, record=True)
    # + 4 for the recorded saliency of the final mask; GRASP passes twice over its 4 batches
    expected_moves = {"force": 3 * 4 + 4, "grasp": 2 * 4 + 4, "snip": 4 + 4}[method]
    assert len(alive) == expected_moves
    assert on_device and max(on_device) == 1


# --- hooks: grad_reduce, progress -------------------------------------------------------------


def test_grad_reduce_is_called_on_the_gradients():
    net, data = conv_net(dropout=True), batches(3)
    seen = []
    prune(net, data, "force", steps=3, grad_reduce=lambda g: seen.append([t.shape for t in g]))
    shapes = [
        p.shape for n, p in net.named_parameters() if n in ("0.weight", "4.weight", "9.weight")
    ]
    assert seen == [shapes] * 3
    seen.clear()
    prune(net, data, "grasp", grad_reduce=lambda g: seen.append(len(g)))
    assert seen == [3, 3]  # g, then Hg
    seen.clear()
    prune(net, data, "random", grad_reduce=lambda g: seen.append(len(g)))
    assert seen == []


@pytest.mark.parametrize("method", ["snip", "force", "grasp"])
def test_grad_reduce_changes_the_scores(method):
    """A reduce that inflates one layer's gradient makes that layer win: in-place edits count."""
    net, data = conv_net(dropout=True), batches(2)

    calls = []

    def boost(grads):  # GRASP keeps the smallest -theta0 * Hg: make layer 4's very negative
        calls.append(1)
        if method != "grasp":
            grads[1].mul_(1e6)
        elif len(calls) == 2:
            grads[1].copy_(net[4].weight.detach().sign() * 1e6)

    masks = prune(net, data, method, sparsity=0.4, grad_reduce=boost).masks
    plain = prune(net, data, method, sparsity=0.4).masks
    assert bool(masks["4.weight"].all())
    assert not bool(plain["4.weight"].all())


def test_progress_callable_and_bar():
    net, steps = conv_net(dropout=True), []
    prune(net, batches(2), "force", steps=4, progress=lambda t, n: steps.append((t, n)))
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
    prune(conv_net(dropout=True), batches(2), "force", steps=2, progress=True)


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (
            ("prune_it", 0.9),
            {},
            r"Unknown pruning method 'prune_it'\. Choose one of: force, iter_snip",
        ),
        (("snip", 1.0), {}, r"sparsity must be a number in \[0, 1\)"),
        (("snip", -0.1), {}, r"sparsity must be a number in \[0, 1\)"),
        (("snip", float("nan")), {}, r"sparsity must be a number in \[0, 1\)"),
        (("snip", True), {}, r"sparsity must be a number in \[0, 1\)"),
        (("force", 0.9), {"steps": 0}, r"steps must be an integer >= 1"),
        (
            ("snip", 0.9),
            {"steps": 5},
            r"steps=5 only applies to the progressive methods \(force, iter_snip, synflow",
        ),
        (("force", 0.9), {"schedule": "cos"}, r"Unknown schedule 'cos'\. Choose one of: exp"),
        (("snip", 0.9), {"num_batches": 0}, r"num_batches must be an integer >= 1"),
        (("grasp", 0.9), {"temperature": 0.0}, r"temperature must be a positive number"),
        (("snip", 0.9), {"amp_dtype": torch.float32}, r"amp_dtype must be None, torch.float16"),
        (("snip", 0.9), {"progress": "yes"}, r"progress must be True/False or a callable"),
        (("synflow", 0.9), {"input_shape": (3, 0)}, r"input_shape must be the shape"),
    ],
)
def test_bad_arguments(args, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        compute_masks(conv_net(dropout=True), batches(1), *args, **kwargs)


def test_run_pruning_takes_a_config_and_compute_masks_only_known_options():
    with pytest.raises(ConfigError, match="run_pruning takes a PruningConfig"):
        run_pruning(conv_net(dropout=True), batches(1), "snip")
    with pytest.raises(ConfigError, match="unknown option"):
        compute_masks(conv_net(dropout=True), batches(1), "snip", 0.9, stpes=3)
    with pytest.raises(ConfigError, match=r"use run_pruning\(record=True\)"):
        compute_masks(conv_net(dropout=True), batches(1), "snip", 0.9, record=True)


def test_config_is_frozen_and_resolves_the_default_steps():
    config = PruningConfig("force", 0.9, include=["*.weight"])
    assert config.steps == 60 and config.include == ("*.weight",)
    assert PruningConfig("synflow", 0.9).steps == 100 and PruningConfig("snip", 0.9).steps == 1
    with pytest.raises(AttributeError):
        config.sparsity = 0.5


def test_bad_data():
    with pytest.raises(ConfigError, match="method 'snip' needs data"):
        run_pruning(conv_net(dropout=True), None, PruningConfig("snip", 0.9))
    with pytest.raises(ConfigError, match="synflow without data needs input_shape"):
        run_pruning(conv_net(dropout=True), None, PruningConfig("synflow", 0.9))
    with pytest.raises(ConfigError, match="data yielded no batch: pass a non-empty"):
        run_pruning(conv_net(dropout=True), [], PruningConfig("snip", 0.9))
    with pytest.raises(ConfigError, match=r"\(inputs, targets\) pairs"):
        run_pruning(conv_net(dropout=True), [torch.randn(2, 3, 6, 6)], PruningConfig("snip", 0.9))


def test_no_prunable_tensor():
    with pytest.raises(ConfigError, match="no prunable layer"):
        run_pruning(nn.Sequential(nn.BatchNorm2d(3)), batches(1), PruningConfig("snip", 0.9))


@pytest.mark.parametrize("method", ["snip", "grasp", "force", "magnitude", "synflow", "grasp_it"])
def test_non_finite_scores(method):
    net = conv_net(dropout=True)
    with torch.no_grad():
        net[4].weight[0, 0, 0, 0] = float("inf")
    with pytest.raises(ConfigError, match=f"{method} produced non-finite scores"):
        prune(net, batches(1), method)
