"""Operations on a finished mask: the sanity checks of pruning at initialisation.

Frankle et al. (2021) and Su et al. (2020) ask whether a method's mask matters beyond its
per-layer counts and its weights: ``shuffle`` keeps each layer's kept count at random positions;
``reinit`` keeps the mask on freshly drawn initial weights; ``shuffle_weights`` keeps the mask and
permutes the kept initial values within each layer. (``invert``, the opposite end of the ranking,
acts inside the step loop: :func:`~pruning_lightning.pruning.progressive.run_steps`; the
corrupted saliency data in :mod:`~pruning_lightning.pruning.batches`.)

Everything here is seeded by the ablation seed through its own generator (or a forked global RNG
for an init), so it is identical on every DDP rank and leaves the caller's RNG untouched.
Mask-level ablations return a new mask; weight-level ones return new theta0 tensors and leave the
model as it was: writing them into it is the caller's explicit step (:func:`load_weights`).
docs/METHODS.md "Ablations" says what each one keeps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from pruning_lightning.models.init import init_weights

Masks = Mapping[str, Tensor]


def generator(seed: int) -> torch.Generator:
    """The CPU generator every ablation draws from (device-independent draws)."""
    return torch.Generator().manual_seed(seed)


def shuffle_masks(masks: Masks, seed: int) -> dict[str, Tensor]:
    """Each layer's mask permuted: its kept count at uniformly random positions."""
    gen = generator(seed)
    out = {}
    for name, mask in masks.items():
        kept = int(torch.count_nonzero(mask))
        flat = torch.zeros(mask.numel(), dtype=torch.bool)
        flat[torch.randperm(mask.numel(), generator=gen)[:kept]] = True
        out[name] = flat.view(mask.shape).to(mask.device)
    return out


def shuffle_kept_weights(model: nn.Module, masks: Masks, seed: int) -> dict[str, Tensor]:
    """New theta0 of each masked tensor: its kept values permuted among its kept positions
    (the pruned entries keep their values; they are zeroed anyway)."""
    gen = generator(seed)
    params = dict(model.named_parameters())
    out = {}
    for name, mask in masks.items():
        value = params[name].detach()
        kept = mask.reshape(-1).nonzero().squeeze(1)
        perm = torch.randperm(kept.numel(), generator=gen).to(kept.device)
        new = value.clone().reshape(-1)
        new[kept] = value.reshape(-1)[kept[perm]]
        out[name] = new.view(value.shape)
    return out


#: The re-drawn init is seeded with ``ablation_seed + REINIT_SEED_OFFSET``: the ablation seed
#: defaults to the run's seed, and a draw under that very seed could replay the original init.
REINIT_SEED_OFFSET = 1_000_003


def reinit_weights(model: nn.Module, masks: Masks, seed: int) -> dict[str, Tensor]:
    """Every parameter freshly drawn by the network's own init under a global RNG forked and
    seeded with ``seed + REINIT_SEED_OFFSET``; the model is left as it was.

    The init is this project's :func:`~pruning_lightning.models.init.init_weights` when the model
    holds one of its backbones (pruning_lightning.models), else each module's
    ``reset_parameters()`` (PyTorch's default init of that module).
    """
    state = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
    devices = sorted({t.device for t in state.values() if t.device.type == "cuda"}, key=str)
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed + REINIT_SEED_OFFSET)
        network_init(model)(model)
        out = {n: p.detach().clone() for n, p in model.named_parameters()}
        for name, tensor in model.state_dict(keep_vars=True).items():
            tensor.detach().copy_(state[name])  # the model as it was
    return out


def network_init(model: nn.Module) -> Callable[[nn.Module], None]:
    """The function that initialises ``model``: see :func:`reinit_weights`."""
    if any(type(m).__module__.startswith("pruning_lightning.models") for m in model.modules()):
        return init_weights
    return _reset_parameters


def _reset_parameters(model: nn.Module) -> None:
    for module in model.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()


#: mask-level ablations: (mask, seed) -> the ablated mask
MASK_ABLATIONS: dict[str, Callable[[Masks, int], dict[str, Tensor]]] = {
    "shuffle": shuffle_masks,
}
#: weight-level ablations: (model, mask, seed) -> new theta0 tensors by parameter name
WEIGHT_ABLATIONS: dict[str, Callable[[nn.Module, Masks, int], dict[str, Tensor]]] = {
    "reinit": reinit_weights,
    "shuffle_weights": shuffle_kept_weights,
}
#: the ablation of the ranking, applied at every step of the loop
INVERT = "invert"


def ablate_masks(
    masks: dict[str, Tensor], ablation: str | None, seed: int | None
) -> dict[str, Tensor]:
    """The mask after a mask-level ablation (``masks`` itself for any other ablation)."""
    if ablation not in MASK_ABLATIONS:
        return masks
    assert seed is not None, "PruningConfig resolves the ablation seed"
    return MASK_ABLATIONS[ablation](masks, seed)


def ablated_weights(
    model: nn.Module, masks: Masks, ablation: str | None, seed: int | None
) -> dict[str, Tensor] | None:
    """The new theta0 of a weight-level ablation (None for any other); the model is unchanged."""
    if ablation not in WEIGHT_ABLATIONS:
        return None
    assert seed is not None, "PruningConfig resolves the ablation seed"
    return WEIGHT_ABLATIONS[ablation](model, masks, seed)


def load_weights(model: nn.Module, weights: Mapping[str, Tensor]) -> None:
    """Write ``weights`` (parameter name -> tensor) into ``model``, in place: the explicit step
    that changes theta0."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)


def mask_iou(a: Masks, b: Masks) -> float:
    """Global IoU ``|a & b| / |a | b|`` of the kept sets of two masks over the same tensors
    (1.0 when both keep nothing)."""
    inter = sum(int(torch.count_nonzero(a[n] & b[n].to(a[n].device))) for n in a)
    union = sum(int(torch.count_nonzero(a[n] | b[n].to(a[n].device))) for n in a)
    return 1.0 if union == 0 else inter / union
