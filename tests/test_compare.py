"""Mask comparison: IoU and Hamming distance of hand-built masks, the heat map, the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from export_fixtures import forcelike_masks, quickstart_model

from pruning_lightning.analysis import figures
from pruning_lightning.analysis.compare import GLOBAL, compare_masks, hamming, load_masks, mask_iou
from pruning_lightning.analysis.figures_cli import main
from pruning_lightning.errors import ConfigError


def bools(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.bool)


# l1: kept {0, 1} / {0, 2} / {0, 1}; l2 (2 x 2): kept {0} / {0, 3} / {} (flattened)
A = {"l1": bools(1, 1, 0, 0), "l2": bools([1, 0], [0, 0])}
B = {"l1": bools(1, 0, 1, 0), "l2": bools([1, 0], [0, 1])}
C = {"l1": bools(1, 1, 0, 0), "l2": bools([0, 0], [0, 0])}


def by_pair_and_layer(rows) -> dict[tuple[str, str, str], dict]:
    return {(r["a"], r["b"], r["layer"]): r for r in rows}


def test_iou_and_hamming_of_hand_built_masks_are_exact():
    # global: |A & B| = 1 + 1, |A | B| = 3 + 2; differing entries 2 + 1 of 8
    assert mask_iou(A, B) == 2 / 5
    assert hamming(A, B) == 3 / 8
    assert mask_iou(A, A) == 1.0 and hamming(A, A) == 0.0
    assert mask_iou(A, C) == 2 / 3 and hamming(A, C) == 1 / 8
    empty = {"l": bools(0, 0)}
    assert mask_iou(empty, empty) == 1.0  # both keep nothing: the same kept set
    assert mask_iou({"l": bools(1, 0)}, {"l": bools(0, 1)}) == 0.0
    assert hamming({"l": bools(1, 0)}, {"l": bools(0, 1)}) == 1.0


def test_compare_masks_gives_every_pair_globally_and_per_layer():
    rows = compare_masks({"a": A, "b": B, "c": C})
    table = by_pair_and_layer(rows)
    assert {(x, y) for x, y, _ in table} == {("a", "b"), ("a", "c"), ("b", "c")}
    assert len(rows) == 3 * 3  # per pair: global, l1, l2
    ab = {layer: (table[("a", "b", layer)]["iou"], table[("a", "b", layer)]["hamming"])
          for layer in (GLOBAL, "l1", "l2")}  # fmt: skip
    assert ab == {GLOBAL: (2 / 5, 3 / 8), "l1": (1 / 3, 2 / 4), "l2": (1 / 2, 1 / 4)}
    assert table[("b", "c", "l2")]["iou"] == 0.0 and table[("b", "c", "l2")]["hamming"] == 2 / 4
    assert table[("a", "c", "l1")]["iou"] == 1.0
    glob = table[("a", "b", GLOBAL)]
    assert (glob["kept_a"], glob["kept_b"], glob["total"]) == (3, 4, 8)


@pytest.mark.parametrize(
    ("other", "message"),
    [
        ({"l1": A["l1"]}, "Mask b has no tensor 'l2', which mask a has"),
        ({**A, "l3": bools(1)}, "Mask a has no tensor 'l3', which mask b has"),
        ({"l1": bools(1, 1, 0), "l2": A["l2"]}, "Tensor 'l1' is (4,) in mask a and (3,) in mask b"),
    ],
)
def test_masks_over_other_tensors_are_refused_naming_the_first_mismatch(other, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        compare_masks({"a": A, "b": other})


def test_heat_map_shows_the_pairwise_global_iou():
    fig = figures.mask_iou_figure(compare_masks({"a": A, "b": B, "c": C}))
    ax = fig.axes[0]
    (image,) = ax.get_images()
    grid = image.get_array()
    assert [[float(v) for v in row] for row in grid] == [
        [1.0, 2 / 5, mask_iou(A, C)],
        [2 / 5, 1.0, mask_iou(B, C)],
        [mask_iou(A, C), mask_iou(B, C), 1.0],
    ]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b", "c"]
    assert "0.40" in [t.get_text() for t in ax.texts]


def write_masks(folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, mask in (("force_seed0", A), ("force_seed1", B), ("snip_seed0", C)):
        torch.save(mask, folder / f"{name}.pt")
        paths.append(str(folder / f"{name}.pt"))
    return paths


def test_compare_command_writes_the_heat_map_and_the_pairwise_table(tmp_path, capsys):
    paths = write_masks(tmp_path / "masks")
    png, table = tmp_path / "iou.png", tmp_path / "iou.csv"
    main(["compare", "--masks", *paths, "--out", str(png), "--out-csv", str(table)])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with table.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0])[:5] == ["a", "b", "layer", "iou", "hamming"]
    cell = {(r["a"], r["b"], r["layer"]): r for r in rows}[("force_seed0", "force_seed1", GLOBAL)]
    assert float(cell["iou"]) == 2 / 5 and float(cell["hamming"]) == 3 / 8
    # the table draws again without the masks
    again = tmp_path / "again.png"
    main(["compare", "--results", str(table), "--out", str(again), "--layer", "l1"])
    assert again.is_file()


def fake_pruned_run(root: Path, seed: int, steps: int) -> tuple[Path, dict[str, torch.Tensor]]:
    """A run folder as a pruned run leaves it: a checkpoint holding the mask in the callback's
    state and the log dir's pruning.json."""
    model = quickstart_model(width=4)
    masks = forcelike_masks(model, 0.5, seed=seed)
    log_dir = root / "lightning_logs" / "version_0"
    (log_dir / "checkpoints").mkdir(parents=True)
    checkpoint = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "callbacks": {"PruningCallback": {"masks": masks}},
    }
    torch.save(checkpoint, log_dir / "checkpoints" / "last.ckpt")
    record = {"method": "force", "sparsity": 0.5, "steps": steps, "seed": seed, "schema": 2}
    record.update(global_seed=seed, layers={"fc.weight": {"kept": 1, "total": 10}})
    (log_dir / "pruning.json").write_text(json.dumps(record))
    return root, masks


