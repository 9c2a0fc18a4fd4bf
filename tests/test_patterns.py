"""include/exclude patterns: one that matches no prunable tensor is an error, never ignored."""

from __future__ import annotations

import pytest
import torch
from conftest import batches, conv_net, tiny_model

from pruning_lightning.errors import ConfigError
from pruning_lightning.models import build_backbone
from pruning_lightning.pruning import compute_masks, prunable_parameters


def backbone() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_backbone("resnet18", 10, image_size=8, width=4)


def test_readme_pattern_on_a_bare_backbone_names_what_it_could_match():
    """README's ``*.classifier.weight`` is meant for the LightningModule (``backbone.…``)."""
    with pytest.raises(ConfigError) as err:
        compute_masks(backbone(), None, "magnitude", 0.9, exclude=["*.classifier.weight"])
    message = str(err.value)
    assert "\n" not in message
    assert "exclude pattern '*.classifier.weight' matches no prunable layer" in message
    assert "conv1.weight, layer1.0.conv1.weight" in message  # the first names, in model order
    assert "nearest: classifier.weight" in message


@pytest.mark.parametrize(
    "select, bad",
    [
        ({"include": ["0.*", "nothing.*"]}, "include pattern 'nothing.*'"),
        ({"exclude": ["8.weight", "9.*"]}, "exclude pattern '9.*'"),
        ({"exclude": ["*.bias"]}, "exclude pattern '*.bias'"),  # a parameter, never prunable
        ({"include": "8.weight*"}, None),  # one string is one pattern, and it matches
        ({"include": "weight"}, "include pattern 'weight'"),  # fnmatch: the whole name
    ],
)
def test_a_pattern_that_matches_nothing_is_an_error(select, bad):
    net = conv_net()
    if bad is None:
        assert list(prunable_parameters(net, **select)) == ["8.weight"]
        return
    with pytest.raises(ConfigError, match="matches no prunable layer") as err:
        prunable_parameters(net, **select)
    assert bad in str(err.value)


def test_the_error_reaches_the_engine_before_any_scoring():
    with pytest.raises(ConfigError, match="include pattern 'layer9.*'"):
        compute_masks(conv_net(), batches(1), "snip", 0.5, include=["layer9.*", "0.*"])


def test_patterns_that_match_still_narrow_the_set():
    net = conv_net()
    assert list(prunable_parameters(net, include=["0.*", "8.*"], exclude=["0.*"])) == ["8.weight"]
    # on the LightningModule the backbone's names start with "backbone.": the README's pattern
    module = tiny_model()
    names = list(prunable_parameters(module, exclude=["*.classifier.weight"]))
    assert "backbone.classifier.weight" not in names and "backbone.conv1.weight" in names
