"""Fused CPU kernels for the gradient criteria (SNIP, Iterative SNIP, FORCE): rank, mask, reload.

On the CPU a progressive step is bound by memory traffic: every whole-array pass over the 20M
scores of a VGG-19 costs milliseconds, and torch's comparisons into ``bool`` tensors run as
scalar loops. These numba kernels do a step in two passes and never store the scores
``|theta * grad|``: the first reads ``(theta, grad)``, counts the scores above a sampled bracket
and leaves one byte per weight (above / inside / below); the few inside are ranked exactly; the
second reads those bytes and theta and writes the mask and the next effective weights
``theta * m`` together.

The result is the one :class:`~pruning_lightning.pruning.masks.TopKSelector` gives on the same
scores (same threshold, ties by position), so the two are interchangeable; tests compare them.
CUDA, float64 weights and per-step recording use the torch path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numba
import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

from pruning_lightning.pruning.masks import (
    _SMALL,
    nonfinite_error,
    sample_bracket,
    sample_positions,
)

_BLOCK = 1 << 14  # elements per parallel work item; a multiple of 8 (band scan by 8-byte words)


# Every kernel works block by block on slices: indexing a slice from 0 lets LLVM drop numba's
# negative-index wraparound and vectorise the loop (2x faster than indexing the whole array).
# The first pass leaves one byte per weight: 2 = above the bracket (kept), 1 = inside it, 0 = not
# allowed or below (pruned), and, while a block is still in cache, copies the positions and
# scores of those inside to the block's slots; the second pass reads the bytes and theta only.
_ABOVE, _INSIDE = 2, 1
_INSIDE_BITS = np.uint64(0x0101010101010101)  # the low bit of each of eight codes
_SLOTS = _BLOCK // 16  # slots per block; a denser band (a missed bracket) is re-read later


@njit(inline="always")
def _collect(th, g, c, base, out_idx, out_val, j):  # pragma: no cover - compiled
    """Append the positions (+ ``base``) and scores of a block's codes inside, from ``j``."""
    words = c[: c.size // 8 * 8].view(np.uint64)  # skip eight codes at a time
    for w in range(words.size):
        if words[w] & _INSIDE_BITS:
            for i in range(8 * w, 8 * w + 8):
                if c[i] == _INSIDE:
                    out_idx[j] = base + i
                    out_val[j] = abs(th[i] * g[i])
                    j += 1
    for i in range(words.size * 8, c.size):
        if c[i] == _INSIDE:
            out_idx[j] = base + i
            out_val[j] = abs(th[i] * g[i])
            j += 1
    return j


@njit(parallel=True, cache=True)
def _classify(theta, grad, allowed, lo, hi, code, offset, slot_idx, slot_val):  # pragma: no cover
    """Code each score against [lo, hi]; count those above and (per block) those inside."""
    nblocks = (theta.size + _BLOCK - 1) // _BLOCK
    above = np.zeros(nblocks, np.int64)
    inside = np.zeros(nblocks, np.int64)
    bad = np.zeros(nblocks, np.int64)
    for b in prange(nblocks):
        block = slice(b * _BLOCK, (b + 1) * _BLOCK)
        th, g, c = theta[block], grad[block], code[block]
        n_above = 0
        n_inside = 0
        n_bad = 0
        if allowed is None:
            for i in range(th.size):
                s = abs(th[i] * g[i])
                n_bad += not s < np.inf  # nan or inf
                up = s > hi
                mid = (s >= lo) ^ up  # lo <= hi: above hi is above lo
                n_above += up
                n_inside += mid
                c[i] = np.uint8(up) * np.uint8(_ABOVE) + np.uint8(mid)
        else:
            ok = allowed[block]
            for i in range(th.size):
                s = abs(th[i] * g[i])
                n_bad += not s < np.inf
                up = s > hi
                mid = ((s >= lo) ^ up) & ok[i]
                up = up & ok[i]
                n_above += up
                n_inside += mid
                c[i] = np.uint8(up) * np.uint8(_ABOVE) + np.uint8(mid)
        if 0 < n_inside <= _SLOTS:
            _collect(th, g, c, offset + b * _BLOCK, slot_idx, slot_val, b * _SLOTS)
        above[b] = n_above
        inside[b] = n_inside
        bad[b] = n_bad
    return above.sum(), inside, bad.sum()


@njit(parallel=True, cache=True)
def _extract(theta, grad, code, inside, offset, slot_idx, slot_val, out_idx, out_val):
    """Write the positions (+ ``offset``) and scores of the codes inside, in ascending order:
    from the slots, or from the codes for a block with more than fit."""  # pragma: no cover
    nblocks = inside.size
    starts = np.zeros(nblocks, np.int64)
    for b in range(1, nblocks):
        starts[b] = starts[b - 1] + inside[b - 1]
    for b in prange(nblocks):
        n = inside[b]
        j = starts[b]
        if 0 < n <= _SLOTS:
            out_idx[j : j + n] = slot_idx[b * _SLOTS : b * _SLOTS + n]
            out_val[j : j + n] = slot_val[b * _SLOTS : b * _SLOTS + n]
        elif n > _SLOTS:
            block = slice(b * _BLOCK, (b + 1) * _BLOCK)
            _collect(theta[block], grad[block], code[block], offset + b * _BLOCK,
                     out_idx, out_val, j)  # fmt: skip


@njit(parallel=True, cache=True)
def _apply(theta, code, mask, weights):  # pragma: no cover - compiled
    """Keep the codes above: mask and weights = theta * mask (as load writes it), each unless
    None."""
    nblocks = (theta.size + _BLOCK - 1) // _BLOCK
    for b in prange(nblocks):
        block = slice(b * _BLOCK, (b + 1) * _BLOCK)
        th, c = theta[block], code[block]
        if weights is not None:
            w = weights[block]
            for i in range(th.size):
                w[i] = th[i] * np.float32(c[i] == _ABOVE)
        if mask is not None:
            m = mask[block]
            for i in range(th.size):
                m[i] = c[i] == _ABOVE


@njit(cache=True)
def _keep(theta, idx, val, t, last_tie, offset, mask, weights):  # pragma: no cover - compiled
    """Also keep the band's weights above ``t``, and those equal to it up to ``last_tie``."""
    for j in range(idx.size):
        if val[j] > t or (val[j] == t and idx[j] <= last_tie):
            p = idx[j] - offset
            if weights is not None:
                weights[p] = theta[p]
            if mask is not None:
                mask[p] = True


@njit(cache=True)
def _sample(theta, grad, allowed, local, out):  # pragma: no cover - compiled
    """Scores at the (sorted) positions ``local`` that are allowed, packed; returns how many."""
    j = 0
    for p in local:
        if allowed is None or allowed[p]:
            out[j] = abs(theta[p] * grad[p])
            j += 1
    return j


class FusedTopK:
    """One step of a gradient criterion on the CPU: keep the top k of ``|theta * grad|``.

    ``theta``: the prunable tensors (float32, CPU). ``weights``: the flat float32 buffer of the
    effective weights, rewritten as ``theta * m`` by every :meth:`step`.
    """

    def __init__(self, theta: Sequence[Tensor], weights: Tensor):
        self.theta = [t.detach().reshape(-1).numpy() for t in theta]
        sizes = [a.size for a in self.theta]
        self.numel = sum(sizes)
        self.offsets = np.cumsum([0, *sizes[:-1]])
        self.weights = np.split(weights.detach().numpy(), self.offsets[1:])
        self.code = [np.empty(n, np.uint8) for n in sizes]
        slots = [(n + _BLOCK - 1) // _BLOCK * _SLOTS for n in sizes]
        self.slot_idx = [np.empty(n, np.int64) for n in slots]
        self.slot_val = [np.empty(n, np.float32) for n in slots]
        # TopKSelector's sample positions, sorted (the same values, read in memory order)
        sample = np.sort(sample_positions(self.numel).numpy())
        parts = np.split(sample, np.searchsorted(sample, self.offsets[1:]))
        self.sample_local = [s - off for s, off in zip(parts, self.offsets, strict=True)]
        numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))

    def step(
        self,
        grads: Sequence[Tensor],
        k: int,
        method: str,
        out: Tensor | None = None,
        allowed: Tensor | None = None,
        n_allowed: int | None = None,
        reload: bool = True,
    ) -> None:
        """Keep the top ``k`` of ``|theta * grad|`` among ``allowed`` (``n_allowed`` of them;
        default all): write m into ``out`` (flat bool) unless None, and, if ``reload``, set the
        effective weights to ``theta * m`` for the next step."""
        weights = self.weights if reload else [None] * len(self.weights)
        g = [x.detach().reshape(-1).numpy() for x in grads]
        mask = [None] * len(g) if out is None else np.split(out.numpy(), self.offsets[1:])
        allow = [None] * len(g) if allowed is None else np.split(allowed.numpy(), self.offsets[1:])
        n = self.numel if allowed is None else n_allowed
        if k <= 0 or k >= n:  # nothing to rank: every code below (k <= 0) or above
            edge = -math.inf if k > 0 else math.inf
            _, _, bad = self._classify(g, allow, edge, edge)
            if bad:
                raise nonfinite_error(method)
            self._apply(mask, weights)
            return
        lo = hi = None
        if self.numel > _SMALL:
            lo, hi = sample_bracket(self._sample_scores(g, allow), k, n)
        for _ in range(3):  # a miss opens one side; [lo, inf) or (-inf, hi] then holds it
            n_above, inside, bad = self._classify(g, allow, lo, hi)
            if bad:
                raise nonfinite_error(method)
            counts = [int(c.sum()) for c in inside]
            n_band = sum(counts)
            if n_above < k <= n_above + n_band:
                break
            lo, hi = (hi, None) if n_above >= k else (None, lo)  # missed: open that side
        else:  # pragma: no cover - counts are exact
            raise AssertionError(f"no bracket holds the {k}-th largest of {n} scores")
        idx, val = self._extract(g, inside, counts)
        # the k - n_above largest of the band are kept too: those above the threshold, then the
        # earliest of those equal to it
        rank = k - n_above
        t = np.partition(val, n_band - rank)[n_band - rank]
        ties = np.flatnonzero(val == t)
        last_tie = idx[ties[rank - int(np.count_nonzero(val > t)) - 1]]
        self._apply(mask, weights)
        start = 0
        for i, count in enumerate(counts):
            part = slice(start, start + count)
            _keep(self.theta[i], idx[part], val[part], t, last_tie, self.offsets[i], mask[i],
                  weights[i])  # fmt: skip
            start += count

    def _sample_scores(self, g: list[np.ndarray], allow: list[np.ndarray | None]) -> Tensor:
        out = np.empty(sum(s.size for s in self.sample_local), np.float32)
        n = 0
        for local, theta, grad, a in zip(self.sample_local, self.theta, g, allow, strict=True):
            n += _sample(theta, grad, a, local, out[n : n + local.size])
        return torch.from_numpy(out[:n])

    def _classify(self, g, allow, lo, hi) -> tuple[int, list[np.ndarray], int]:
        lo = np.float32(-math.inf if lo is None else float(lo))
        hi = np.float32(math.inf if hi is None else float(hi))
        n_above = bad = 0
        inside = []
        for i, (theta, grad) in enumerate(zip(self.theta, g, strict=True)):
            above, c, b = _classify(theta, grad, allow[i], lo, hi, self.code[i], self.offsets[i],
                                    self.slot_idx[i], self.slot_val[i])  # fmt: skip
            n_above += int(above)
            bad += int(b)
            inside.append(c)
        return n_above, inside, bad

    def _extract(self, g, inside, counts: list[int]) -> tuple[np.ndarray, np.ndarray]:
        idx = np.empty(sum(counts), np.int64)
        val = np.empty(sum(counts), np.float32)
        start = 0
        for i, (theta, grad, c, count) in enumerate(
            zip(self.theta, g, inside, counts, strict=True)
        ):
            part = slice(start, start + count)
            _extract(theta, grad, self.code[i], c, self.offsets[i], self.slot_idx[i],
                     self.slot_val[i], idx[part], val[part])  # fmt: skip
            start += count
        return idx, val

    def _apply(self, mask: list[np.ndarray | None], weights: list[np.ndarray | None]) -> None:
        for theta, code, m, w in zip(self.theta, self.code, mask, weights, strict=True):
            _apply(theta, code, m, w)


