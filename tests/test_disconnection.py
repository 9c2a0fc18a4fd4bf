"""The disconnection study: its settings, what it measures of a mask, resuming, the CLI, and its
figure drawn from the committed study."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from conftest import batches, conv_net

from pruning_lightning.analysis import disconnection, figures
from pruning_lightning.analysis.disconnection import Setting, ZeroSaliencyWatch
from pruning_lightning.analysis.figures_cli import main
from pruning_lightning.analysis.results import read_table
from pruning_lightning.errors import ConfigError
from pruning_lightning.pruning.engine import compute_masks
from pruning_lightning.pruning.progressive import StepEvent

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "docs" / "results" / "disconnection"
SHAPE = (3, 6, 6)


def test_settings_give_one_shot_methods_one_setting_at_t1():
    plan = disconnection.settings(["force", "snip"], [0.9, 0.99], [1, 10], [None])
    assert [(s.method, s.sparsity, s.steps) for s in plan] == [
        ("force", 0.9, 1),
        ("force", 0.9, 10),
        ("force", 0.99, 1),
        ("force", 0.99, 10),
        ("snip", 0.9, 1),
        ("snip", 0.99, 1),
    ]
    assert len(plan) == 6
    assert Setting("force", 0.995, 60, 16).key == "force-s0.995-T60-w16"
    assert Setting("snip", 0.9, 1, None).key == "snip-s0.9-T1"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((["force"], [1.5], [10], [None]), "Write 99% as 0.99"),
        ((["force"], [0.9], [0], [None]), "--steps must be integers >= 1"),
        ((["force"], [], [10], [None]), "at least one"),
        ((["nope"], [0.9], [10], [None]), "Unknown pruning method"),
    ],
)
def test_settings_refuse_bad_input_with_the_fix(args, message):
    with pytest.raises(ConfigError, match=message):
        disconnection.settings(*args)


def event(step: int, saliency: float | None, kept: dict[str, int]) -> StepEvent:
    return StepEvent(step, torch.zeros(1, dtype=torch.bool), {}, kept, saliency)


def test_zero_saliency_watch_keeps_the_first_zero_step_and_the_layers_gone_then():
    watch = ZeroSaliencyWatch()
    watch(event(1, 2.0, {"a": 3, "b": 1}))
    watch(event(2, None, {"a": 2, "b": 1}))  # not measured: never zero
    watch(event(3, 0.0, {"a": 2, "b": 0}))
    watch(event(4, 0.0, {"a": 0, "b": 0}))
    assert (watch.step, watch.gone, watch.last) == (3, ["b"], 0.0)
    never = ZeroSaliencyWatch()
    never(event(1, 1e-30, {"a": 1}))
    assert (never.step, never.gone, never.last) == (None, [], 1e-30)


def test_mask_row_reports_a_cut_network_and_its_collapsed_layer():
    model = conv_net()
    full = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters()
            if n in ("0.weight", "3.weight", "8.weight")}  # fmt: skip
    cut = {**full, "3.weight": torch.zeros_like(full["3.weight"])}
    setting = Setting("force", 0.5, 2, None)
    whole = disconnection.mask_row(model, full, setting, 7, SHAPE, ZeroSaliencyWatch(), 1.0)
    assert (whole["disconnected"], whole["effective_sparsity"], whole["collapsed_layers"]) == (
        False,
        0.0,
        0,
    )
    assert (whole["kept"], whole["total"], whole["seed"]) == (582, 582, 7)
    row = disconnection.mask_row(model, cut, setting, 7, SHAPE, ZeroSaliencyWatch(), 1.0)
    assert row["disconnected"] is True and row["effective_sparsity"] == 1.0
    assert (row["collapsed_layers"], row["collapsed"]) == (1, "3.weight")
    assert row["kept"] == 582 - 324


def fake_build(calls: list):
    """The study's builder on the tiny conv net: theta0 and batches a function of the seed."""

    def build(seed: int, width):
        calls.append((seed, width))
        return conv_net(seed), batches(40, seed, image_shape=SHAPE), SHAPE

    return build


