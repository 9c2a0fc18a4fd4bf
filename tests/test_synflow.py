"""SynFlow scores the linearised network: every activation the identity, max-pool selecting.

R is the l1 path norm of the network with |weights| on the all-ones input, each max-pool window
passing on only its maximum at that point (see docs/METHODS.md, SynFlow). The tests check that
definition on a tiny network path by path, that it covers every backbone the project ships, and
that it keeps MobileNetV2 (ReLU6) connected where the clipped pass cut it.
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pruning_lightning.models import BACKBONES, build_backbone
from pruning_lightning.pruning import compute_masks
from pruning_lightning.pruning.connectivity import has_input_output_path
from pruning_lightning.pruning.criteria import LinearActivations, synflow_scores


class Relu6Call(nn.Module):
    """An activation called as a function in ``forward``, not as a module of its own."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(x)


class PoolNet(nn.Module):
    """conv3x3 (pad 1, 1 -> 2 channels) -> activation -> 2x2 max-pool -> Linear(8 -> 3)."""

    def __init__(self, act: nn.Module, scale: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
        self.act = act
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(8, 3, bias=False)
        gen = torch.Generator().manual_seed(0)
        signs = lambda n: torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)  # noqa: E731
        with torch.no_grad():
            self.conv.weight.copy_(
                (scale * (0.5 + torch.rand(18, generator=gen)) * signs(18)).view(2, 1, 3, 3)
            )
            self.fc.weight.copy_(((0.5 + torch.rand(24, generator=gen)) * signs(24)).view(3, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.act(self.conv(x))).flatten(1))


def explicit_path_norm(net: PoolNet) -> tuple[float, torch.Tensor, torch.Tensor]:
    """R and each weight's share (the sum over the input-output paths through it of the product
    of |weights|), path by path, on the 1x4x4 all-ones input; a max-pool window passes on only
    its largest unit (the conv output at the all-ones input, before the identity activation)."""
    wc = net.conv.weight.detach().double().abs()[:, 0]  # (2, 3, 3)
    wf = net.fc.weight.detach().double().abs()  # (3, 8)
    taps = lambda i, j: [  # noqa: E731 - the (a, b) of the taps that see the input at (i, j)
        (a, b)
        for a, b in itertools.product(range(3), repeat=2)
        if 0 <= i + a - 1 < 4 and 0 <= j + b - 1 < 4
    ]
    value = {
        (c, i, j): sum(float(wc[c, a, b]) for a, b in taps(i, j))
        for c in range(2) for i in range(4) for j in range(4)
    }  # fmt: skip
    r, conv_share, fc_share = 0.0, torch.zeros_like(wc), torch.zeros_like(wf)
    for c, pi, pj in itertools.product(range(2), range(2), range(2)):
        window = [(c, 2 * pi + di, 2 * pj + dj) for di in range(2) for dj in range(2)]
        best = max(window, key=value.__getitem__)
        assert sum(value[u] == value[best] for u in window) == 1, "a tie would make R ambiguous"
        unit = c * 4 + pi * 2 + pj  # position in flatten(1) of the (2, 2, 2) pooled map
        for o, (a, b) in itertools.product(range(3), taps(*best[1:])):
            path = float(wf[o, unit] * wc[c, a, b])
            r += path
            conv_share[c, a, b] += path
            fc_share[o, unit] += path
    return r, conv_share.unsqueeze(1), fc_share


@pytest.mark.parametrize(
    "act, scale",
    [
        (nn.ReLU6(inplace=True), 1.0),  # the interior units reach ~9: clipped at 6 unless linear
        (Relu6Call(), 1.0),
        (nn.Hardswish(), 0.1),  # units ~0.9, where these curve
        (nn.SiLU(), 0.1),
        (nn.GELU(), 0.1),
    ],
    ids=["ReLU6", "F.relu6", "Hardswish", "SiLU", "GELU"],
)
def test_synflow_objective_is_the_explicit_path_norm(act, scale):
    net = PoolNet(act, scale)
    r, conv_share, fc_share = explicit_path_norm(net)
    scores = synflow_scores(net, (1, 4, 4))
    assert torch.allclose(scores["conv.weight"], conv_share, rtol=1e-12, atol=0)
    assert torch.allclose(scores["fc.weight"], fc_share, rtol=1e-12, atol=0)
    # conservation: each layer cuts every path, so its scores sum to R
    for name in scores:
        assert float(scores[name].sum()) == pytest.approx(r, rel=1e-12)


