"""The statistics that turn a search's multi-seed results into a verdict a user can quote.

Pure numpy + ``scipy.stats``: no torch, no Ray. Three questions are answered here:

* Is neck A better than neck B? Pair their APs by seed, take a Student-t interval of the mean
  paired difference (:func:`paired_difference`) and say it in one sentence (:func:`verdict`).
* How small a difference can a confirmation with S seeds resolve at all
  (:func:`resolvable_difference`, :func:`pooled_seed_std`, :func:`spread_in_seed_stds`)?
* Does the cheap proxy rank necks like the full training does (:func:`kendall_tau`,
  :func:`spearman_rho`, with a paired :func:`bootstrap_interval`)?

Undefined quantities (a std from one value, an interval from one pair, a rank correlation of a
constant) are ``nan``, never an exception, so a report can print them; malformed input (empty
values, mismatched lengths, a confidence outside (0, 1)) raises ``ValueError``.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable, Dict, Iterable, Mapping, Sequence, Tuple

import numpy as np
from scipy import stats as _st

log = logging.getLogger(__name__)
NAN = float("nan")


def _check_confidence(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")
    return float(confidence)


def _vector(values: Iterable[float], what: str) -> np.ndarray:
    array = np.asarray(list(values), dtype=float)
    if array.ndim != 1:
        raise ValueError(f"{what} must be a flat sequence of numbers, got shape {array.shape}")
    return array


def _t_half_width(std: float, n: int, confidence: float) -> float:
    """Half-width of the two-sided Student-t interval of a mean of ``n`` values with sample ``std``."""
    return float(_st.t.ppf(0.5 + confidence / 2.0, n - 1) * std / math.sqrt(n))


def summary(values: Iterable[float]) -> Dict[str, float]:
    """n, mean, sample std (ddof=1), min and max of one neck's per-seed values.

    The std is ``nan`` for a single value: one seed says nothing about seed noise, and 0.0
    would read as "no noise".

    Raises:
        ValueError: ``values`` is empty.
    """
    array = _vector(values, "values")
    if array.size == 0:
        raise ValueError("summary() needs at least one value")
    return {"n": int(array.size), "mean": float(array.mean()),
            "std": float(array.std(ddof=1)) if array.size >= 2 else NAN,
            "min": float(array.min()), "max": float(array.max())}


def paired_difference(a: Mapping[int, float], b: Mapping[int, float], confidence: float = 0.95) -> Dict[str, Any]:
    """Mean paired difference ``a - b`` over the seeds both have, with a Student-t interval.

    Pairing by seed removes whatever the two runs of one seed share (data order, initialisation
    of the shared backbone); the t interval is the exact one for normal differences and the
    honest one for the 2–5 seeds a confirmation affords (a normal or bootstrap interval would
    be too narrow). Seeds only one side has are dropped.

    Args:
        a, b: seed -> AP of the two necks.
        confidence: two-sided coverage of the interval.

    Returns:
        ``{"n", "mean", "std", "low", "high", "confidence", "seeds"}``: ``n`` pairs, the mean and
        sample std of the differences, the interval (``nan`` when ``n < 2``; ``mean`` is ``nan``
        when no seed is shared) and the sorted seeds used.
    """
    confidence = _check_confidence(confidence)
    seeds = sorted(set(a) & set(b))
    diffs = np.array([float(a[s]) - float(b[s]) for s in seeds], dtype=float)
    n = len(seeds)
    mean = float(diffs.mean()) if n else NAN
    std = float(diffs.std(ddof=1)) if n >= 2 else NAN
    half = _t_half_width(std, n, confidence) if n >= 2 else NAN
    return {"n": n, "mean": mean, "std": std, "low": mean - half, "high": mean + half,
            "confidence": confidence, "seeds": seeds}


def verdict(diff: Mapping[str, Any], name_a: str, name_b: str) -> str:
    """One quotable sentence from a :func:`paired_difference` result.

    "beats" when the whole interval is above 0, "loses to" when it is below, "ties with" when
    it contains 0; with fewer than two pairs there is no interval and the sentence says so.
    """
    n = int(diff["n"])
    a, b = f"`{name_a}`", f"`{name_b}`"
    if n < 2:
        why = "no seed in common" if n == 0 else "only 1 paired seed"
        return f"{a} vs {b} cannot be decided: {why}, and an interval needs at least 2."
    level = f"{100 * float(diff.get('confidence', 0.95)):g}%"
    mean, low, high = float(diff["mean"]), float(diff["low"]), float(diff["high"])
    interval = f"{level} interval {low:+.3f} to {high:+.3f}"
    if low > 0:
        return f"{a} beats {b}: {mean:+.3f} AP ({interval}, {n} paired seeds)."
    if high < 0:
        return f"{a} loses to {b}: {mean:+.3f} AP ({interval}, {n} paired seeds)."
    return f"{a} ties with {b}: {mean:+.3f} AP, {interval} includes 0 ({n} paired seeds)."


def resolvable_difference(seed_std: float, seeds: int, confidence: float = 0.95) -> float:
    """Smallest mean paired difference a confirmation with ``seeds`` seeds can call non-zero.

    Assumes each neck's AP varies over seeds with std ``seed_std`` independently of the other
    neck, so one paired difference has std ``sqrt(2) * seed_std``. That is an upper bound:
    pairing by seed can only shrink it, and does when the two necks' seeds correlate. The
    answer is the half-width of the t interval, ``t_{S-1} * sqrt(2) * seed_std / sqrt(S)``:
    when the differences' std is as assumed, an observed mean difference larger than this has an
    interval that excludes 0. ``nan`` for S < 2.

    Raises:
        ValueError: a negative ``seed_std`` or a bad ``confidence``.
    """
    confidence = _check_confidence(confidence)
    if seed_std < 0:
        raise ValueError(f"seed_std must be >= 0, got {seed_std!r}")
    if seeds < 2:
        return NAN
    return _t_half_width(math.sqrt(2.0) * float(seed_std), int(seeds), confidence)


def _pair(x: Sequence[float], y: Sequence[float]) -> Tuple[np.ndarray, np.ndarray]:
    xs, ys = _vector(x, "x"), _vector(y, "y")
    if xs.size != ys.size:
        raise ValueError(f"x and y must pair up, got {xs.size} and {ys.size} values")
    return xs, ys


def _rank_defined(xs: np.ndarray, ys: np.ndarray) -> bool:
    return xs.size >= 2 and np.ptp(xs) > 0 and np.ptp(ys) > 0


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b (``scipy.stats.kendalltau``) of two paired scores, e.g. proxy vs full AP.

    tau-b because ties happen (necks that round to the same AP); tau is the fraction of
    concordant minus discordant pairs, i.e. how often the proxy orders two necks right.
    ``nan`` with fewer than 2 points or a constant input.
    """
    xs, ys = _pair(x, y)
    return float(_st.kendalltau(xs, ys).statistic) if _rank_defined(xs, ys) else NAN


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (``scipy.stats.spearmanr``); ``nan`` as :func:`kendall_tau`."""
    xs, ys = _pair(x, y)
    return float(_st.spearmanr(xs, ys).statistic) if _rank_defined(xs, ys) else NAN


def bootstrap_interval(x: Sequence[float], y: Sequence[float],
                       statistic: Callable[[np.ndarray, np.ndarray], float],
                       resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> Tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(x, y)`` over paired items (necks).

    Necks are resampled with replacement, keeping each neck's (x, y) pair together, because the
    uncertainty of a rank correlation comes from which necks were measured. Resamples where the
    statistic is ``nan`` (e.g. every draw the same neck) are skipped. Deterministic for a ``seed``.

    Returns:
        ``(low, high)``; ``(nan, nan)`` with fewer than 2 items or no usable resample.
    """
    confidence = _check_confidence(confidence)
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples!r}")
    xs, ys = _pair(x, y)
    if xs.size < 2:
        return NAN, NAN
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, xs.size, size=(int(resamples), xs.size))
    values = np.array([statistic(xs[idx], ys[idx]) for idx in draws], dtype=float)
    values = values[~np.isnan(values)]
    if values.size < resamples:
        log.debug("bootstrap: %d of %d resamples gave nan and were skipped", resamples - values.size, resamples)
    if values.size == 0:
        return NAN, NAN
    low, high = np.quantile(values, [0.5 - confidence / 2.0, 0.5 + confidence / 2.0])
    return float(low), float(high)


def pooled_seed_std(groups: Iterable[Sequence[float]]) -> float:
    """Pooled within-neck seed std: ``sqrt(sum((n_i - 1) * var_i) / sum(n_i - 1))``.

    Each neck with at least 2 seeds contributes its sample variance weighted by its degrees of
    freedom, so seed noise is estimated from every confirmed neck without letting differences
    between necks leak in. ``nan`` if no group has 2 values.
    """
    ss, dof = 0.0, 0
    for group in groups:
        values = _vector(group, "each group")
        if values.size >= 2:
            ss += float(((values - values.mean()) ** 2).sum())
            dof += values.size - 1
    return math.sqrt(ss / dof) if dof else NAN


def spread_in_seed_stds(means: Sequence[float], seed_std: float) -> float:
    """The spread across necks in seed standard deviations: ``(max - min of means) / seed_std``.

    ``nan`` when ``seed_std`` is not a positive finite number.

    Raises:
        ValueError: ``means`` is empty.
    """
    values = _vector(means, "means")
    if values.size == 0:
        raise ValueError("spread_in_seed_stds() needs at least one mean")
    if not (math.isfinite(seed_std) and seed_std > 0):
        return NAN
    return float(np.ptp(values)) / float(seed_std)
