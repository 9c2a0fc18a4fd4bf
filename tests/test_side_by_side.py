"""benchmarks/side_by_side_layerwise.py against the authors' repositories, when fetched: set
RIGL_REPO, SMART_RATIO_REPO, FORCE_REPO (checkouts or git directories); skipped otherwise."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "side_by_side_layerwise.py"


def script():
    spec = importlib.util.spec_from_file_location("side_by_side_layerwise", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def repo(var: str) -> Path:
    path = os.environ.get(var)
    if not path or not Path(path).exists():
        pytest.skip(f"{var} not set to a fetched repository")
    return Path(path)


def test_erdos_renyi_densities_equal_rigls():
    sbs = script()
    for sparsity in (0.9, 0.99):
        assert (
            sbs.compare_erdos_renyi(sbs.checkout(repo("RIGL_REPO")), sbs.tiny_net(), sparsity)
            < 1e-12
        )


def test_smart_ratio_counts_within_one_of_theirs():
    sbs = script()
    assert sbs.compare_smart_ratio(sbs.checkout(repo("SMART_RATIO_REPO")), sbs.tiny_net(), 0.9) <= 1


def test_grasp_it_equals_theirs_with_the_same_count_rule():
    sbs = script()
    corr, ious = sbs.compare_grasp_it(sbs.checkout(repo("FORCE_REPO")), sbs.tiny_net(), 0.9, 10)
    assert corr > 0.999999 and ious[1] == 1.0
