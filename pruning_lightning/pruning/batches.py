"""The saliency batches: one seeded, sharded loader per mask computation, drawn through one
iterator and moved to the device one batch at a time."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import Tensor
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

    def __init__(self, data: Iterable, device: torch.device):
        self.data, self.device = data, device
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
        return split_batch(batch)

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
