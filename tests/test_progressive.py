"""Schedules, FORCE resurrection, Iterative SNIP monotonicity, recorded steps and saliency."""

from __future__ import annotations

import pytest
import torch
from conftest import batches, conv_net
from torch import nn

from pruning_lightning.errors import ConfigError
from pruning_lightning.pruning import PruningConfig, force_saliency, kept_schedule, run_pruning


def test_kept_schedule_hand_values():
    # exp: 1000 * 0.1 ** 0.5 = 316.23 -> 316; final exactly round(0.1 * 1000)
    assert kept_schedule(1000, 0.1, 2, "exp") == [316, 100]
    assert kept_schedule(1000, 0.1, 3, "linear") == [700, 400, 100]
    # halves round to even (Python's round): 10 * 0.5 = 5 -> 5, 10 * 0.25 = 2.5 -> 2
    assert kept_schedule(10, 0.25, 2, "exp") == [5, 2]
    assert kept_schedule(10, 0.25, 1, "exp") == [2]
    assert kept_schedule(7, 0.5, 1, "linear") == [4]  # 3.5 -> 4 (even)
    assert kept_schedule(50, 1.0, 3, "exp") == [50, 50, 50]
    with pytest.raises(ConfigError, match="Choose one of: exp, linear"):
        kept_schedule(10, 0.5, 2, "cosine")


@pytest.mark.parametrize("method", ["force", "iter_snip", "synflow"])
@pytest.mark.parametrize("schedule", ["exp", "linear"])
def test_recorded_counts_follow_the_schedule(method, schedule):
    net, total, steps, sparsity = conv_net(), 162 + 324 + 96, 7, 0.97
    res = run_pruning(
        net,
        batches(3),
        PruningConfig(method, sparsity, steps=steps, schedule=schedule),
        record=True,
    )
    d = 1 - sparsity
    expected = [
        round(total * (d ** (t / steps) if schedule == "exp" else 1 - t * (1 - d) / steps))
        for t in range(1, steps + 1)
    ]
    expected[-1] = round(d * total)
    assert [sum(r.kept.values()) for r in res.steps] == expected
    assert [r.step for r in res.steps] == list(range(1, steps + 1))
    assert sum(int(m.sum()) for m in res.masks.values()) == round(d * total)
    assert res.steps[-1].kept == {n: int(m.sum()) for n, m in res.masks.items()}
    previous = total
    for r in res.steps:  # kept_t = kept_{t-1} - pruned + recovered
        assert sum(r.kept.values()) == previous - r.pruned + r.recovered
        previous = sum(r.kept.values())
    if method != "force":
        assert all(r.recovered == 0 for r in res.steps)


def test_iter_snip_never_resurrects_and_recording_does_not_change_the_mask():
    net, data = conv_net(1), batches(5, 1)
    plain = run_pruning(net, data, PruningConfig("iter_snip", 0.95, steps=6)).masks
    res = run_pruning(net, data, PruningConfig("iter_snip", 0.95, steps=6), record=True)
    assert all(r.recovered == 0 for r in res.steps)
    assert all(r.pruned > 0 for r in res.steps)
    assert all(torch.equal(plain[n], res.masks[n]) for n in res.masks)


def resurrection_case():
    """W = [[a, b], [c, d]] = [[1, 1], [1, 0.1]], x = (1, 1), y = (2, 0), L = 0.5 ||Wx - y||^2.

    dL/dW[i, j] = r_i x_j with r = Wx - y. Dense: r = (0, 1.1): scores a, b = 0; c = 1.1,
    d = 0.11. With N = 4, sparsity 0.75, T = 2 (exp): k = (2, 1). Step 1 keeps c, d. Step 2 at
    w = (0, 0, 1, 0.1): r = (-2, 1.1): a, b = 2 (pruned, scored anyway), c = 1.1, d = 0.11. FORCE
    keeps a (tie with b: the earlier wins): resurrected. Iterative SNIP ranks only c, d: keeps c.
    """
    net = nn.Sequential(nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 1.0], [1.0, 0.1]]))
    data = [(torch.tensor([[1.0, 1.0]]), torch.tensor([[2.0, 0.0]]))]

    def loss(out, target):
        return 0.5 * ((out - target) ** 2).sum()

    return net, data, loss


