"""Which tensors are prunable, exact global top-k selection, and mask bookkeeping.

A mask is a ``dict`` from a parameter name (as in ``model.named_parameters()``) to a ``bool``
tensor of the parameter's shape, ``True`` = kept. Every mask in the project is a global top-k:
exactly ``k`` weights kept, one threshold across all layers, ties at the threshold broken by
position in the concatenation order of :func:`prunable_parameters` (earlier wins), never by
keeping extra weights.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase

import numpy as np
import torch
from torch import Tensor, nn

from pruning_lightning.errors import ConfigError

PRUNABLE_MODULES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)

# Selection tuning (performance only; the result is exact whatever these are).
_SMALL = 1 << 16  # below this many scores, select directly on the whole buffer
_SAMPLE = 1 << 16  # sample size used to bracket the k-th largest score
_SIGMAS = 4.0  # bracket half-width in binomial standard deviations


def prunable_parameters(
    model: nn.Module,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> dict[str, nn.Parameter]:
    """The prunable tensors of ``model``: the ``.weight`` of every ``nn.Conv2d`` / ``nn.Linear``.

    This is the one place that decides what is prunable. ``include`` / ``exclude`` are
    ``fnmatch`` patterns on the parameter names that narrow the set (a name is kept if it matches
    some ``include`` pattern, when given, and no ``exclude`` pattern). The order is that of
    ``model.named_parameters()``; it fixes the concatenation order used to break ties.
    """
    weights = {
        id(m.weight)
        for m in model.modules()
        if isinstance(m, PRUNABLE_MODULES) and isinstance(getattr(m, "weight", None), nn.Parameter)
    }
    include = fnmatch_patterns("include", include)
    exclude = fnmatch_patterns("exclude", exclude)
    candidates = {name: p for name, p in model.named_parameters() if id(p) in weights}
    if candidates:
        check_patterns(model, list(candidates), include=include, exclude=exclude)
    chosen = {
        name: p
        for name, p in candidates.items()
        if (include is None or any(fnmatchcase(name, pat) for pat in include))
        and not any(fnmatchcase(name, pat) for pat in exclude or ())
    }
    if not chosen:
        raise ConfigError(
            f"no prunable layer in {type(model).__name__} (include={include}, exclude={exclude}): "
            "only the weights of nn.Conv2d and nn.Linear modules are prunable. Check that the "
            "model has such layers and that include/exclude patterns (fnmatch on names from "
            "model.named_parameters(), e.g. 'layer1.*.weight') leave at least one of them."
        )
    return chosen


def check_patterns(
    model: nn.Module, names: Sequence[str], **patterns: Sequence[str] | None
) -> None:
    """ConfigError for a pattern that matches none of the prunable ``names``: it would narrow
    nothing, silently (e.g. ``*.classifier.weight`` on a bare backbone, whose name has no dot)."""
    for arg, pats in patterns.items():
        for pat in pats or ():
            if any(fnmatchcase(name, pat) for name in names):
                continue
            nearest = difflib.get_close_matches(pat, names, n=3, cutoff=0.75)
            hint = f" (nearest: {', '.join(nearest)})" if nearest else ""
            raise ConfigError(
                f"{arg} pattern {pat!r} matches no prunable layer of {type(model).__name__}, so it "
                f"would be ignored: fix or drop it. The prunable tensors are {_few(list(names))}"
                f"{hint}; patterns are fnmatch on the whole names from model.named_parameters()."
            )


def fnmatch_patterns(arg: str, value: Sequence[str] | str | None) -> tuple[str, ...] | None:
    """``value`` as a tuple of patterns (one string is one pattern); else a ConfigError."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{arg} must be a list of fnmatch patterns (strings), got {value!r}.")
    return tuple(value)


