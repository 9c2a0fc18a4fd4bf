"""Backbones: shapes, published parameter counts, layer structure, initialisation, arg checks."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

from pruning_lightning.errors import ConfigError
from pruning_lightning.models import BACKBONES, MIN_IMAGE_SIZE, build_backbone, init_weights
from pruning_lightning.models.mobilenet import InvertedResidual

NAMES = ["resnet18", "resnet34", "resnet50", "resnet110", "vgg16", "vgg19", "mobilenetv2"]
# Tiny widths for forward passes (the published ones: 64, 64, 64, 16, 64, 64, 32).
SMALL_WIDTH = {n: 4 for n in NAMES} | {"resnet110": 2}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def on_meta(fn, *args, **kwargs) -> nn.Module:
    """Build without allocating or drawing weights: parameter counts need only the shapes."""
    with torch.device("meta"):
        return fn(*args, **kwargs)


def test_registry_has_the_promised_names():
    # the torchvision ImageNet networks are tested in test_imagenet.py
    imagenet = ["resnet18_imagenet", "resnet50_imagenet", "vgg16_bn_imagenet", "vgg19_bn_imagenet"]
    assert list(BACKBONES) == NAMES + imagenet
    assert set(MIN_IMAGE_SIZE) == set(BACKBONES)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    ("in_channels", "size", "classes"),
    [(3, 32, 10), (3, 64, 200), (1, 8, 10)],  # CIFAR, Tiny ImageNet, the quickstart's digits
)
def test_logits_shape_and_every_weight_is_used(name, in_channels, size, classes):
    torch.manual_seed(0)
    model = build_backbone(name, classes, in_channels, size, width=SMALL_WIDTH[name])
    logits = model(torch.randn(2, in_channels, size, size))
    assert logits.shape == (2, classes)
    assert torch.isfinite(logits).all()
    # Every prunable tensor is on the path to the logits (no dead shortcut or unused layer).
    logits.square().sum().backward()
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            assert m.weight.grad is not None and m.weight.grad.abs().sum() > 0


# --- parameter counts at the published widths, 10 classes ------------------------------------
# torchvision's ImageNet ResNets differ from the CIFAR ones only in the stem: 7x7 instead of 3x3
# conv from 3 to 64 channels (and a stride / max-pool, which hold no parameters).
STEM_DIFF = 3 * 64 * (7 * 7 - 3 * 3)


def test_resnet18_count():
    # 11,173,962: kuangliu/pytorch-cifar's ResNet18, the usual CIFAR ResNet-18 figure.
    n = n_params(on_meta(build_backbone, "resnet18", 10))
    assert n == 11_173_962
    assert n == n_params(on_meta(torchvision.models.resnet18, num_classes=10)) - STEM_DIFF


def test_resnet50_count():
    # 23,520,842: the CIFAR ResNet-50 of kuangliu/pytorch-cifar and of the FORCE code.
    n = n_params(on_meta(build_backbone, "resnet50", 10))
    assert n == 23_520_842
    assert n == n_params(on_meta(torchvision.models.resnet50, num_classes=10)) - STEM_DIFF


def test_resnet110_count():
    # He et al. 2016, Table 6: "1.7M" for ResNet-110 (zero-padding shortcuts). Hand count with
    # our two 1x1 projection shortcuts (16->32, 32->64), convs without bias, BN with 2 per channel:
    def basic(cin, cout):
        return 9 * cin * cout + 9 * cout * cout + 2 * 2 * cout

    def project(cin, cout):
        return cin * cout + 2 * cout

    expected = (
        9 * 3 * 16 + 2 * 16  # stem
        + 18 * basic(16, 16)
        + basic(16, 32) + project(16, 32) + 17 * basic(32, 32)
        + basic(32, 64) + project(32, 64) + 17 * basic(64, 64)
        + 64 * 10 + 10  # classifier
    )  # fmt: skip
    n = n_params(on_meta(build_backbone, "resnet110", 10))
    assert n == expected
    assert abs(n - 1.7e6) < 0.05e6  # the paper rounds to 0.1M


def test_vgg19_count():
    # 20,040,522 is the usual CIFAR VGG-19-BN figure (kuangliu/pytorch-cifar): torchvision's
    # vgg19_bn feature extractor + Linear(512, 10). Those convs carry a bias before BN; ours do
    # not, so we have exactly the conv biases (one per output channel) fewer.
    tv_features = on_meta(torchvision.models.vgg19_bn).features
    conv_biases = sum(c.out_channels for c in convs(tv_features))
    assert conv_biases == 2 * 64 + 2 * 128 + 4 * 256 + 8 * 512
    n = n_params(on_meta(build_backbone, "vgg19", 10))
    assert n == n_params(tv_features) - conv_biases + 512 * 10 + 10
    assert abs(n - 20_040_522) / 20_040_522 < 0.001


def test_mobilenetv2_count():
    # torchvision's MobileNetV2 has 3,504,872 parameters with 1000 classes (its model card); the
    # CIFAR variant changes only strides, so with 10 classes it has 3,504,872 - 1280 * 990 - 990.
    n = n_params(on_meta(build_backbone, "mobilenetv2", 10))
    assert n == 3_504_872 - 1280 * 990 - 990
    assert n == n_params(on_meta(torchvision.models.mobilenet_v2, num_classes=10))
    assert 2.2e6 <= n <= 2.3e6


# --- structure ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "n_convs"),
    [
        ("resnet18", 1 + 8 * 2 + 3),  # stem, 8 blocks x 2, projections at stages 2-4
        ("resnet34", 1 + 16 * 2 + 3),
        ("resnet50", 1 + 16 * 3 + 4),  # stage 1 projects too: 64 -> 256 channels
        ("resnet110", 1 + 54 * 2 + 2),
        ("vgg16", 13),
        ("vgg19", 16),
        ("mobilenetv2", 1 + 2 + 16 * 3 + 1),  # stem, first block has no expansion, last 1x1
    ],
)
def test_layer_structure(name, n_convs):
    model = on_meta(build_backbone, name, 10, width=SMALL_WIDTH[name])
    assert len(convs(model)) == n_convs
    assert all(c.bias is None for c in convs(model))
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears == [model.classifier] and model.classifier.bias is not None
    # No module reused in two places: pruning would otherwise tie their masks.
    assert len(list(model.named_modules(remove_duplicate=False))) == len(list(model.modules()))
    if name.startswith("resnet"):
        assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
        assert convs(model)[0].kernel_size == (3, 3) and convs(model)[0].stride == (1, 1)


@pytest.mark.parametrize(
    ("name", "reference"),
    [
        ("resnet18", torchvision.models.resnet18),
        ("resnet50", torchvision.models.resnet50),
        ("vgg16", torchvision.models.vgg16_bn),
        ("vgg19", torchvision.models.vgg19_bn),
        ("mobilenetv2", torchvision.models.mobilenet_v2),
    ],
)
def test_conv_shapes_match_torchvision(name, reference):
    ours = [c.weight.shape for c in convs(on_meta(build_backbone, name, 10))]
    theirs = [c.weight.shape for c in convs(on_meta(reference))]
    if name.startswith("resnet"):  # the stem: 3x3 here, 7x7 there
        assert ours[0] == (64, 3, 3, 3) and theirs[0] == (64, 3, 7, 7)
        ours, theirs = ours[1:], theirs[1:]
    assert ours == theirs


@pytest.mark.parametrize(
    ("name", "width", "features"),
    [
        ("resnet18", 8, 64),  # 8 * width
        ("resnet50", 8, 256),  # 8 * width * expansion 4
        ("resnet110", 4, 16),  # 4 * width
        ("vgg19", 8, 64),  # 8 * width
        ("mobilenetv2", 8, 320),  # 1280 * width / 32
    ],
)
def test_width_scales_the_network(name, width, features):
    model = on_meta(build_backbone, name, 10, width=width)
    assert model.classifier.in_features == features
    assert convs(model)[0].out_channels == width


def test_mobilenetv2_strides_and_residuals():
    model = on_meta(build_backbone, "mobilenetv2", 10)
    stride2 = [c for c in convs(model) if c.stride == (2, 2)]
    assert len(stride2) == 3  # stages 3, 4 and 6: 32x32 -> 4x4
    assert all(c.groups == c.in_channels == c.out_channels for c in stride2)  # depthwise
    blocks = [m for m in model.modules() if isinstance(m, InvertedResidual)]
    assert len(blocks) == 17
    # Identity residual on every block but the first of each stage (n-1 summed over stages).
    assert sum(b.use_residual for b in blocks) == 0 + 1 + 2 + 3 + 2 + 2 + 0


@pytest.mark.parametrize(("size", "pools"), [(64, 5), (32, 5), (8, 3), (3, 1), (1, 0)])
def test_vgg_drops_maxpools_on_1x1_maps(size, pools):
    model = build_backbone("vgg16", 10, 1, size, width=2)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == pools
    assert model(torch.randn(2, 1, size, size)).shape == (2, 10)


@pytest.mark.parametrize("name", NAMES)
def test_min_image_size(name):
    size = MIN_IMAGE_SIZE[name]
    model = build_backbone(name, 10, 1, size, width=SMALL_WIDTH[name])
    seen = []

    def record(module, inputs, output):
        seen.append(inputs[0].shape[-1])

    for m in model.modules():
        if isinstance(m, nn.MaxPool2d) or (isinstance(m, nn.Conv2d) and m.stride == (2, 2)):
            m.register_forward_hook(record)
    model(torch.randn(2, 1, size, size))
    assert all(s >= 2 for s in seen)  # every downsampling step gets a map it can halve
    if size > 1:
        with pytest.raises(ConfigError, match=f"at least {size}x{size}"):
            build_backbone(name, 10, 1, size - 1)


# --- initialisation ----------------------------------------------------------------------------
def test_init_weights_kaiming_normal_fan_in():
    torch.manual_seed(0)
    conv = nn.Conv2d(256, 64, 3, bias=True)  # fan_in != fan_out, to tell the modes apart
    linear = nn.Linear(2048, 256)
    bn = nn.BatchNorm2d(8)
    nn.init.normal_(bn.weight)
    nn.init.normal_(bn.bias)
    for m in (conv, linear, bn):
        init_weights(m)
    for m, fan_in in ((conv, 256 * 9), (linear, 2048)):
        # PyTorch's default init has std 1/sqrt(3 fan_in), 2.45x smaller: 3% tolerance suffices.
        assert m.weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.03)
        assert abs(m.weight.mean().item()) < 0.01 * math.sqrt(2 / fan_in)  # >100k samples
        # normal, not uniform (kaiming_uniform_ has the same std but no tail beyond 1.73 std)
        tail = (m.weight.abs() > 2 * math.sqrt(2 / fan_in)).float().mean().item()
        assert tail == pytest.approx(0.0455, abs=0.006)
        assert torch.equal(m.bias, torch.zeros_like(m.bias))
    assert torch.equal(bn.weight, torch.ones(8)) and torch.equal(bn.bias, torch.zeros(8))


def test_builders_apply_the_init():
    torch.manual_seed(0)
    model = build_backbone("resnet18", 10)
    big = convs(model)[-2]  # last 3x3 conv of stage 4
    assert big.weight.shape == (512, 512, 3, 3)
    assert big.weight.std().item() == pytest.approx(math.sqrt(2 / (512 * 9)), rel=0.01)
    assert model.classifier.weight.std().item() == pytest.approx(math.sqrt(2 / 512), rel=0.05)
    assert torch.equal(model.classifier.bias, torch.zeros(10))
    # Depthwise convs: fan_in is 9 per output channel.
    mobile = build_backbone("mobilenetv2", 10)
    depthwise = max((c for c in convs(mobile) if c.groups > 1), key=lambda c: c.weight.numel())
    assert depthwise.weight.std().item() == pytest.approx(math.sqrt(2 / 9), rel=0.05)
    for m in list(model.modules()) + list(mobile.modules()):
        if isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight))
            assert torch.equal(m.bias, torch.zeros_like(m.bias))


@pytest.mark.parametrize("name", NAMES)
def test_seeded_builds_are_bit_identical(name):
    def build(seed):
        torch.manual_seed(seed)
        return build_backbone(name, 10, width=SMALL_WIDTH[name]).state_dict()

    a, b, c = build(0), build(0), build(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["classifier.weight"], c["classifier.weight"])


# --- argument checks ---------------------------------------------------------------------------
def test_unknown_backbone_names_the_choices():
    with pytest.raises(ConfigError, match="Unknown backbone 'resnet51'. Choose one of: ") as e:
        build_backbone("resnet51", 10)
    assert all(n in str(e.value) for n in NAMES)
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 1}, "num_classes must be an integer >= 2"),
        ({"num_classes": 2.5}, "num_classes must be an integer >= 2"),
        ({"in_channels": 0}, "in_channels must be an integer >= 1"),
        ({"image_size": 0}, "image_size must be an integer >= 1"),
        ({"width": 0}, "width must be an integer >= 1"),
        ({"image_size": 4}, "too small for resnet18.*at least 8x8.*resnet110, vgg16, vgg19"),
    ],
)
def test_bad_arguments(kwargs, message):
    args = {"name": "resnet18", "num_classes": 10} | kwargs
    with pytest.raises(ConfigError, match=message):
        build_backbone(**args)
