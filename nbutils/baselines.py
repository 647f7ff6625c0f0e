"""Harmonization baselines that need no training: identity and histogram matching."""
from __future__ import annotations

import numpy as np

from .methods import HISTOGRAM, IDENTITY


def identity(image: np.ndarray, *_, **__) -> np.ndarray:
    return np.asarray(image, np.float32)


def reference_quantiles(images: np.ndarray, masks: np.ndarray, n: int = 1024) -> np.ndarray:
    """Quantiles of the in-mask intensities of a set of images (a scanner's 'histogram')."""
    values = np.asarray(images, np.float32)[np.asarray(masks, bool)]
    return np.quantile(values, np.linspace(0, 1, n)).astype(np.float32)


def histogram_match(image: np.ndarray, mask: np.ndarray, ref_quantiles: np.ndarray) -> np.ndarray:
    """Map the in-mask intensities of ``image`` onto the reference distribution.

    Monotone quantile mapping (the classic histogram matching), computed and applied
    inside the brain mask only; the background stays as it was.
    """
    image = np.asarray(image, np.float32)
    mask = np.asarray(mask, bool)
    levels = np.linspace(0, 1, len(ref_quantiles))
    src_q = np.quantile(image[mask], levels)
    out = image.copy()
    # np.interp needs increasing x: nudge ties (flat histograms) apart by tiny steps
    src_q = np.maximum.accumulate(src_q + levels * 1e-7)
    out[mask] = np.interp(image[mask], src_q, ref_quantiles)
    return out


def match_all(images: np.ndarray, masks: np.ndarray, ref_quantiles: np.ndarray) -> np.ndarray:
    """:func:`histogram_match` of every (H, W) image of a stack onto the same reference."""
    return np.stack([histogram_match(img, m, ref_quantiles) for img, m in zip(images, masks)])


def to_every_scanner(images: np.ndarray, masks: np.ndarray, train) -> np.ndarray:
    """Histogram matching of every image to every scanner's training histogram: (K, N, H, W).
    ``train`` is a :class:`~nbutils.data.Slices` (its ``domain(b)`` gives scanner b's slices)."""
    return np.stack([match_all(images, masks, reference_quantiles(*train.domain(b)))
                     for b in range(len(train.domains))])


def to_every_scanner_outputs(images: np.ndarray, masks: np.ndarray, train) -> dict[str, np.ndarray]:
    """The two baselines of a domain-to-domain table, {method: (K, N, H, W)}: identity (the
    input for every target) and histogram matching to each scanner's training histogram."""
    images = np.asarray(images, np.float32)
    return {IDENTITY.name: np.broadcast_to(images, (len(train.domains), *images.shape)),
            HISTOGRAM.name: to_every_scanner(images, masks, train)}
