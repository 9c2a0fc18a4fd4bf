"""Ablations of a computed mask (docs/METHODS.md "Ablations"): each one's invariant on a small
network, the corrupted saliency data, the one-line errors, and the record of a CLI run."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from conftest import batches, conv_net, tiny_model
from conftest import fit as fit_digits
from lightning.pytorch.callbacks import Callback
from torch import nn

from pruning_lightning import ConfigError, compute_masks
from pruning_lightning.callback import PruningCallback
from pruning_lightning.cli import main
from pruning_lightning.models import build_backbone, init_weights
from pruning_lightning.pruning import PruningConfig, kept_schedule, run_pruning
from pruning_lightning.pruning.ablations import (
    REINIT_SEED_OFFSET,
    mask_iou,
    reinit_weights,
    shuffle_kept_weights,
    shuffle_masks,
)
from pruning_lightning.pruning.batches import RandomLabels, ShuffledPixels
from pruning_lightning.pruning.criteria import grasp_scores, magnitude_scores, snip_scores
from pruning_lightning.pruning.progressive import run_steps
from pruning_lightning.record import RunRecord, mask_digest, read_record

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
SEEDS = (0, 1, 2)


def prune(net, data, method="snip", sparsity=0.8, **options):
    return run_pruning(net, data, PruningConfig(method, sparsity, **options))


def counts(masks):
    return {n: int(m.sum()) for n, m in masks.items()}


def state(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def assert_same_state(net: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = net.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


# --- shuffle -------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_shuffle_keeps_per_layer_counts_and_moves_positions(seed):
    net, data = conv_net(), batches(2)
    plain = prune(net, data).masks
    result = prune(net, data, ablation="shuffle", ablation_seed=seed)
    assert all(torch.equal(result.unablated[n], plain[n]) for n in plain)  # the method's mask
    assert counts(result.masks) == counts(plain)
    assert all(m.dtype == torch.bool and m.shape == plain[n].shape for n, m in result.masks.items())
    assert mask_iou(result.masks, plain) < 0.9  # 20% kept: random positions overlap ~10%
    again = shuffle_masks(plain, seed)
    assert all(torch.equal(again[n], result.masks[n]) for n in plain)  # seeded
    other = shuffle_masks(plain, seed + 10)
    assert any(not torch.equal(other[n], result.masks[n]) for n in plain)


def test_mask_iou_is_intersection_over_union():
    a = {"w": torch.tensor([True, True, False, False]), "v": torch.tensor([True])}
    b = {"w": torch.tensor([True, False, True, False]), "v": torch.tensor([False])}
    assert mask_iou(a, b) == 1 / 4
    assert mask_iou(a, a) == 1.0


# --- reinit ----------------------------------------------------------------------------------


def test_reinit_keeps_the_mask_and_draws_theta0_with_the_backbones_init():
    net = build_backbone("resnet18", 4, in_channels=3, image_size=8, width=4)
    data = batches(2, image_shape=(3, 8, 8))
    before = state(net)
    plain = prune(net, data).masks
    result = prune(net, data, ablation="reinit", ablation_seed=7)
    assert_same_state(net, before)  # the engine changes nothing
    assert result.unablated is None
    assert all(torch.equal(result.masks[n], plain[n]) for n in plain)
    params = dict(net.named_parameters())
    assert set(result.theta0) == set(params)
    for name in plain:
        assert not torch.equal(result.theta0[name], params[name])
    expected = copy.deepcopy(net)
    torch.manual_seed(7 + REINIT_SEED_OFFSET)
    init_weights(expected)  # the backbone's own init, seeded from the ablation seed
    for name, value in expected.named_parameters():
        assert torch.equal(result.theta0[name], value.detach())


def test_reinit_of_an_unknown_network_uses_each_modules_reset_parameters():
    net = conv_net()
    before = state(net)
    theta0 = reinit_weights(net, {}, 3)
    assert_same_state(net, before)
    expected = copy.deepcopy(net)
    torch.manual_seed(3 + REINIT_SEED_OFFSET)
    for module in expected.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    for name, value in expected.named_parameters():
        assert torch.equal(theta0[name], value.detach())
    assert not torch.equal(theta0["0.weight"], before["0.weight"])


# --- shuffle_weights --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_shuffle_weights_keeps_the_mask_and_each_layers_kept_values(seed):
    net, data = conv_net(), batches(2)
    before = state(net)
    plain = prune(net, data).masks
    result = prune(net, data, ablation="shuffle_weights", ablation_seed=seed)
    assert_same_state(net, before)
    assert all(torch.equal(result.masks[n], plain[n]) for n in plain)
    assert set(result.theta0) == set(plain)  # only the masked tensors
    for name, mask in plain.items():
        old, new = before[name], result.theta0[name]
        assert torch.equal(new[~mask], old[~mask])  # pruned entries untouched
        assert torch.equal(new[mask].sort().values, old[mask].sort().values)  # same multiset
        assert not torch.equal(new[mask], old[mask])  # moved
    again = shuffle_kept_weights(net, plain, seed)
    assert all(torch.equal(again[n], result.theta0[n]) for n in plain)


# --- invert ----------------------------------------------------------------------------------


def _assert_lowest(masks, scores, k, highest=False):
    """``masks`` keeps exactly k weights, none ranked above (below) a pruned one."""
    kept = torch.cat([scores[n][m].reshape(-1) for n, m in masks.items()])
    pruned = torch.cat([scores[n][~m].reshape(-1) for n, m in masks.items()])
    assert kept.numel() == k
    if highest:
        assert kept.min() >= pruned.max() - 1e-6 * pruned.abs().max()
    else:
        assert kept.max() <= pruned.min() + 1e-6 * pruned.abs().max()


@pytest.mark.parametrize("method", ["magnitude", "snip", "grasp"])
def test_invert_keeps_the_global_count_and_the_other_end_of_the_ranking(method):
    net, data = conv_net(), batches(1)  # num_batches=1: the engine scores this one batch
    k = round(0.2 * (162 + 324 + 96))  # conv_net's prunable 0.weight, 3.weight, 8.weight
    masks = prune(net, data, method, ablation="invert").masks
    scores = {
        "magnitude": lambda: magnitude_scores(net),
        "snip": lambda: snip_scores(net, data),
        "grasp": lambda: grasp_scores(net, data),
    }[method]()
    # GRASP keeps the smallest of its scores: inverted, the largest
    _assert_lowest(masks, scores, k, highest=method == "grasp")


@pytest.mark.parametrize(
    "options",
    [
        {"ablation": "invert"},
        {"saliency_data": "random_labels"},
        {"saliency_data": "shuffled_pixels"},
    ],
)
def test_reference_gives_the_methods_own_mask_beside_an_ablated_computation(options):
    net, data = conv_net(), batches(3)
    before = state(net)
    plain = prune(net, data, "force", steps=3).masks
    assert prune(net, data, "force", steps=3, **options).unablated is None  # not asked for
    result = run_pruning(net, data, PruningConfig("force", 0.8, steps=3, **options), reference=True)
    assert_same_state(net, before)
    assert all(torch.equal(result.unablated[n], plain[n]) for n in plain)  # the method's own
    assert any(not torch.equal(result.masks[n], plain[n]) for n in plain)  # the ablated one
    again = prune(net, data, "force", steps=3, **options).masks
    assert all(
        torch.equal(again[n], result.masks[n]) for n in plain
    )  # the reference changes it not


@pytest.mark.parametrize("resurrect", [True, False])
def test_invert_keeps_the_lowest_ranked_at_every_step(resurrect):
    shapes = [torch.Size([5, 4]), torch.Size([30])]
    total = 50
    kept = kept_schedule(total, 0.1, 4)
    gen = torch.Generator().manual_seed(0)
    step_scores = [torch.randn(total, generator=gen) for _ in kept]
    seen: list[torch.Tensor | None] = []

    def score_fn(t, prev, views):
        seen.append(None if prev is None else torch.cat([p.reshape(-1) for p in prev]).clone())
        flat = step_scores[t - 1]
        views[0].copy_(flat[:20].view(5, 4))
        views[1].copy_(flat[20:])

    final, _ = run_steps(
        score_fn, kept, ["a", "b"], shapes, torch.device("cpu"),
        method="test", resurrect=resurrect, invert=True,
    )  # fmt: skip
    masks = seen[1:] + [torch.cat([m.reshape(-1) for m in final])]
    allowed = torch.ones(total, dtype=torch.bool)
    for k, scores, mask in zip(kept, step_scores, masks, strict=True):
        assert int(mask.sum()) == k
        candidates = scores.masked_fill(~allowed, float("inf"))  # pruned can't come back
        expected = torch.zeros(total, dtype=torch.bool)
        expected[candidates.argsort()[:k]] = True
        assert torch.equal(mask, expected)
        if not resurrect:
            allowed = mask


def test_invert_of_a_progressive_method_keeps_the_schedules_counts():
    result = run_pruning(
        conv_net(), batches(3), PruningConfig("force", 0.9, steps=3, ablation="invert"),
        record=True,
    )  # fmt: skip
    total = 162 + 324 + 96
    assert [sum(r.kept.values()) for r in result.steps] == kept_schedule(total, 0.1, 3)


# --- corrupted saliency data -------------------------------------------------------------------


def _capture(net: nn.Module):
    """Record the inputs of the network and the targets of the loss of every saliency pass."""
    seen: dict[str, list[torch.Tensor]] = {"x": [], "y": []}
    net[0].register_forward_pre_hook(lambda m, args: seen["x"].append(args[0].detach().clone()))

    def loss_fn(logits, targets):
        seen["y"].append(targets.clone())
        return nn.functional.cross_entropy(logits, targets)

    return seen, loss_fn


def test_random_labels_change_only_the_labels_of_the_saliency_batches():
    net, data = conv_net(), batches(1, num_classes=4)
    clean = [(x.clone(), y.clone()) for x, y in data]
    seen, loss_fn = _capture(net)
    before = state(net)
    config = PruningConfig("snip", 0.8, saliency_data="random_labels", ablation_seed=5)
    run_pruning(net, data, config, loss_fn=loss_fn)
    assert_same_state(net, before)
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(data, clean, strict=True))  # untouched
    assert torch.equal(seen["x"][0], clean[0][0])  # the same images
    expected = RandomLabels(5, 4)(clean[0])[1]  # net's last Linear: 4 classes
    assert torch.equal(seen["y"][0], expected)
    labels = RandomLabels(5, 4)((torch.zeros(1000), torch.zeros(1000, dtype=torch.long)))[1]
    assert set(labels.tolist()) == {0, 1, 2, 3}  # uniform in [0, num_classes)


def test_shuffled_pixels_permute_every_image_alike_and_keep_the_labels():
    net, data = conv_net(), batches(1, image_shape=(3, 6, 6))
    ((x, y),) = data
    clean = x.clone()
    seen, loss_fn = _capture(net)
    run_pruning(net, data, PruningConfig("snip", 0.8, saliency_data="shuffled_pixels"),
                loss_fn=loss_fn)  # fmt: skip
    assert torch.equal(x, clean)  # the data itself is untouched
    shuffled = seen["x"][0]
    assert torch.equal(seen["y"][0], y)
    assert not torch.equal(shuffled, x)
    perm = ShuffledPixels(0)((x, y))[0]
    assert torch.equal(shuffled, perm)
    # one permutation of the 36 positions for every image and channel: locate it from one pixel
    # column of distinct values, then check it on all of them
    flat_x, flat_s = x.flatten(2), shuffled.flatten(2)
    index = torch.tensor([int((flat_x[0, 0] == v).nonzero()) for v in flat_s[0, 0]])
    assert sorted(index.tolist()) == list(range(36))
    assert torch.equal(flat_s, flat_x[..., index])


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(method="random", ablation="invert"), "needs a ranking"),
        (dict(method="random", saliency_data="random_labels"), "uses no data"),
        (dict(method="synflow", saliency_data="shuffled_pixels"), "uses no data"),
        (dict(method="force", ablation="flip"), "Unknown ablation"),
        (dict(method="force", saliency_data="noise"), "Unknown saliency_data"),
        (dict(method="force", ablation="shuffle", ablation_seed=1.5), "ablation_seed must be"),
    ],
)
def test_bad_combinations_are_one_line_errors(options, message):
    with pytest.raises(ConfigError, match=message) as err:
        PruningConfig(sparsity=0.9, **options)
    assert "\n" not in str(err.value)


def test_the_ablation_seed_defaults_to_the_seed():
    assert PruningConfig("force", 0.9, seed=4, ablation="shuffle").ablation_seed == 4
    assert PruningConfig("force", 0.9, seed=4, saliency_data="random_labels").ablation_seed == 4
    given = PruningConfig("force", 0.9, seed=4, ablation_seed=9, ablation="reinit")
    assert given.ablation_seed == 9
    assert PruningConfig("force", 0.9, seed=4).ablation_seed is None


def test_compute_masks_refuses_weight_ablations():
    with pytest.raises(ConfigError, match="run_pruning"):
        compute_masks(conv_net(), batches(1), "snip", 0.5, ablation="reinit")
    masks = compute_masks(conv_net(), batches(1), "snip", 0.5, ablation="shuffle")
    assert counts(masks) == counts(compute_masks(conv_net(), batches(1), "snip", 0.5))


@pytest.mark.parametrize("options", [dict(ablation="invert"), dict(saliency_data="random_labels")])
def test_a_loaded_mask_has_no_ranking_to_invert_or_corrupt(tmp_path, options):
    path = tmp_path / "m.pt"
    torch.save({"w": torch.ones(2, dtype=torch.bool)}, path)
    with pytest.raises(ConfigError, match="no ranking is computed"):
        PruningCallback("force", masks_path=str(path), **options)


@pytest.mark.parametrize("ablation", ["reinit", "shuffle_weights"])
def test_weight_ablations_refuse_early_pruning(ablation):
    # early pruning's theta0 is the trained weights mid-run: replacing them is no ablation
    with pytest.raises(ConfigError, match="prune at initialization") as err:
        PruningCallback("force", sparsity=0.9, ablation=ablation, prune_after_steps=2)
    assert "\n" not in str(err.value)
    PruningCallback("force", sparsity=0.9, ablation="shuffle", prune_after_steps=2)


def test_invert_is_refused_for_exactly_the_unranked_methods():
    from pruning_lightning.pruning.registry import criteria_list

    for criterion in criteria_list():
        if criterion.ranked:
            PruningConfig(criterion.name, 0.9, ablation="invert")
        else:
            with pytest.raises(ConfigError, match="needs a ranking"):
                PruningConfig(criterion.name, 0.9, ablation="invert")


# --- the record of a CLI run ------------------------------------------------------------------


def fit(tmp_path: Path, *args: str) -> RunRecord:
    root = tmp_path / "run"
    main([
        "fit", "--config", str(CONFIGS / "quickstart.yaml"), "--pruning.method", "force",
        *args,
        "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1", "--pruning.steps=2",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        "--trainer.accelerator=cpu", f"--trainer.default_root_dir={root}",
        "--model.width=4", "--data.init_args.batch_size=16", "--pruning.log_figure=false",
    ])  # fmt: skip
    (log_dir,) = (root / "lightning_logs").glob("version_*")
    record = read_record(log_dir)
    (ckpt,) = log_dir.glob("checkpoints/*.ckpt")
    masks = torch.load(ckpt, weights_only=True)["callbacks"]["PruningCallback"]["masks"]
    assert record.mask_sha256 == mask_digest(masks)
    return record


@pytest.mark.parametrize(
    ("option", "name"),
    [
        ("ablation", "shuffle"),
        ("ablation", "reinit"),
        ("ablation", "shuffle_weights"),
        ("ablation", "invert"),
        ("saliency_data", "random_labels"),
        ("saliency_data", "shuffled_pixels"),
    ],
)
def test_each_ablation_runs_through_the_cli_and_is_recorded(tmp_path, option, name):
    record = fit(tmp_path, f"--pruning.{option}", name)
    assert getattr(record, option) == name
    assert record.ablation_seed == 0  # the run's seed (seed_everything: 0)
    assert record.global_sparsity == pytest.approx(0.9, abs=1e-4)
    if name in ("shuffle", "invert"):  # positions at random / the other end of the ranking
        assert record.unablated_mask_sha256 != record.mask_sha256
        assert record.ablation_iou < 0.5
    elif option == "saliency_data":  # the method's own mask on clean batches, computed too
        assert record.unablated_mask_sha256 != record.mask_sha256
        assert record.ablation_iou < 1.0
    else:  # reinit, shuffle_weights: the method's own mask, other weights
        assert record.unablated_mask_sha256 == record.mask_sha256
        assert record.ablation_iou == 1.0


def test_a_loaded_mask_is_shuffled_with_its_own_seed(tmp_path):
    from pruning_lightning.classifier import ImageClassifier

    # the quickstart's network as the CLI above builds it (digits: 1x8x8, 10 classes)
    model = ImageClassifier("resnet18", num_classes=10, in_channels=1, image_size=8, width=4)
    loaded = compute_masks(model, None, "magnitude", 0.9)
    saved = tmp_path / "mask.pt"
    torch.save(loaded, saved)
    shuffled = fit(
        tmp_path, f"--pruning.masks_path={saved}", "--pruning.ablation=shuffle",
        "--pruning.ablation_seed=3",
    )  # fmt: skip
    assert shuffled.unablated_mask_sha256 == mask_digest(loaded)
    assert shuffled.mask_sha256 != mask_digest(loaded)
    assert shuffled.ablation_seed == 3
    assert shuffled.counts == {n: (int(m.sum()), m.numel()) for n, m in loaded.items()}
    assert 0 < shuffled.ablation_iou < 0.5


def test_an_old_record_reads_without_the_ablation_fields():
    old = RunRecord.from_dict({"method": "force", "sparsity": 0.9,
                               "layers": {"w": {"kept": 1, "total": 10}}})  # fmt: skip
    assert (old.ablation, old.ablation_seed, old.unablated_mask_sha256) == (None, None, None)
    with pytest.raises(ValueError, match="ablation_iou"):
        RunRecord.from_dict({**old.to_dict(), "ablation_iou": 2.0})


# --- the callback writes the ablation's theta0 before zeroing ---------------------------------


class Snapshots(Callback):
    """The model's parameters before (at fit start, ahead of the PruningCallback) and after
    pruning (at train start)."""

    def on_fit_start(self, trainer, pl_module):
        self.before = {n: p.detach().clone() for n, p in pl_module.named_parameters()}

    def on_train_start(self, trainer, pl_module):
        self.after = {n: p.detach().clone() for n, p in pl_module.named_parameters()}


@pytest.mark.parametrize("ablation", ["reinit", "shuffle_weights"])
def test_the_callback_trains_the_mask_on_the_ablations_theta0(tmp_path, ablation):
    snapshots = Snapshots()
    callback = PruningCallback("snip", 0.8, ablation=ablation, ablation_seed=2)
    fit_digits(tmp_path, callback, callbacks=[snapshots, callback], limit_train_batches=1)
    masks = {n: m.cpu() for n, m in callback.masks.items()}
    reference = tiny_model()
    with torch.no_grad():
        for name, p in reference.named_parameters():
            p.copy_(snapshots.before[name])
    expected = {"reinit": reinit_weights, "shuffle_weights": shuffle_kept_weights}[ablation](
        reference, masks, 2
    )
    for name, mask in masks.items():
        after = snapshots.after[name]
        assert torch.equal(after[mask], expected[name][mask])  # the ablation's theta0 ...
        assert not torch.equal(after[mask], snapshots.before[name][mask])
        assert bool((after[~mask] == 0).all())  # ... pruned by the same mask
    assert callback.record.ablation == ablation and callback.record.ablation_iou == 1.0