def test_run_study_measures_every_setting_and_seed_and_resumes(tmp_path):
    plan = disconnection.settings(["force", "snip"], [0.9], [3], [None])
    calls: list = []
    rows, iou = disconnection.run_study(fake_build(calls), plan, [0, 1, 2], tmp_path, log=print)
    assert calls == [(0, None), (1, None), (2, None)]
    assert [(r["method"], r["seed"]) for r in rows] == [
        ("force", 0), ("force", 1), ("force", 2), ("snip", 0), ("snip", 1), ("snip", 2)
    ]  # fmt: skip
    # every mask on disk is the one compute_masks gives for the same model, data and seed
    for setting in plan:
        for seed in (0, 1, 2):
            saved = disconnection.load_mask(disconnection.mask_path(tmp_path, setting, seed))
            steps = setting.steps if setting.method == "force" else None
            again = compute_masks(
                conv_net(seed), batches(40, seed, image_shape=SHAPE), setting.method, 0.9,
                steps=steps, seed=seed,
            )  # fmt: skip
            assert all(torch.equal(saved[n], again[n]) for n in again)
            assert sum(int(m.sum()) for m in saved.values()) == round(0.1 * 582)
    # three seeds: three pairs per setting, each IoU the one of the two saved masks
    assert len(iou) == 2 * 3 and all(0.0 <= r["iou"] <= 1.0 for r in iou)
    table = read_table(tmp_path / disconnection.MASKS_CSV)
    assert [r["seed"] for r in table] == [r["seed"] for r in rows]
    summary = {r["method"]: r for r in read_table(tmp_path / disconnection.SUMMARY_CSV)}
    assert summary["force"]["masks"] == 3 and summary["snip"]["steps"] == 1
    # resumed: nothing is rebuilt or recomputed, and the tables come out the same
    again_rows, again_iou = disconnection.run_study(fake_build(calls), plan, [0, 1, 2], tmp_path)
    assert len(calls) == 3
    assert [r["seed"] for r in again_rows] == [r["seed"] for r in rows]
    assert [r["iou"] for r in again_iou] == [r["iou"] for r in iou]
    # a lost mask file is recomputed (only its seed is rebuilt)
    disconnection.mask_path(tmp_path, plan[1], 1).unlink()
    disconnection.run_study(fake_build(calls), plan, [0, 1, 2], tmp_path)
    assert calls[3:] == [(1, None)]


def test_seed_iou_of_a_mask_with_itself_is_one(tmp_path):
    setting = Setting("snip", 0.9, 1, None)
    mask = {"w": torch.tensor([True, False, True, False])}
    other = {"w": torch.tensor([True, True, False, False])}
    for seed, m in ((0, mask), (1, mask), (2, other)):
        path = disconnection.mask_path(tmp_path, setting, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(m, path)
    paths = {(setting, s): disconnection.mask_path(tmp_path, setting, s) for s in (0, 1, 2)}
    rows = {(r["seed_a"], r["seed_b"]): r["iou"] for r in disconnection.seed_iou_rows(paths)}
    assert rows == {(0, 1): 1.0, (0, 2): 1 / 3, (1, 2): 1 / 3}


def test_cli_runs_the_study_on_the_quickstart_and_redraws_its_figure(tmp_path, capsys):
    out = tmp_path / "study"
    main([
        "disconnection", "--config", str(ROOT / "configs" / "quickstart.yaml"),
        "--set", "model.width=4", "--methods", "force", "snip", "--sparsities", "0.99",
        "--steps", "3", "--seeds", "0", "1", "--out", str(out),
    ])  # fmt: skip
    for name in ("disconnection.csv", "seed_iou.csv", "summary.csv", "disconnection.png"):
        assert (out / name).is_file(), name
    assert len(list((out / "masks").glob("*.pt"))) == 4
    with (out / "disconnection.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {(r["method"], r["steps"], r["seed"]) for r in rows} == {
        ("force", "3", "0"), ("force", "3", "1"), ("snip", "1", "0"), ("snip", "1", "1")
    }  # fmt: skip
    assert (out / "study.json").is_file()
    png = tmp_path / "again.png"
    main(["disconnection-figure", "--results", str(out / "disconnection.csv"),
          "--iou", str(out / "seed_iou.csv"), "--out", str(png)])  # fmt: skip
    assert png.stat().st_size > 0


def test_cli_refuses_bad_input_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["disconnection", "--config", str(ROOT / "configs" / "quickstart.yaml"),
              "--sparsities", "99", "--out", str(tmp_path / "x")])  # fmt: skip
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Write 99% as 0.99" in err[0]
    assert not (tmp_path / "x").exists()
    with pytest.raises(SystemExit) as exit_:
        main(["disconnection", "--config", str(ROOT / "configs" / "quickstart.yaml"),
              "--set", "model.width=4", "--widths", "8", "--out", str(tmp_path / "x")])  # fmt: skip
    assert exit_.value.code == 2
    assert "Give the width once" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(not (COMMITTED / "disconnection.csv").is_file(), reason="no committed study")
def test_figure_draws_from_the_committed_study(tmp_path):
    rows = read_table(COMMITTED / "disconnection.csv")
    iou = read_table(COMMITTED / "seed_iou.csv")
    fig = figures.disconnection_figure(rows, iou, "committed")
    fig.savefig(tmp_path / "f.png")
    # the committed summary agrees with the per-mask table it was computed from
    summary = read_table(COMMITTED / "summary.csv")
    assert sum(r["masks"] for r in summary) == len(rows)
    assert sum(r["disconnected"] for r in summary) == sum(r["disconnected"] is True for r in rows)
