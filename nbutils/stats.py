"""Summaries with uncertainty: mean ± sd, a bootstrap 95 % CI of a mean (resampling clusters, or the
subjects of crossed pairs) and of a difference of means, and a t-interval of a mean over a few runs
(e.g. seeds)."""
from __future__ import annotations

import numpy as np
import pandas as pd


def bootstrap_mean(values: np.ndarray, groups=None, n_boot: int = 2000, level: float = 0.95,
                   seed: int = 0) -> tuple[float, float, float]:
    """mean(values) and its percentile bootstrap CI. ``groups``: one id per value (e.g. the
    subject); whole groups are resampled, since values of one group are not independent (all
    slices of one anatomy, in every scanner, stand or fall together). Without: each value alone."""
    v = np.asarray(values, np.float64)
    if len(v) == 0:
        raise ValueError("bootstrap_mean needs a non-empty sample")
    ids = np.arange(len(v)) if groups is None else _ids(groups)
    if len(ids) != len(v):
        raise ValueError(f"one group per value: {len(v)} values, {len(ids)} groups")
    if ids.max() == 0:
        return float(v.mean()), np.nan, np.nan  # one group: nothing to resample
    sums, counts = np.bincount(ids, weights=v), np.bincount(ids).astype(np.float64)
    pick = np.random.default_rng(seed).integers(0, len(sums), (n_boot, len(sums)))
    boots = sums[pick].sum(1) / counts[pick].sum(1)
    return (float(v.mean()), *_interval(boots, level))


def bootstrap_crossed(values: np.ndarray, clusters, n_boot: int = 2000, level: float = 0.95,
                      seed: int = 0) -> tuple[float, float, float]:
    """mean(values) and its percentile bootstrap CI when each value is made of several clusters:
    ``clusters`` (N, R) holds, per value, the cluster (e.g. the subject) of each of the R images it
    compares. The clusters are resampled with replacement, and each value weighs the product of
    how often its R clusters were drawn (the product-weight bootstrap of crossed designs, Owen
    2007). A random pair of slices from a few subjects shares its subjects with many other pairs;
    resampling the pairs as if they were independent gives too narrow an interval. With R = 1 this
    is :func:`bootstrap_mean` with groups."""
    v = np.asarray(values, np.float64)
    ids = np.asarray(clusters)
    ids = ids[:, None] if ids.ndim == 1 else ids
    if len(v) == 0 or ids.shape[0] != len(v):
        raise ValueError(f"one row of clusters per value: {len(v)} values, {ids.shape[0]} rows")
    codes = _ids(ids.ravel()).reshape(ids.shape)
    names = np.unique(codes)
    if len(names) == 1:
        return float(v.mean()), np.nan, np.nan  # one cluster: nothing to resample
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(names), (n_boot, len(names)))
    counts = np.stack([np.bincount(p, minlength=len(names)) for p in pick]).astype(np.float64)
    weights = counts[:, codes[:, 0]]  # (n_boot, N)
    for r in range(1, codes.shape[1]):
        weights *= counts[:, codes[:, r]]
    total = weights.sum(1)
    keep = total > 0  # a draw that left out every value's clusters says nothing
    boots = (weights[keep] @ v) / total[keep]
    return (float(v.mean()), *_interval(boots, level))


