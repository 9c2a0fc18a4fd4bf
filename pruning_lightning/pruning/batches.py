"""The saliency batches: one seeded, sharded loader per mask computation, drawn through one
iterator and moved to the device one batch at a time."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler

from pruning_lightning.errors import ConfigError


def split_batch(batch: object) -> tuple[Tensor, Tensor]:
    """``(inputs, targets)`` of one batch as a loader yields it; a ConfigError otherwise."""
    if isinstance(batch, Sequence) and len(batch) >= 2:
        x, y = batch[0], batch[1]
        if isinstance(x, Tensor) and isinstance(y, Tensor):
            return x, y
    raise ConfigError(
        f"data must yield (inputs, targets) pairs of tensors, got a {type(batch).__name__}. "
        "Pass a DataLoader over a dataset of (image, label) or a list of (x, y) tensor pairs."
    )


def to_device(batch: tuple[Tensor, Tensor], device: torch.device) -> tuple[Tensor, Tensor]:
    """The batch on ``device`` (non-blocking from pinned memory)."""
    return batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)


class BatchStream:
    """Draws batches from ``data`` through ONE iterator, starting a new one only when exhausted.

    A DataLoader iterator is costly to build (worker start-up, a new shuffle), so the
    progressive methods take their fresh batches from the same iterator, step after step.
    """

    def __init__(
        self,
        data: Iterable,
        device: torch.device,
        corrupt: Callable[[tuple[Tensor, Tensor]], tuple[Tensor, Tensor]] | None = None,
    ):
        """``corrupt``: applied to every batch drawn, on the host (see :data:`CORRUPTIONS`)."""
        self.data, self.device, self.corrupt = data, device, corrupt
        self._it: Iterator | None = None
        self.drawn = 0
        self.passes = 0  # iterators started over ``data``

    def _start_pass(self) -> Iterator:
        """A new iterator; a sampler with ``set_epoch`` (DistributedSampler) gets the pass number,
        so each pass over the data is shuffled anew instead of repeating the first order."""
        set_epoch = getattr(getattr(self.data, "sampler", None), "set_epoch", None)
        if callable(set_epoch):
            set_epoch(self.passes)
        self.passes += 1
        return iter(self.data)

    def _draw(self) -> tuple[Tensor, Tensor]:
        """The next batch as the loader yields it (host memory, pinned if the loader pins)."""
        if self._it is None:
            self._it = self._start_pass()
        try:
            batch = next(self._it)
        except StopIteration:
            self._it = self._start_pass()
            try:
                batch = next(self._it)
            except StopIteration:
                raise ConfigError(
                    "data yielded no batch"
                    + (f" after {self.drawn} batches" if self.drawn else "")
                    + ": pass a non-empty, re-iterable source of (inputs, targets) such as a "
                    "DataLoader or a list (a generator can be iterated only once)."
                ) from None
        self.drawn += 1
        batch = split_batch(batch)
        return batch if self.corrupt is None else self.corrupt(batch)

    def next(self) -> tuple[Tensor, Tensor]:
        """The next batch, on the device."""
        return to_device(self._draw(), self.device)

    def take(self, n: int, replay: bool = False) -> Iterable[tuple[Tensor, Tensor]]:
        """The next ``n`` batches, each moved to the device only when the consumer reaches it.

        So at most one batch (its inputs and activations) sits on the device at a time: 40
        ImageNet batches of 256 would be ~6 GB of inputs alone. ``replay``: a re-iterable
        collection that keeps the host copies, for a criterion that passes over the same
        batches twice (GRASP); otherwise a one-shot iterator that keeps nothing.
        """
        if replay:
            return _Replay([self._draw() for _ in range(n)], self.device)
        return (self.next() for _ in range(n))


class RandomLabels:
    """Su et al.'s corrupted labels: each batch's targets drawn uniformly from
    ``[0, num_classes)``, from one generator seeded with ``seed`` (so every mask computation, and
    every DDP rank, draws the same label sequence)."""

    def __init__(self, seed: int, num_classes: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.num_classes = num_classes

    def __call__(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        x, y = batch
        labels = torch.randint(self.num_classes, y.shape, generator=self.generator)
        return x, labels.to(y.device, y.dtype)


class ShuffledPixels:
    """Su et al.'s corrupted images: every image's H*W pixel positions permuted by ONE fixed
    permutation drawn from ``seed`` (all channels alike), so the images keep their pixel
    statistics and lose their spatial structure."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.perm: Tensor | None = None

    def __call__(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        x, y = batch
        if x.dim() < 3:
            raise ConfigError(
                f"saliency_data 'shuffled_pixels' needs images (batch, ..., H, W), got inputs of "
                f"shape {tuple(x.shape)}: use random_labels for non-image data."
            )
        hw = x.shape[-2] * x.shape[-1]
        if self.perm is None or self.perm.numel() != hw:
            self.perm = torch.randperm(hw, generator=torch.Generator().manual_seed(self.seed))
        flat = x.flatten(-2)
        return flat[..., self.perm.to(x.device)].view_as(x), y


#: ``--pruning.saliency_data`` NAME -> the corruption, built from (ablation seed, model)
CORRUPTIONS: dict[str, Callable[[int, nn.Module], Callable]] = {
    "random_labels": lambda seed, model: RandomLabels(seed, num_logits(model)),
    "shuffled_pixels": lambda seed, model: ShuffledPixels(seed),
}


def corruption(
    name: str | None, seed: int | None, model: nn.Module
) -> Callable[[tuple[Tensor, Tensor]], tuple[Tensor, Tensor]] | None:
    """The batch corruption ``name`` (None: none) for ``model``'s number of classes."""
    if name is None:
        return None
    assert seed is not None, "PruningConfig resolves the ablation seed"
    return CORRUPTIONS[name](seed, model)


def num_logits(model: nn.Module) -> int:
    """The number of classes: the ``out_features`` of the model's last ``nn.Linear`` (the
    classifier head of every backbone here)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(
            "saliency_data 'random_labels' reads the number of classes from the model's last "
            "nn.Linear, and this model has none: use shuffled_pixels, or no saliency_data."
        )
    return linears[-1].out_features


class _Replay:
    """Host batches moved to the device one at a time, on every iteration."""

    def __init__(self, batches: list[tuple[Tensor, Tensor]], device: torch.device) -> None:
        self.batches, self.device = batches, device

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return (to_device(b, self.device) for b in self.batches)


def seeded_loader(
    loader: DataLoader, seed: int, num_replicas: int = 1, rank: int = 0
) -> DataLoader:
    """A fresh loader over ``loader``'s dataset for the saliency passes: this rank's shard in an
    order fixed by ``seed``, with the same batch size, workers and collate function.

    The order depends on the sampler's epoch, which :class:`BatchStream` sets to the pass number,
    so every mask computation starts on the same batches and each further pass is shuffled anew.
    Full batches only (as in the official code), unless the shard is smaller than one batch: then
    its one short batch rather than none.
    """
    sampler = DistributedSampler(
        loader.dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed
    )
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=len(sampler) >= (loader.batch_size or 1),
    )
