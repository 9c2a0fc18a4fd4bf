"""The GPU check (benchmarks/gpu_check.py) without a GPU: its dry run exercises every CPU-capable
part at tiny sizes, records what it skips and what fails, and writes the results file a session
with a GPU will fill."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402


def read_results(out: Path) -> tuple[dict, dict[str, dict], str]:
    results = json.loads((out / gpu_check.RESULTS_JSON).read_text())
    return (
        results,
        {p["name"]: p for p in results["parts"]},
        (out / gpu_check.RESULTS_MD).read_text(),
    )


def check_common(results: dict, parts: dict[str, dict]) -> None:
    assert results["schema"] == gpu_check.SCHEMA
    assert results["mode"] == "dry-run"
    env = results["environment"]
    for key in ("device", "torch", "cuda", "python", "git_commit", "cpus"):
        assert key in env
    cuda = parts["cuda_tests"]
    assert cuda["status"] == "skipped" and "CUDA" in cuda["reason"]


def test_failed_part_is_recorded_and_the_check_goes_on(tmp_path, monkeypatch):
    broken = dataclasses.replace(
        gpu_check.PARTS["mask_time"], dry=[["--arch", "no_such_net", "--device", "cpu"]]
    )
    monkeypatch.setitem(gpu_check.PARTS, "mask_time", broken)
    parts = ["cuda_tests", "mask_time", "data_throughput"]
    code = gpu_check.main(["--dry-run", "--out", str(tmp_path), "--parts", *parts])

    assert code == 1  # a part failed
    results, by_name, md = read_results(tmp_path)
    check_common(results, by_name)
    assert [p["name"] for p in results["parts"]] == parts
    failed = by_name["mask_time"]
    assert failed["status"] == "failed" and "no_such_net" in failed["error"]
    assert failed["rows"] == []
    data = by_name["data_throughput"]
    assert data["status"] == "ok", data.get("error")
    assert data["benchmark_commands"][0].startswith("python benchmarks/data_throughput.py ")
    (row,) = data["rows"]
    assert row["source"] == "synthetic stand-in" and row["files"] > 0
    assert row["decode_pil"] > 0 and row["pipeline"] > 0 and row["command"]
    assert results["summary"] == {
        "ok": ["data_throughput"], "failed": ["mask_time"], "timeout": [], "skipped": ["cuda_tests"]
    }  # fmt: skip
    assert "## Data loading" in md and "| bare decode, PIL" in md and "no_such_net" in md
    assert (tmp_path / gpu_check.LOG).stat().st_size > 0


def test_bad_out_folder_exits_2_naming_the_fix(tmp_path, capsys):
    file = tmp_path / "a_file"
    file.write_text("")
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main(["--dry-run", "--out", str(file)])
    assert exit_info.value.code == 2
    assert "pass a folder" in capsys.readouterr().err


@pytest.mark.slow
def test_dry_run_runs_every_cpu_part_through_the_wrapper(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    results, parts, md = read_results(tmp_path)
    check_common(results, parts)
    assert results["command"].startswith("bash benchmarks/gpu_check.sh --dry-run")
    for name in ("mask_time", "train_overhead", "export_latency", "data_throughput"):
        assert parts[name]["status"] == "ok", parts[name].get("error")
        assert parts[name]["rows"] and all(r["command"] for r in parts[name]["rows"])

    times = [r for r in parts["mask_time"]["rows"] if r.get("kind") != "iou"]
    assert {r["precision"] for r in times} == {"fp32", "bf16"}
    assert all(r["mask_s_best"] > 0 and r["floor_s_best"] > 0 for r in times)
    (iou,) = [r for r in parts["mask_time"]["rows"] if r.get("kind") == "iou"]
    assert 0.0 <= iou["iou_vs_fp32"] <= 1.0
    (overhead,) = parts["train_overhead"]["rows"]
    assert overhead["dense_s_per_step"] > 0 and overhead["callback_vs_dense"] > 0
    dense, force = parts["export_latency"]["rows"]
    assert dense["method"] == "dense" and dense["latency_b64_s"] > 0
    assert force["method"] == "force" and 0 < force["flops"] <= 1

    for title in ("## Mask time", "## Keeping the network pruned", "## Exported networks"):
        assert title in md
    assert "IoU of the masks" in md