class TopKSelector:
    """Exact global top-k over one flat score buffer, reused across the steps of a run.

    Scores are written into :attr:`scores` (through :meth:`views`); :meth:`select` then writes
    the mask of the ``k`` largest into a ``bool`` buffer. Selection is linear time and costs a
    handful of vectorised passes: a fixed seeded sample brackets the k-th largest value, one
    pass counts the scores above the bracket and extracts the few inside it, and only those are
    ranked exactly (``kthvalue``). When the bracket misses, the missed side is opened to
    infinity, which always contains the answer, so the result is exact in every case. Scores
    must be finite (callers check: see :func:`check_finite`).
    """

    def __init__(
        self,
        numel: int,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        scores: Tensor | None = None,
    ):
        """``scores``: a flat buffer to use (and overwrite) instead of allocating one."""
        self.numel = numel
        if scores is None:
            scores = torch.empty(numel, device=device, dtype=dtype)
        assert scores.shape == (numel,) and scores.is_contiguous()
        self.scores = scores
        self._sample: Tensor | None = None

    def views(self, shapes: Sequence[torch.Size], flat: Tensor | None = None) -> list[Tensor]:
        """Per-tensor views, in order, of ``flat`` (default: the score buffer)."""
        return split_flat(self.scores if flat is None else flat, shapes)

    def select(self, k: int, out: Tensor, allowed: Tensor | None = None) -> None:
        """Write into ``out`` (``bool``, flat) the mask of the ``k`` largest scores.

        ``allowed`` (``bool``, flat, not ``out``) restricts the choice to its ``True`` positions,
        which must number at least ``k``; it enters only through cheap boolean passes.
        """
        n = self.numel if allowed is None else int(torch.count_nonzero(allowed))
        if k > n:
            raise ValueError(f"cannot keep {k} of {n} allowed scores")
        if k == n:
            if allowed is None:
                out.fill_(True)
            else:
                out.copy_(allowed)
            return
        if k <= 0:
            out.fill_(False)
            return
        lo = hi = None
        if self.numel > _SMALL:
            lo, hi = self._bracket(k, n, allowed)
        self._select_in(k, out, lo, hi, allowed)

    def _select_in(
        self,
        k: int,
        out: Tensor,
        lo: Tensor | None,
        hi: Tensor | None,
        allowed: Tensor | None = None,
    ) -> None:
        while True:
            idx, cand, n_above = self._band(lo, hi, out, allowed)
            if n_above >= k:  # the k-th largest is above the bracket
                lo, hi = hi, None
            elif n_above + cand.numel() < k:  # ... below it
                lo, hi = None, lo
            else:
                break
        self._finish(k, out, idx, cand, n_above)

    def _bracket(
        self, k: int, n_allowed: int, allowed: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None]:
        x = self.scores
        if self._sample is None:
            self._sample = sample_positions(self.numel).to(x.device)
        sample = x[self._sample]
        if allowed is not None:
            sample = sample[allowed[self._sample]]
        return sample_bracket(sample, k, n_allowed)

    def _band(
        self, lo: Tensor | None, hi: Tensor | None, out: Tensor, allowed: Tensor | None
    ) -> tuple[Tensor, Tensor, int]:
        """Set ``out`` to the allowed scores above ``hi``; return the positions and values of
        the allowed scores in ``[lo, hi]`` (the band) and the count above.

        The band mask is allocated here and freed on return, so that it reuses memory released
        by the gradient pass instead of raising the peak.
        """
        x = self.scores
        if hi is None:
            out.fill_(False)
        else:
            torch.gt(x, hi, out=out)
            if allowed is not None:
                out.logical_and_(allowed)
        n_above = 0 if hi is None else int(torch.count_nonzero(out))
        if lo is None and hi is None:
            idx = (
                torch.arange(self.numel, device=x.device)
                if allowed is None
                else allowed.nonzero().squeeze(1)
            )
            return idx, x[idx], 0
        padded = torch.empty(-(-self.numel // 8) * 8, dtype=torch.bool, device=x.device)
        padded[self.numel :] = False
        band = padded[: self.numel]
        if lo is None:
            torch.logical_not(out, out=band)
        else:
            torch.ge(x, lo, out=band)
        if allowed is not None:
            band.logical_and_(allowed)
        if lo is not None:
            band.logical_xor_(out)  # above hi implies >= lo: xor removes it
        idx = _nonzero(padded, self.numel)
        return idx, x[idx], n_above

    def _finish(self, k: int, out: Tensor, idx: Tensor, cand: Tensor, n_above: int) -> None:
        """``out`` holds the n_above kept above the band: add the band's scores above the k-th
        largest, then the earliest of those equal to it."""
        rank = k - n_above  # 1-based rank, from the top, of the threshold within cand
        t = kth_smallest(cand, cand.numel() - rank + 1)
        greater = cand > t
        out[idx[greater]] = True
        take = rank - int(torch.count_nonzero(greater))  # >= 1 of the ties are kept
        out[idx[cand == t][:take]] = True


def _nonzero(padded: Tensor, numel: int) -> Tensor:
    """Ascending positions of the True values of ``padded[:numel]`` (tail False, length % 8 = 0).

    A sparse mask is scanned 8 bytes at a time (as int64 words), about twice as fast as a plain
    ``nonzero``; a dense one falls back to it.
    """
    if int(torch.count_nonzero(padded)) * 40 > numel:
        return padded[:numel].nonzero().squeeze(1)
    words = padded.view(torch.int64).nonzero().squeeze(1)
    pos = (words[:, None] * 8 + torch.arange(8, device=padded.device)).reshape(-1)
    return pos[padded[pos]]


def sample_positions(numel: int) -> Tensor:
    """The fixed, seeded positions whose scores bracket the k-th largest (CPU, int64)."""
    return torch.randint(numel, (_SAMPLE,), generator=torch.Generator().manual_seed(0))


def sample_bracket(sample: Tensor, k: int, n: int) -> tuple[Tensor | None, Tensor | None]:
    """Values ``(lo, hi)`` of ``sample`` (scores drawn from ``n``) that bracket the k-th largest
    of all ``n`` with high probability; None for a side left open."""
    m = sample.numel()
    if m == 0:
        return None, None
    p = k / n
    centre = p * m
    margin = _SIGMAS * math.sqrt(m * p * (1.0 - p)) + 2.0
    # 0-based ranks from the top; the i-th largest is the (m - i)-th smallest
    i_hi, i_lo = math.floor(centre - margin), math.ceil(centre + margin)
    hi = kth_smallest(sample, m - i_hi) if i_hi >= 0 else None
    lo = kth_smallest(sample, m - i_lo) if i_lo < m else None
    return lo, hi


def kth_smallest(x: Tensor, k: int) -> Tensor:
    """The k-th smallest value of the flat ``x`` (1-based), a 0-dim tensor on its device.

    On the CPU through ``numpy.partition``, about ten times faster than ``torch.kthvalue`` there.
    """
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
        return torch.from_numpy(np.partition(x.numpy(), k - 1)[k - 1 : k]).squeeze(0)
    return torch.kthvalue(x, k).values


def check_finite(scores: Tensor, method: str) -> None:
    """ConfigError when a score is NaN or infinite (one cheap reduction in the usual case)."""
    if torch.isfinite(scores.sum()) or bool(torch.isfinite(scores).all()):
        return  # a non-finite sum of finite scores is an overflow of the sum alone
    raise nonfinite_error(method)


def nonfinite_error(method: str) -> ConfigError:
    return ConfigError(
        f"{method} produced non-finite scores (NaN or inf). Likely causes: weights or inputs "
        "that already contain NaN/inf (e.g. early pruning after a diverged run: lower the "
        "learning rate), float16 overflow under amp_dtype (use bfloat16 or no autocast), or for "
        "grasp a temperature too small for the logits (the paper uses 200)."
    )


def global_topk_masks(scores: Mapping[str, Tensor], k: int) -> dict[str, Tensor]:
    """Keep exactly the ``k`` largest scores over all tensors (ties: earlier position wins)."""
    if not scores:
        raise ConfigError("global_topk_masks needs at least one score tensor.")
    tensors = list(scores.values())
    total = sum(t.numel() for t in tensors)
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= total:
        raise ConfigError(
            f"k must be an integer in [0, {total}] (the number of scores), got {k!r}."
        )
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    selector = TopKSelector(total, tensors[0].device, dtype)
    torch.cat([t.detach().reshape(-1).to(selector.scores) for t in tensors], out=selector.scores)
    check_finite(selector.scores, "global_topk_masks")
    flat = torch.empty(total, dtype=torch.bool, device=selector.scores.device)
    selector.select(k, flat)
    views = selector.views([t.shape for t in tensors], flat)
    return {name: v.clone() for name, v in zip(scores, views, strict=True)}


def apply_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> None:
    """Zero the pruned weights in place, outside autograd.

    ``masked_fill`` rather than a multiply: a non-finite pruned weight (``inf * 0`` is NaN) still
    ends at exactly 0.
    """
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            if name not in params:
                raise ConfigError(
                    f"mask for '{name}', which is not a parameter of {type(model).__name__}: "
                    "were the masks computed for another model?"
                )
            p = params[name]
            p.masked_fill_(~mask.to(device=p.device, dtype=torch.bool), 0)


def check_masks(
    model: nn.Module,
    masks: Mapping[str, Tensor],
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    *,
    complete: bool = True,
) -> None:
    """ConfigError unless ``masks`` are bool tensors of the right shapes for the model's prunable
    tensors: all of them, or (``complete=False``) some of them, the others counting as kept."""
    if not isinstance(masks, Mapping):
        raise ConfigError(
            f"masks must be a dict of parameter name -> bool tensor, got {type(masks).__name__}."
        )
    expected = prunable_parameters(model, include, exclude)
    missing = [n for n in expected if n not in masks] if complete else []
    unknown = [n for n in masks if n not in expected]
    if missing or unknown:
        raise ConfigError(
            f"the masks do not fit {type(model).__name__}: missing masks for {_few(missing)}; "
            f"masks for tensors that are not prunable here: {_few(unknown)}. Were they computed "
            "for another backbone, or with other include/exclude patterns?"
        )
    for name, p in expected.items():
        if name not in masks:
            continue
        mask = masks[name]
        if not isinstance(mask, Tensor):
            raise ConfigError(f"mask '{name}' is a {type(mask).__name__}, not a torch.Tensor.")
        if mask.shape != p.shape:
            raise ConfigError(
                f"mask '{name}' has shape {tuple(mask.shape)} but the weight has shape "
                f"{tuple(p.shape)}: the masks were computed for another architecture or width."
            )
        if mask.dtype != torch.bool:
            raise ConfigError(
                f"mask '{name}' has dtype {mask.dtype}; masks must be torch.bool (True = kept). "
                "Convert with mask.bool() if it holds 0/1 values."
            )


def _few(names: list[str], limit: int = 5) -> str:
    if not names:
        return "none"
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def split_flat(flat: Tensor, shapes: Sequence[torch.Size]) -> list[Tensor]:
    """Views of consecutive slices of the flat ``flat`` with the given shapes, in order."""
    out, offset = [], 0
    for shape in shapes:
        n = math.prod(shape)
        out.append(flat[offset : offset + n].view(shape))
        offset += n
    return out


def kept_counts(masks: Mapping[str, Tensor]) -> dict[str, tuple[int, int]]:
    """Name -> (kept, total) for each mask."""
    return {name: (int(torch.count_nonzero(m)), m.numel()) for name, m in masks.items()}


def kept_total(counts: Mapping[str, tuple[int, int]]) -> tuple[int, int]:
    """(kept, total) summed over the tensors of :func:`kept_counts`."""
    return sum(k for k, _ in counts.values()), sum(t for _, t in counts.values())


def collapsed_layers(masks: Mapping[str, Tensor]) -> list[str]:
    """Names of the tensors with no weight left (layer collapse: the network may be cut)."""
    return [name for name, (kept, _) in kept_counts(masks).items() if kept == 0]