def test_linear_activations_leave_other_ops_alone():
    x = torch.linspace(-8, 8, 17, dtype=torch.float64)
    with LinearActivations():
        assert torch.equal(F.relu6(x), x) and torch.equal(torch.relu(x), x)
        assert torch.equal(x.clone().relu_(), x) and torch.equal(F.hardswish(x), x)
        assert torch.equal(F.leaky_relu(x, 0.1), x) and torch.equal(nn.ELU()(x), x)
        assert torch.equal(torch.sigmoid(x), 1 / (1 + torch.exp(-x)))  # a gate, not linearised
        assert torch.equal(F.max_pool1d(x.view(1, 1, -1), 2), x[1::2].view(1, 1, -1))
    assert torch.equal(F.relu(x), x.clamp(min=0))  # the mode ends with the block


def strip_activations(model: nn.Module) -> nn.Module:
    """A copy with every torch.nn activation module swapped for nn.Identity, by hand."""
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child).__module__ == "torch.nn.modules.activation":
                setattr(parent, name, nn.Identity())
    return model


LINEAR_MODULES = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.AdaptiveAvgPool2d, nn.Flatten)
EVAL_IDENTITY = (nn.Identity, nn.Dropout)  # SynFlow runs in eval mode
CONTAINERS = ("pruning_lightning.models.", "torchvision.models.", "torch.nn.modules.container")


def test_every_backbone_module_is_linear_linearised_or_max_pool():
    """Audit of what every shipped backbone is made of (built on the meta device: no memory).

    Every activation module must be the identity under LinearActivations, whatever its
    arguments (in-place included); max-pool is the one non-linear module left, by definition.
    A backbone with another kind of module (a sigmoid gate, a new activation) fails here.
    """
    x = torch.linspace(-8, 8, 17, dtype=torch.float64)
    for name in BACKBONES:
        with torch.device("meta"):
            net = build_backbone(name, 10, image_size=32)
        for path, module in net.named_modules():
            where = f"{name}: {path} ({type(module).__name__})"
            if isinstance(module, (*LINEAR_MODULES, *EVAL_IDENTITY, nn.MaxPool2d)):
                continue
            if type(module).__module__ == "torch.nn.modules.activation":
                act = copy.deepcopy(module).to_empty(device="cpu")
                with LinearActivations():
                    assert torch.equal(act(x.clone()), x), f"{where} is not linearised"
                continue
            assert type(module).__module__.startswith(CONTAINERS), f"{where}: unknown module"


# One backbone of each family (CIFAR basic-block ResNet, VGG with max-pools, MobileNetV2 with
# ReLU6, torchvision's ResNet with its stem max-pool); the others repeat their blocks (audit above).
@pytest.mark.parametrize("name", ["resnet18", "vgg16", "mobilenetv2", "resnet18_imagenet"])
def test_backbones_are_scored_with_their_activations_removed(name):
    """The automatic linearisation equals the network with its activations removed by hand."""
    torch.manual_seed(0)
    width = None if name.endswith("_imagenet") else 4
    size = 32 if name.endswith("_imagenet") else 8
    net = build_backbone(name, 10, image_size=size, width=width)
    got = synflow_scores(net, (3, size, size))
    want = synflow_scores(strip_activations(net), (3, size, size))
    assert all(torch.allclose(got[n], want[n], rtol=1e-9, atol=0) for n in want)


@pytest.mark.parametrize("sparsity", [0.9, 0.99])
def test_synflow_keeps_mobilenetv2_connected(sparsity):
    """The clipped pass kept no classifier weight at 80% already; linearised, it stays connected
    (SynFlow is data-free and float64, so this is deterministic; connectivity holds with margin)."""
    torch.manual_seed(0)
    net = build_backbone("mobilenetv2", 10, image_size=8, width=8)
    masks = compute_masks(net, None, "synflow", sparsity, steps=10, input_shape=(3, 8, 8))
    assert int(masks["classifier.weight"].sum()) > 0
    assert has_input_output_path(net, masks, (3, 8, 8))
