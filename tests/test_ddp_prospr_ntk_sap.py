"""ProsPr and NTK-SAP under DDP: 2 CPU ranks (gloo, loopback) through the console script.

The callback stops the run unless the mask's checksum is equal on every rank (``verify_ranks``),
so a finished run is a run whose ranks shared the mask. ProsPr averages the ranks' meta-gradients
before ranking; NTK-SAP is data-free, so rank 0's mask is broadcast, and since its draws depend on
the seed only, it is the mask of a single-process run.
"""

from __future__ import annotations

import json

import pytest
from test_ddp_cli import DDP, QUICKSTART, SHORT, console

from pruning_lightning.cli import main

pytestmark = pytest.mark.slow


def record(root) -> dict:
    (path,) = root.rglob("pruning.json")
    return json.loads(path.read_text())


@pytest.mark.parametrize("method", ["prospr", "ntk_sap"])
def test_the_ranks_share_the_mask(method, tmp_path):
    ddp = tmp_path / "ddp"
    ddp.mkdir()
    console(
        "pruning-lightning", "fit", "--config", QUICKSTART, *DDP, *SHORT,
        f"--pruning.method={method}", "--pruning.steps=3", cwd=ddp,
    )  # fmt: skip
    got = record(ddp)
    assert got["method"] == method and got["world_size"] == 2
    assert got["global_sparsity"] == pytest.approx(0.9, abs=1e-5)
    if method != "ntk_sap":
        return
    single = tmp_path / "single"
    main([
        "fit", "--config", QUICKSTART, *SHORT, f"--pruning.method={method}", "--pruning.steps=3",
        "--trainer.accelerator=cpu", f"--trainer.default_root_dir={single}",
    ])  # fmt: skip
    assert record(single)["mask_sha256"] == got["mask_sha256"]