def test_run_folders_give_their_checkpoints_mask_labelled_by_the_record(tmp_path):
    run, masks = fake_pruned_run(tmp_path / "force-s0.5-seed1", seed=1, steps=3)
    label, loaded = load_masks(run)
    assert label == "force seed1 T3"
    assert loaded.keys() == masks.keys()
    assert all(torch.equal(loaded[n], masks[n]) for n in masks)
    other, _ = fake_pruned_run(tmp_path / "force-s0.5-seed2", seed=2, steps=3)
    png = tmp_path / "runs.png"
    main(["compare", "--masks", str(run), str(other), "--out", str(png)])
    assert png.is_file()


def write_bytes(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: [d["a"], str(d["dir"] / "missing.pt")], "does not exist"),
        (lambda d: [d["a"], write_bytes(d["dir"] / "x.pt", b"not torch")], "is not a mask file"),
        (lambda d: [d["a"], d["list"]], "holds a list, not a non-empty dict"),
        (lambda d: [d["a"], d["floats"]], "its entry 'l1' is not a bool tensor"),
        (lambda d: [d["a"]], "needs two or more; got 1"),
        (lambda d: [d["a"], d["short"]], "Mask short has no tensor 'l2'"),
        (lambda d: [d["a"], str(d["dir"])], "holds no checkpoint"),
        (lambda d: [d["a"], str(d["sweep"])], "holds 2 pruned runs"),
        (lambda d: [], "Give the masks to compare"),
    ],
)
def test_bad_inputs_exit_2_with_one_line(make, message, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    torch.save(A, folder / "a.pt")
    torch.save([1, 2], folder / "list.pt")
    torch.save({"l1": torch.ones(4)}, folder / "floats.pt")
    torch.save({"l1": A["l1"]}, folder / "short.pt")
    files = {name: str(folder / f"{name}.pt") for name in ("a", "list", "floats", "short")}
    sweep = tmp_path / "sweep"
    for seed in (0, 1):
        fake_pruned_run(sweep / f"force-s0.5-seed{seed}", seed=seed, steps=3)
    # "dir" is no run (it holds no checkpoint), "sweep" holds two
    masks = make({**files, "dir": folder, "sweep": sweep})
    png = tmp_path / "x.png"
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", *(["--masks", *masks] if masks else []), "--out", str(png)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pruning-figures: error:") and len(err.splitlines()) == 1
    assert message in err
    assert not png.exists()
