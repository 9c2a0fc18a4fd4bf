"""Effective masks: the kept weights on at least one input-output path, on networks whose answer
is known by hand (or by boolean matrix products for random MLPs)."""

from __future__ import annotations

import pytest
import torch
from test_masks import full_masks, residual_net
from torch import nn

from pruning_lightning.models import build_backbone
from pruning_lightning.pruning import effective_masks, prunable_parameters


def b(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.bool)


def test_mlp_dead_ends_and_unfed_units_are_not_effective():
    net = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    # hidden 0 <- in 0, hidden 1 <- in 1, hidden 2 fed by nothing
    first = b([[1, 0, 0], [0, 1, 0], [0, 0, 0]])
    second = b([[1, 0, 1], [0, 0, 0]])  # out 0 <- hidden 0 and hidden 2; hidden 1 leads nowhere
    eff = effective_masks(net, {"0.weight": first, "2.weight": second}, (3,))
    assert torch.equal(eff["0.weight"], b([[1, 0, 0], [0, 0, 0], [0, 0, 0]]))
    # hidden 2 carries its bias, a constant, not the input: its outgoing weight is off every path
    assert torch.equal(eff["2.weight"], b([[1, 0, 0], [0, 0, 0]]))


def brute_force(masks: list[torch.Tensor]) -> list[torch.Tensor]:
    """Effective masks of a ReLU MLP by boolean reachability, layer by layer."""
    forward = [torch.ones(masks[0].shape[1], dtype=torch.bool)]
    for m in masks:
        forward.append((m & forward[-1][None, :]).any(1))
    backward = [torch.ones(masks[-1].shape[0], dtype=torch.bool)]
    for m in reversed(masks):
        backward.insert(0, (m & backward[0][:, None]).any(0))
    return [m & forward[i][None, :] & backward[i + 1][:, None] for i, m in enumerate(masks)]


@pytest.mark.parametrize("seed", range(8))
def test_random_mlps_match_boolean_reachability(seed):
    torch.manual_seed(seed)
    sizes = [6, 7, 5, 7, 4]
    layers = []
    for a, c in zip(sizes, sizes[1:], strict=False):
        layers += [nn.Linear(a, c), nn.ReLU()]
    net = nn.Sequential(*layers[:-1])
    density = [0.15, 0.3, 0.5][seed % 3]
    masks = [torch.rand(c, a) < density for a, c in zip(sizes, sizes[1:], strict=False)]
    names = [f"{2 * i}.weight" for i in range(len(masks))]
    eff = effective_masks(net, dict(zip(names, masks, strict=True)), (sizes[0],))
    for name, expected in zip(names, brute_force(masks), strict=True):
        assert torch.equal(eff[name], expected), name


def test_identity_shortcut_carries_the_input_past_a_dead_branch():
    net = residual_net()  # stem conv, block (conv_a, bn, conv_b) + identity, pool, linear
    state = {k: v.clone() for k, v in net.state_dict().items()}
    masks = full_masks(net)
    masks["3.conv_a.weight"][:] = False
    eff = effective_masks(net, masks, (3, 8, 8))
    assert eff["0.weight"].all() and eff["6.weight"].all()  # the shortcut keeps them on a path
    assert not eff["3.conv_b.weight"].any()  # reads only conv_a's constant output
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    assert not any(m._forward_hooks for m in net.modules())


def test_padding_only_taps_are_off_every_path_at_the_trained_size():
    # 3x3 convs on a 1x1 map: the eight outer taps only ever multiply zero padding
    net = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 3, padding=1), nn.Flatten()
    )
    eff = effective_masks(net, full_masks(net), (1, 1, 1))
    centre = torch.zeros(3, 3, dtype=torch.bool)
    centre[1, 1] = True
    for name in ("0.weight", "2.weight"):
        assert torch.equal(eff[name], centre.expand_as(eff[name])), name


def test_every_input_of_a_max_pool_window_is_on_a_path():
    # a 1x3 conv over two positions: the left tap reaches the input only at position 1, the right
    # tap only at position 0; max-pooling the two must not favour one (its gradient would)
    net = nn.Sequential(
        nn.Conv2d(1, 1, (1, 3), padding=(0, 1), bias=False),
        nn.ReLU(),
        nn.MaxPool2d((1, 2)),
        nn.Flatten(),
        nn.Linear(1, 1),
    )
    eff = effective_masks(net, full_masks(net), (1, 1, 2))
    assert eff["0.weight"].all() and eff["4.weight"].all()


def test_disconnected_mask_has_no_effective_weight():
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    masks = {"0.weight": b([[1, 1], [1, 1]]), "2.weight": b([[0, 0], [0, 0]])}
    eff = effective_masks(net, masks, (2,))
    assert not eff["0.weight"].any() and not eff["2.weight"].any()


@pytest.mark.parametrize("name", ["resnet18", "vgg16", "mobilenetv2"])
def test_backbones_effective_is_a_subset_and_full_masks_lose_only_padding(name):
    torch.manual_seed(0)
    net = build_backbone(name, 10, width=4)
    masks = full_masks(net)
    eff = effective_masks(net, masks, (3, 32, 32))
    assert eff.keys() == masks.keys()
    # dense at 32x32: every weight is on a path except taps that only see padding in the last
    # stages (VGG's and MobileNet's 2x2 / 1x1 maps), never a whole tensor
    for n in masks:
        assert eff[n].any(), n
    torch.manual_seed(1)
    sparse = {n: torch.rand(p.shape) < 0.02 for n, p in prunable_parameters(net).items()}
    eff = effective_masks(net, sparse, (3, 32, 32))
    for n, m in sparse.items():
        assert not (eff[n] & ~m).any(), n
    assert sum(int(e.sum()) for e in eff.values()) < sum(int(m.sum()) for m in sparse.values())


def test_backfill_rewrites_the_effective_fields_of_a_finished_run(tmp_path, capsys):
    import json
    from pathlib import Path

    from conftest import fit

    from pruning_lightning.analysis.backfill import main
    from pruning_lightning.callback import PruningCallback

    trainer, _ = fit(tmp_path, PruningCallback(method="snip", sparsity=0.97))
    log_dir = Path(trainer.log_dir)
    written = json.loads((log_dir / "pruning.json").read_text())
    stripped = {**written, "layers": {k: dict(v) for k, v in written["layers"].items()}}
    del stripped["effective_sparsity"]
    for layer in stripped["layers"].values():
        del layer["effective"]
    (log_dir / "pruning.json").write_text(json.dumps(stripped))
    assert main([str(tmp_path)]) == 0
    assert json.loads((log_dir / "pruning.json").read_text()) == written
    assert f"effective {written['effective_sparsity']:.4%}" in capsys.readouterr().out

    for ckpt in (log_dir / "checkpoints").glob("*.ckpt"):
        ckpt.unlink()
    assert main([str(tmp_path)]) == 2
    assert "needs both pruning.json and a checkpoint" in capsys.readouterr().err
