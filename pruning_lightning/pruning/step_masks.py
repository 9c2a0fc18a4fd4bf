"""The intermediate masks m_1..m_T of a run, bit-packed: one bit per weight per step.

:class:`StepMaskWriter` is a step hook (``run_pruning(..., on_step=writer)``): it packs each
step's flat mask on its device (``ceil(N/8)`` bytes, the layout of ``numpy.packbits``), moves only
the packed bytes to the host and never holds a full bool mask, so 60 steps of a 23.5M-weight
ResNet-50 take 60 x 2.9 MB. :meth:`StepMaskWriter.save` writes them with ``torch.save`` as plain
tensors and lists (``torch.load(weights_only=True)`` reads them); :func:`load_step_masks` unpacks
them back into ``name -> bool tensor`` dicts, one per step.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pruning_lightning.errors import ConfigError
from pruning_lightning.pruning.masks import split_flat
from pruning_lightning.pruning.progressive import StepEvent

STEP_MASKS = "step_masks.pt"  # the file name the callback writes into the run's log dir
FORMAT = "pruning_lightning.step_masks/1"

_BIT_WEIGHTS = (128, 64, 32, 16, 8, 4, 2, 1)  # numpy.packbits' order: first element = high bit


def pack_bits(flat: Tensor) -> Tensor:
    """A flat bool tensor as ``ceil(N/8)`` uint8 on the host, bit for bit ``numpy.packbits``."""
    pad = -flat.numel() % 8
    bits = torch.nn.functional.pad(flat.reshape(-1).to(torch.uint8), (0, pad)).view(-1, 8)
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=flat.device)
    return (bits * weights).sum(dim=1, dtype=torch.uint8).cpu()


class StepMaskWriter:
    """Collects every step's mask as packed bits; a step hook for :func:`run_pruning`."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.shapes: list[list[int]] = []
        self.steps: list[int] = []
        self.bits: list[Tensor] = []

    def __call__(self, event: StepEvent) -> None:
        if not self.names:
            self.names = list(event.masks)
            self.shapes = [list(m.shape) for m in event.masks.values()]
        self.steps.append(event.step)
        self.bits.append(pack_bits(event.flat))

    def save(self, path: str | Path) -> None:
        """One file: names, shapes, steps and a (T, ceil(N/8)) uint8 tensor of packed masks."""
        numel = sum(math.prod(s) for s in self.shapes)
        bits = torch.stack(self.bits) if self.bits else torch.empty(0, 0, dtype=torch.uint8)
        state = {
            "format": FORMAT,
            "names": self.names,
            "shapes": self.shapes,
            "numel": numel,
            "steps": self.steps,
            "bits": bits,
        }
        torch.save(state, path)


def load_step_masks(path: str | Path) -> list[dict[str, Tensor]]:
    """The masks m_1..m_T a :class:`StepMaskWriter` saved: one ``name -> bool tensor`` per step."""
    not_step_masks = ConfigError(
        f"{path} is not a step-mask file. Point it at the step_masks.pt that "
        "--pruning.save_step_masks writes into a run's log dir."
    )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a missing, corrupt or foreign file: torch's own advice would mislead
        raise not_step_masks from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise not_step_masks
    names, shapes, numel, bits = (state.get(k) for k in ("names", "shapes", "numel", "bits"))
    if not (isinstance(names, list) and isinstance(shapes, list) and len(names) == len(shapes)):
        raise not_step_masks
    sizes = [torch.Size(s) for s in shapes]
    if (
        not isinstance(bits, Tensor)
        or bits.dtype != torch.uint8
        or bits.dim() != 2
        or sum(s.numel() for s in sizes) != numel
        or bits.shape[1] != (numel + 7) // 8
    ):
        raise not_step_masks
    masks = []
    for row in bits.numpy():
        flat = torch.from_numpy(np.unpackbits(row, count=numel).astype(bool))
        parts = split_flat(flat, sizes)
        masks.append(dict(zip(names, parts, strict=True)))
    return masks
