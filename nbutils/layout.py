"""What each scanner's coil field moves, read from its unpaired training slices.

A coil bias field is a smooth multiplicative layout fixed to the field of view. The slices of every
scanner cover the same anatomy on average (volumes registered to one template, slices from one
band of it, subjects drawn alike), so the mean smooth layout of one scanner's slices differs from
another scanner's by what their fields differ by, and by nothing of the anatomy. Contrast would
also enter a layout (a scanner with darker grey matter darkens the cortex's rim), so each slice's
brain intensities are first replaced by the same quantiles of all slices' brains pooled: a monotone
contrast curve then leaves a slice unchanged.

Only differences between scanners are read: a field common to all of them is not identifiable from
unpaired slices, and a translation a -> b needs only b's field relative to a's. GMM-DRIT's option
``w_field_layout`` (:class:`nbutils.drit.DRITConfig`) asks the mean field G draws for each scanner
code to move as much, relative to the other codes', as the code's slices do (docs/experiments.md,
"A field anchored to the slices' layout").
"""
from __future__ import annotations

import numpy as np
import torch

from .crops import coordinates, monomials

QUANTILES = 1001  # the pooled reference's resolution


def coefficients(images: np.ndarray, order: int = 3, floor: float = 0.1) -> np.ndarray:
    """(N, P - 1) coefficients of each (N, h, w) [0, 1] whole slice's smooth layout: the log of its
    contrast-matched brain (pixels above ``floor``) least-squares fitted by the monomials
    row^i col^j, i + j <= ``order``, of whole-slice coordinates in [-1, 1]
    (:func:`nbutils.crops.monomials`, the basis of G's bias field), the constant left out.
    The slices' first and last pixels are taken at -1 and 1: for a down-sampled view of a slice
    (:func:`nbutils.crops.views`, whose edge pixels sit a little inside: at -0.990 and 0.990 for a
    182 px slice at 64 px) a coefficient of degree d comes out 0.990^d of the slice's, 1-3 % low."""
    from scipy.stats import rankdata  # here: scipy.stats takes about a second to import

    images = np.asarray(images, np.float64)
    if images.ndim != 3:
        raise ValueError(f"expected (N, h, w) slices, got shape {images.shape}")
    brains = images > floor
    if not brains.any(axis=(1, 2)).all():
        raise ValueError(f"a slice has no pixel above {floor}: no brain to read a layout from")
    q = np.linspace(0, 1, QUANTILES)
    reference = np.quantile(images[brains], q)
    grid = coordinates(None, images.shape[1:], dtype=torch.float64)  # the whole slice's, as G's field reads it
    basis = monomials(grid, order)[0].flatten(1).T.numpy()  # (h w, P)
    out = []
    for x, brain in zip(images, brains):
        values = x[brain]
        ranks = (rankdata(values) - 1) / max(len(values) - 1, 1)  # ties share their mean rank
        y = np.log(np.interp(ranks, q, reference).clip(1e-3))
        a = basis[brain.ravel()]
        out.append(np.linalg.solve(a.T @ a + 1e-6 * np.eye(a.shape[1]), a.T @ y)[1:])
    return np.array(out)


def field_targets(images: np.ndarray, groups: np.ndarray, k: int, order: int = 3) -> np.ndarray:
    """(k, P - 1): each scanner code's mean :func:`coefficients` less their mean over the codes that
    have slices in ``groups`` (a code without slices: zeros). What the coil fields move between
    the scanners, in the coefficients of G's log field."""
    coef = coefficients(images, order)
    groups = np.asarray(groups)
    present = np.array([(groups == s).any() for s in range(k)])
    if present.sum() < 2:
        raise ValueError("the slices' codes name fewer than two scanners: no difference between fields to read")
    means = np.array([coef[groups == s].mean(0) if present[s] else np.zeros(coef.shape[1]) for s in range(k)])
    return np.where(present[:, None], means - means[present].mean(0), 0.0)
