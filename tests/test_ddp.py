"""DDP on the CPU: two gloo processes on loopback end with the bit-identical mask."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).parent / "scripts" / "ddp_prune.py"


def run_ddp(out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(29500 + os.getpid() % 1000)}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(out), *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("method", ["force", "synflow"])
def test_ranks_share_the_mask_and_weights(tmp_path, method):
    # synflow all-reduces nothing: rank 0's mask is broadcast, bit-identical by construction
    proc = run_ddp(tmp_path, "--method", method)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert rank0["masks"].keys() == rank1["masks"].keys()
    for name, mask in rank0["masks"].items():
        assert torch.equal(mask, rank1["masks"][name]), name
        weight = rank0["weights"][name]
        assert torch.count_nonzero(weight[~mask]) == 0, name
        assert torch.count_nonzero(rank1["weights"][name][~mask]) == 0, name
    # parameters, not BN buffers: DDP keeps gradients in sync, running stats stay per rank
    for name, weight in rank0["weights"].items():
        assert torch.equal(weight, rank1["weights"][name]), name
    # each rank scores only its shard: num_batches = 2 batches of 16 per rank and step (+ the
    # saliency of the final mask), disjoint across ranks, so per rank = total / world size
    if method == "synflow":  # data-free: rank 0's mask is broadcast, no shard is scored
        return
    seen0, seen1 = rank0["pruning_images"], rank1["pruning_images"]
    assert len(seen0) == len(seen1) == (3 * 2 + 2) * 16
    assert len(set(seen0)) == len(seen0) and not set(seen0) & set(seen1)


def test_mismatched_masks_fail_loudly(tmp_path):
    proc = run_ddp(tmp_path, "--method", "snip", "--perturb")
    assert proc.returncode != 0
    assert "differ across DDP ranks" in proc.stderr
    assert not (tmp_path / "rank0.pt").exists()