def supported(device: torch.device, weights: Tensor | None) -> bool:
    """Whether :class:`FusedTopK` applies: CPU, and the effective weights in one flat float32
    buffer (``MaskedNetwork.flat``, which exists only when every prunable tensor is float32)."""
    return device.type == "cpu" and weights is not None


def run_steps_fused(
    gradients: Callable[[], Sequence[Tensor]],
    theta: Sequence[Tensor],
    weights: Tensor,
    kept: Sequence[int],
    *,
    method: str,
    resurrect: bool,
    progress: Callable[[int, int], None] | None = None,
) -> list[Tensor]:
    """The step loop of :func:`~pruning_lightning.pruning.progressive.run_steps` for a gradient
    criterion, fused: ``gradients()`` returns dL/dw at the current effective ``weights`` (set to
    theta by the caller before the first step). Returns the final mask, one view per tensor."""
    selector = FusedTopK(theta, weights)
    # iter_snip ranks among the weights of m_{t-1}: two buffers alternate
    buffers = [torch.empty(selector.numel, dtype=torch.bool) for _ in range(1 if resurrect else 2)]
    prev: Tensor | None = None
    for t, k in enumerate(kept, 1):
        cur = buffers[t % len(buffers)]
        restrict = not resurrect and prev is not None
        selector.step(
            gradients(), k, method,
            # FORCE needs no mask but the last: the effective weights carry m_t to the next step
            out=cur if t == len(kept) or not resurrect else None,
            allowed=prev if restrict else None,
            n_allowed=kept[t - 2] if restrict else None,
            reload=t < len(kept),  # no step needs the last effective weights
        )  # fmt: skip
        prev = cur
        if progress is not None:
            progress(t, len(kept))
    assert prev is not None
    views = torch.split(prev, [x.numel() for x in theta])
    return [m.view(x.shape) for m, x in zip(views, theta, strict=True)]