def test_force_resurrects_a_pruned_weight():
    net, data, loss = resurrection_case()
    step1 = run_pruning(net, data, PruningConfig("snip", 0.5), loss_fn=loss).masks["0.weight"]
    assert step1.tolist() == [[False, False], [True, True]]  # m_1 of the T = 2 run
    force = run_pruning(net, data, PruningConfig("force", 0.75, steps=2), loss_fn=loss, record=True)
    assert force.masks["0.weight"].tolist() == [[True, False], [False, False]]
    assert [(r.pruned, r.recovered) for r in force.steps] == [(2, 0), (2, 1)]
    # saliency: S(m_1) = 1.1 + 0.11 at r = (-2, 1.1); S(m_2) = |1 * (1 - 2)| = 1
    assert force.steps[0].saliency == pytest.approx(1.21)
    assert force.steps[1].saliency == pytest.approx(1.0)

    it = run_pruning(
        net, data, PruningConfig("iter_snip", 0.75, steps=2), loss_fn=loss, record=True
    )
    assert it.masks["0.weight"].tolist() == [[False, False], [True, False]]
    assert [(r.pruned, r.recovered) for r in it.steps] == [(2, 0), (1, 0)]


def test_force_saliency_views_by_hand():
    net, data, loss = resurrection_case()
    m1 = {"0.weight": torch.tensor([[False, False], [True, True]])}
    # at w = (0, 0, 1, 0.1): |theta0 * g| = a 2, b 2, c 1.1, d 0.11
    assert force_saliency(net, m1, data, loss_fn=loss) == pytest.approx(1.21)
    assert force_saliency(net, m1, data, view="sparsification", loss_fn=loss) == pytest.approx(5.21)
    dense = {"0.weight": torch.ones(2, 2, dtype=torch.bool)}
    # dense: r = (0, 1.1): 0 + 0 + 1.1 + 0.11, the same in both views
    for view in ("pruning", "sparsification"):
        assert force_saliency(net, dense, data, view=view, loss_fn=loss) == pytest.approx(1.21)
    with pytest.raises(ConfigError, match="Choose one of: pruning, sparsification"):
        force_saliency(net, m1, data, view="both", loss_fn=loss)


def test_recorded_saliency_matches_force_saliency():
    net, data = conv_net(2), batches(1, 2)  # one batch: every step sees the same data
    res = run_pruning(net, data, PruningConfig("force", 0.9, steps=3), record=True)
    final = force_saliency(net, res.masks, data)
    assert res.steps[-1].saliency == pytest.approx(final, rel=1e-5)
    snip = run_pruning(net, data, PruningConfig("snip", 0.9), record=True)
    assert snip.steps[0].saliency == pytest.approx(force_saliency(net, snip.masks, data), rel=1e-5)
    assert all(r.saliency is not None and r.saliency >= 0 for r in res.steps)
    # m_1 keeps 46% of the weights, connected by a wide margin: its saliency cannot be 0 (a
    # later mask of one seed might be disconnected, S = 0, on another machine's rounding)
    assert res.steps[0].saliency > 0
    assert run_pruning(net, data, PruningConfig("force", 0.9, steps=3)).steps == []


def test_each_pass_over_a_distributed_sampler_gets_a_new_shuffle():
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    from pruning_lightning.pruning.batches import BatchStream

    dataset = TensorDataset(torch.arange(8.0), torch.arange(8))
    sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=3)
    stream = BatchStream(DataLoader(dataset, batch_size=4, sampler=sampler), torch.device("cpu"))
    # T x num_batches = 6 batches of a 2-batch epoch: three passes, like DistributedSampler
    # epochs 0, 1, 2 (without set_epoch every pass would repeat the order of the first)
    drawn = [y.tolist() for _, y in stream.take(6)]
    passes = [sum(drawn[i : i + 2], []) for i in (0, 2, 4)]
    expected = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        expected.append(list(sampler))
    assert passes == expected
    assert passes[0] != passes[1] != passes[2]
    assert stream.passes == 3