def bootstrap_diff(a: np.ndarray, b: np.ndarray, paired: bool = False, n_boot: int = 2000,
                   level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """mean(a) - mean(b) and its percentile bootstrap CI.

    ``paired``: a[i] and b[i] are measured on the same unit (the same slice or the same
    random pair), so units are resampled together; otherwise each sample is resampled on its own."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) == 0 or len(b) == 0:
        raise ValueError("bootstrap_diff needs two non-empty samples")
    if paired and len(a) != len(b):
        raise ValueError(f"paired samples must have the same length, got {len(a)} and {len(b)}")
    rng = np.random.default_rng(seed)
    if paired:
        d = a - b
        boots = d[rng.integers(0, len(d), (n_boot, len(d)))].mean(1)
    else:
        boots = (a[rng.integers(0, len(a), (n_boot, len(a)))].mean(1)
                 - b[rng.integers(0, len(b), (n_boot, len(b)))].mean(1))
    return (float(a.mean() - b.mean()), *_interval(boots, level))


def t_interval(values, level: float = 0.95) -> tuple[float, float, float]:
    """mean(values) and its Student-t ``level`` interval (NaN bounds for fewer than two values): for
    a few independent runs, e.g. one paired difference per seed, where a bootstrap has too few
    values to resample."""
    from scipy import stats

    v = np.asarray(values, np.float64)
    if len(v) == 0:
        raise ValueError("t_interval needs a non-empty sample")
    if len(v) < 2:
        return float(v.mean()), np.nan, np.nan
    half = stats.t.ppf((1 + level) / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return float(v.mean()), float(v.mean() - half), float(v.mean() + half)


def _ids(groups) -> np.ndarray:
    """Integer ids 0 … G-1 of group labels; a missing label (NaN, None) is refused."""
    ids = pd.factorize(np.asarray(groups, dtype=object))[0]
    if (ids < 0).any():
        raise ValueError(f"{int((ids < 0).sum())} value(s) have no group (subject): every value needs one")
    return ids


def _interval(boots: np.ndarray, level: float) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap replicates."""
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(boots, [tail, 100 - tail])
    return float(lo), float(hi)


def compare(df: pd.DataFrame, value: str, reference: str, by: str = "method", unit: str | None = None,
            within: str | None = None, seed: int = 0, clusters: list[str] | None = None) -> pd.DataFrame:
    """One row per group of ``by`` (per stratum of ``within`` when given): n, mean, sd, and
    the ``reference`` group's mean minus this group's, with a bootstrap 95 % CI. With ``unit``
    the rows of both groups sharing a unit id are matched and resampled together (paired).
    ``clusters`` (with ``unit``): the columns naming the subject of each image a row compares;
    subjects are resampled, not units (:func:`bootstrap_crossed`), over the clusters of both rows
    of a matched unit (a column that is the same in both counted once). A group whose units do not all
    match the reference's is refused: its difference would not be the difference of the means shown."""
    if clusters and not unit:
        raise ValueError("clusters resample the subjects of matched units: give unit too")
    if within:
        return pd.concat([compare(g, value, reference, by, unit, seed=seed, clusters=clusters).assign(**{within: w})
                          [[within, by, "n", "mean ± sd", "mean", "sd", f"{reference} − this", "CI low", "CI high"]]
                          for w, g in df.groupby(within)], ignore_index=True)
    groups = dict(tuple(df.groupby(by, sort=False)))
    if reference not in groups:
        raise ValueError(f"reference {reference!r} is not one of the {by} values {list(groups)}")
    ref = groups[reference]
    rows = []
    for name, g in groups.items():
        row = {by: name, "n": len(g), "mean ± sd": f"{g[value].mean():.3f} ± {g[value].std(ddof=1):.3f}",
               "mean": g[value].mean(), "sd": g[value].std(ddof=1),
               f"{reference} − this": np.nan, "CI low": np.nan, "CI high": np.nan}
        if name != reference:
            if unit and clusters:
                m = ref[[unit, value, *clusters]].merge(g[[unit, value, *clusters]], on=unit, suffixes=("", "_other"))
                _all_matched(m, ref, g, name)
                ids = [m[c] for c in clusters] + [m[f"{c}_other"] for c in clusters
                                                  if not m[c].equals(m[f"{c}_other"])]
                d, lo, hi = bootstrap_crossed(m[value] - m[f"{value}_other"], np.column_stack(ids), seed=seed)
            elif unit:
                m = ref[[unit, value]].merge(g[[unit, value]], on=unit, suffixes=("", "_other"))
                _all_matched(m, ref, g, name)
                d, lo, hi = bootstrap_diff(m[value], m[f"{value}_other"], paired=True, seed=seed)
            else:
                d, lo, hi = bootstrap_diff(ref[value], g[value], seed=seed)
            row |= {f"{reference} − this": d, "CI low": lo, "CI high": hi}
        rows.append(row)
    return pd.DataFrame(rows)


def _all_matched(m: pd.DataFrame, ref: pd.DataFrame, g: pd.DataFrame, name) -> None:
    if not len(m) == len(ref) == len(g):
        raise ValueError(f"{name!r} and the reference share {len(m)} units of {len(g)} and {len(ref)}: "
                         "a paired difference needs the same units in both")
