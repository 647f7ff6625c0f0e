"""Clustering scores for E1: accuracy under the best one-to-one matching (Hungarian), NMI and
ARI, each with a label-permutation chance baseline."""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


def contingency(labels: np.ndarray, clusters: np.ndarray, k: int | None = None) -> np.ndarray:
    """counts[cluster, label]."""
    labels, clusters = np.asarray(labels, int), np.asarray(clusters, int)
    k = k or int(max(labels.max(), clusters.max()) + 1)
    table = np.zeros((k, k), dtype=int)
    np.add.at(table, (clusters, labels), 1)
    return table


def matching(labels: np.ndarray, clusters: np.ndarray) -> dict[int, int]:
    """The cluster -> label assignment that maximises agreement (Hungarian algorithm)."""
    table = contingency(labels, clusters)
    rows, cols = linear_sum_assignment(-table)
    return dict(zip(rows.tolist(), cols.tolist()))


def accuracy(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Clustering accuracy: the share of samples whose cluster maps to their label under the
    best one-to-one matching."""
    table = contingency(labels, clusters)
    rows, cols = linear_sum_assignment(-table)
    return float(table[rows, cols].sum() / len(labels))


def majority_chance(labels: np.ndarray) -> float:
    """The accuracy of always naming the most frequent label: a probe's or classifier's chance
    level (1/K only when the K labels are balanced)."""
    return float(np.unique(np.asarray(labels), return_counts=True)[1].max() / len(labels))


def beyond_chance(chance: float, share: float) -> float:
    """A bar ``share`` of the way from ``chance`` to 1: an accuracy within it reads as chance. A share, not a margin
    over chance, stays under 1 however large chance is."""
    return float(chance + share * (1 - chance))


def matched_chance(labels: np.ndarray, permutations: int = 200, seed: int = 0) -> float:
    """The chance level of :func:`accuracy` for predictions that ignore the labels: its mean over
    shuffles of ``labels`` scored against ``labels`` (a blind prediction spread over the classes as
    the labels are). The best renaming lifts even a blind prediction above the largest class's share
    (about 0.31 for 4 classes of 48, 0.39 for 3), so that share is no floor for the renamed accuracy;
    a blind prediction spread less evenly scores lower still, so this floor errs on the high side."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    return float(np.mean([accuracy(labels, rng.permutation(labels)) for _ in range(permutations)]))


SCORES = {"ACC": accuracy, "NMI": normalized_mutual_info_score, "ARI": adjusted_rand_score}


def scores(labels: np.ndarray, clusters: np.ndarray, permutations: int = 200, seed: int = 0) -> pd.DataFrame:
    """ACC, NMI and ARI with their chance level: the mean (and 95th percentile) of the same
    score after shuffling the labels, which keeps both marginals and breaks the link."""
    rng = np.random.default_rng(seed)
    shuffled = [rng.permutation(labels) for _ in range(permutations)]
    rows = []
    for name, fn in SCORES.items():
        chance = np.array([fn(s, clusters) for s in shuffled])
        rows.append(dict(metric=name, value=fn(labels, clusters), chance_mean=chance.mean(),
                         chance_p95=np.quantile(chance, 0.95)))
    return pd.DataFrame(rows).set_index("metric")


def linear_probe(codes: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0, groups=None) -> float:
    """Cross-validated accuracy of a logistic regression predicting ``labels`` from ``codes``:
    how much label information the codes hold, whether or not the clustering found it.

    ``groups``: rows that must fall in the same fold (the slices of one subject; with traveling
    subjects, one anatomy in every scanner). Without them, on traveling subjects, a code that does
    not depend on the scanner at all scores 0, not chance: each held-out image's copies from the
    other scanners are in the training folds with the other labels; on ordinary data a held-out
    slice has siblings from its volume in the training folds, which the probe can recognise by
    their anatomy rather than their scanner. When some label has
    fewer than two groups (one subject per scanner) no fold can hold a group out and still train
    on its label, and plain folds would read the anatomy: NaN, with a warning."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = min(folds, int(np.unique(labels, return_counts=True)[1].min()))  # labels present only
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    if groups is not None:
        per_label = min(len(np.unique(np.asarray(groups)[labels == y])) for y in np.unique(labels))
        if per_label < 2:
            import warnings

            warnings.warn("a linear probe with folds by subject needs two or more subjects of every label: "
                          "not measured (NaN)")
            return float("nan")
    if groups is None:
        cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    else:
        cv = StratifiedGroupKFold(min(folds, per_label), shuffle=True, random_state=seed)
    return float(cross_val_score(model, codes, labels, cv=cv, groups=groups).mean())
