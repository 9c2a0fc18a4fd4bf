"""Kept-count schedules and the step loop shared by every criterion.

A run is T steps; step t scores the weights given the previous mask m_{t-1} (m_0 = all kept) and
keeps the top k_t. One-shot criteria are the case T = 1. FORCE ranks all weights (a weight pruned
earlier may come back); Iterative SNIP and SynFlow rank only the weights still kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from pruning_lightning.errors import ConfigError
from pruning_lightning.pruning.masks import TopKSelector, check_finite

SCHEDULES = ("exp", "linear")

# score_fn(step, previous mask per tensor or None for m_0, score views to fill in place) -> the
# FORCE saliency S(m_{t-1}) when the step computed it on the way (free for gradient criteria),
# else None
ScoreFn = Callable[[int, list[Tensor] | None, list[Tensor]], float | None]
ProgressFn = Callable[[int, int], None]


@dataclass
class StepRecord:
    """What step t did (docs/METHODS.md "Quantities the paper analyses"; its Figures 4, 9, 13)."""

    step: int  # t = 1..T
    kept: dict[str, int]  # kept count per prunable tensor after step t
    pruned: int  # kept in m_{t-1}, not in m_t
    recovered: int  # not in m_{t-1}, kept in m_t (always 0 for iter_snip)
    saliency: float | None  # FORCE saliency S(m_t) ("pruning" view), None when not recorded


@dataclass
class StepEvent:
    """What a step hook (``run_steps(on_step=...)``, ``run_pruning(on_step=...)``) receives for
    step t, once S(m_t) is known: right after step t+1 scored m_t (before m_t is overwritten), and
    after the loop for the last step. The tensors are views of the loop's buffers: read or copy
    them during the call, never keep them."""

    step: int  # t = 1..T
    flat: Tensor  # m_t as one flat bool tensor, in the prunable order
    masks: dict[str, Tensor]  # name -> m_t's view of that tensor (shape of the weight)
    kept: dict[str, int]  # kept count per prunable tensor in m_t
    saliency: float | None  # the recorded FORCE saliency S(m_t) (record=True), else None


StepHook = Callable[[StepEvent], None]


def kept_schedule(total: int, density: float, steps: int, schedule: str = "exp") -> list[int]:
    """Kept counts k_1..k_T: exp ``N * d**(t/T)`` or linear ``N * (1 - t*(1-d)/T)``.

    Each value is a float64 rounded by Python's ``round`` (to the nearest integer, halves to
    even); the last is set to ``round(d * N)`` exactly, the one-shot count, whatever the
    floating-point error of the formula at t = T.
    """
    if schedule not in SCHEDULES:
        raise ConfigError(f"Unknown schedule '{schedule}'. Choose one of: {', '.join(SCHEDULES)}.")
    kept = []
    for t in range(1, steps + 1):
        frac = density ** (t / steps) if schedule == "exp" else 1.0 - t * (1.0 - density) / steps
        kept.append(min(total, max(0, round(total * frac))))
    kept[-1] = round(density * total)
    return kept


def run_steps(
    score_fn: ScoreFn,
    kept: Sequence[int],
    names: Sequence[str],
    shapes: Sequence[torch.Size],
    device: torch.device,
    *,
    method: str,
    resurrect: bool,
    dtype: torch.dtype = torch.float32,
    record: bool = False,
    final_saliency: Callable[[list[Tensor]], float] | None = None,
    progress: ProgressFn | None = None,
    buffer: Tensor | None = None,
    invert: bool = False,
    on_step: StepHook | None = None,
) -> tuple[list[Tensor], list[StepRecord]]:
    """Run the steps; return the final mask (flat-buffer views, per tensor) and the records.

    ``resurrect=False`` ranks only the weights kept in m_{t-1}. With ``record``, a saliency the
    score function returns for m_{t-1} goes into step t-1's record, and ``final_saliency``
    computes S of the last mask (one more pass). ``buffer``: a flat score buffer to reuse (see
    TopKSelector). ``invert`` (the ``invert`` ablation): keep the k *lowest*-ranked at every step
    (among the weights still kept when ``resurrect=False``), through the same exact selection
    on the negated scores, so kept counts and tie-breaking (earliest position) are unchanged.
    ``on_step`` gets a read-only :class:`StepEvent` for every step, in order.
    """
    total = sum(s.numel() for s in shapes)
    selector = TopKSelector(total, device, dtype, scores=buffer)
    score_views = selector.views(shapes)
    # m_{t-1} is dead once scored, unless the ranking is restricted to it or recording compares
    # it with m_t: then two buffers alternate, otherwise m_t overwrites it.
    n_buffers = 2 if record or not resurrect else 1
    buffers = [torch.empty(total, dtype=torch.bool, device=device) for _ in range(n_buffers)]
    prev: Tensor | None = None
    records: list[StepRecord] = []
    for t, k in enumerate(kept, 1):
        prev_views = None if prev is None else selector.views(shapes, prev)
        saliency = score_fn(t, prev_views, score_views)
        if on_step is not None and prev is not None:  # m_{t-1} is still intact: report it
            on_step(_event(t - 1, names, prev_views, prev, records, saliency if record else None))
        check_finite(selector.scores, method)
        if invert:
            selector.scores.neg_()  # a score buffer shared with the weights is rewritten next step
        cur = buffers[t % len(buffers)]
        selector.select(k, cur, allowed=None if resurrect or prev is None else prev)
        if record:
            if saliency is not None and records:
                records[-1].saliency = saliency
            n_prev = sum(records[-1].kept.values()) if records else total
            records.append(_record(t, names, selector.views(shapes, cur), cur, prev, n_prev))
        prev = cur
        if progress is not None:
            progress(t, len(kept))
    assert prev is not None
    final = selector.views(shapes, prev)
    if record and final_saliency is not None:
        records[-1].saliency = final_saliency(final)
    if on_step is not None:
        saliency = records[-1].saliency if record else None
        on_step(_event(len(kept), names, final, prev, records, saliency))
    return final, records


def _event(
    t: int,
    names: Sequence[str],
    views: list[Tensor],
    flat: Tensor,
    records: list[StepRecord],
    saliency: float | None,
) -> StepEvent:
    """Step t's event; its kept counts are the record's when recording, else counted here."""
    if records:
        kept = records[t - 1].kept
    else:
        counts = torch.stack([torch.count_nonzero(v) for v in views]).tolist()
        kept = dict(zip(names, counts, strict=True))
    masks = dict(zip(names, views, strict=True))
    return StepEvent(step=t, flat=flat, masks=masks, kept=kept, saliency=saliency)


def _record(
    t: int,
    names: Sequence[str],
    views: list[Tensor],
    cur: Tensor,
    prev: Tensor | None,
    n_prev: int,
) -> StepRecord:
    counts = torch.stack([torch.count_nonzero(v) for v in views]).tolist()
    n_cur = sum(counts)
    if prev is None:  # m_0 keeps everything
        common = n_cur
    else:
        common = int(torch.count_nonzero(prev & cur))
    return StepRecord(
        step=t,
        kept=dict(zip(names, counts, strict=True)),
        pruned=n_prev - common,
        recovered=n_cur - common,
        saliency=None,
    )
