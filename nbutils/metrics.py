"""Image similarity inside a mask: SSIM (Wang et al. settings), MAE, PSNR.

SSIM uses a Gaussian window of sigma 1.5, K1 = 0.01, K2 = 0.03, population
covariances and an explicit data range (Wang et al. 2004), as scikit-image's
``structural_similarity(..., gaussian_weights=True, use_sample_covariance=False)``.
The SSIM map is averaged over the mask (the brain), because the zero background
would otherwise inflate every score.
"""
from __future__ import annotations

import numpy as np

from .parallel import thread_map

DATA_RANGE = 1.0
SSIM_PAD = 5  # (win_size - 1) // 2 for scikit-image's Gaussian window, sigma 1.5 -> 11 px
BLOCK = 32  # images filtered (or pairs compared) at a time, one block per thread


def _masked_mean(values: np.ndarray, mask: np.ndarray | None) -> float:
    if mask is not None and not np.asarray(mask, bool).any():
        raise ValueError("the mask is empty: nothing to score")
    return float(values.mean() if mask is None else values[np.asarray(mask, bool)].mean())


def _window(x: np.ndarray) -> np.ndarray:
    """Local means of (..., H, W) images under SSIM's Gaussian window (sigma 1.5, truncated at
    3.5 sigma, reflected edges; scikit-image's), over the last two axes only."""
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(x, sigma=(0,) * (x.ndim - 2) + (1.5, 1.5), truncate=3.5, mode="reflect")


class Windowed:
    """(N, H, W) images (or one (H, W) image) as float64 with what SSIM needs of each image alone:
    its local means under SSIM's window and, with ``squares``, the local means of its squares.
    Computed once for an image compared with many others (:func:`ssim_pairs`,
    :func:`components_pairs`); only each pair's cross moment is left to compute."""

    def __init__(self, images: np.ndarray, squares: bool = True):
        x = np.asarray(images, np.float64)
        self.x = x[None] if x.ndim == 2 else x
        blocks = [self.x[s: s + BLOCK] for s in range(0, len(self.x), BLOCK)] or [self.x]
        self.mu = np.concatenate(thread_map(_window, blocks, progress=False))
        self.sq = np.concatenate(thread_map(lambda b: _window(b * b), blocks, progress=False)) if squares else None

    def __len__(self) -> int:
        return len(self.x)


def _regions(masks: np.ndarray | None, n: int, shape: tuple[int, int], start: int = 0):
    """The scored region of pairs ``start`` … ``start + n - 1``: its mask (one (H, W) mask for all,
    a stack with one per pair, or None for the whole image) without the 5 px border."""
    inner = np.zeros(shape, bool)
    inner[SSIM_PAD:-SSIM_PAD, SSIM_PAD:-SSIM_PAD] = True
    if masks is None:
        return (inner for _ in range(n))
    masks = np.asarray(masks, bool)
    return (inner & (masks if masks.ndim == 2 else masks[start + i]) for i in range(n))


def require_regions(masks: np.ndarray | None, n: int, shape: tuple[int, int]) -> None:
    """Raise if a pair's mask (as for :func:`_regions`) leaves nothing to score inside the 5 px border."""
    if masks is not None and not all(r.any() for r in _regions(masks, n, shape)):
        raise ValueError("an image's mask is empty inside the 5 px border: nothing to score")


def ssim_pairs(a: Windowed, ia, b: Windowed, ib, masks: np.ndarray | None = None,
               data_range: float = DATA_RANGE, chunk: int = BLOCK) -> np.ndarray:
    """:func:`ssim` of image ``ia[i]`` of ``a`` and image ``ib[i]`` of ``b`` over ``masks[i]``
    for every i (masks as for :func:`_regions`): scikit-image's SSIM map averaged over the mask
    less the 5 px border (:func:`components_pairs`)."""
    return components_pairs(a, ia, b, ib, masks, data_range, ("ssim",), chunk)["ssim"]


def ssim(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None,
         data_range: float = DATA_RANGE) -> float:
    """Mean SSIM of two 2-D images over ``mask`` (whole image when None).

    As in scikit-image, a border of half the window (5 px) is left out, where the
    window would reach outside the image."""
    require_regions(mask, 1, np.shape(a))
    return float(ssim_pairs(Windowed(a), [0], Windowed(b), [0], mask, data_range)[0])


def mae(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean absolute error over ``mask``."""
    return _masked_mean(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)), mask)


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None,
         data_range: float = DATA_RANGE) -> float:
    """Peak signal-to-noise ratio (dB) over ``mask``."""
    mse = _masked_mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2, mask)
    return float(10 * np.log10(data_range**2 / mse)) if mse > 0 else float("inf")


def _maps(mu_a, mu_b, second, data_range: float, parts: tuple[str, ...]) -> dict[str, np.ndarray]:
    """SSIM's luminance, contrast and structure maps (C3 = C2 / 2) and the SSIM map, those in
    ``parts``, from the local means ``mu_a``, ``mu_b`` and ``second()``: the local means of
    a², b² and ab (computed only when a part needs them). The SSIM map is computed with
    scikit-image's operations (``structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False)``, in the same order): the product of the other three, to rounding."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    c3 = c2 / 2
    maps = {}
    if "luminance" in parts:
        maps["luminance"] = (2 * mu_a * mu_b + c1) / (mu_a ** 2 + mu_b ** 2 + c1)
    if {"contrast", "structure", "ssim"} & set(parts):
        aa, bb, ab = second()
    if {"contrast", "structure"} & set(parts):
        var_a = np.maximum(aa - mu_a ** 2, 0)
        var_b = np.maximum(bb - mu_b ** 2, 0)
        cov = ab - mu_a * mu_b
        sd = np.sqrt(var_a * var_b)
        maps["contrast"] = (2 * sd + c2) / (var_a + var_b + c2)
        maps["structure"] = (cov + c3) / (sd + c3)
    if "ssim" in parts:
        vx, vy, vxy = aa - mu_a * mu_a, bb - mu_b * mu_b, ab - mu_a * mu_b
        maps["ssim"] = ((2 * mu_a * mu_b + c1) * (2 * vxy + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (vx + vy + c2))
    return {k: v for k, v in maps.items() if k in parts}


ALL_PARTS = ("luminance", "contrast", "structure", "ssim")


def ssim_maps(a: np.ndarray, b: np.ndarray, data_range: float = DATA_RANGE,
              parts: tuple[str, ...] = ALL_PARTS) -> dict[str, np.ndarray]:
    """Wang's SSIM split into its luminance, contrast and structure maps (C3 = C2 / 2), whose
    product is the SSIM map (to rounding; :func:`_maps`); the same Gaussian window and population statistics as
    scikit-image. ``a`` and ``b`` are two images or two stacks (..., H, W) of them (filtered
    over the last two axes only). Only the maps named in ``parts`` are computed (luminance alone
    needs two of the five filterings)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return _maps(_window(a), _window(b), lambda: (_window(a * a), _window(b * b), _window(a * b)), data_range, parts)


def components_pairs(a: Windowed, ia, b: Windowed, ib, masks: np.ndarray | None = None,
                     data_range: float = DATA_RANGE, parts: tuple[str, ...] = ALL_PARTS,
                     chunk: int = BLOCK) -> dict[str, np.ndarray]:
    """:func:`ssim_components` of image ``ia[i]`` of ``a`` and image ``ib[i]`` of ``b`` over
    ``masks[i]`` (as for :func:`ssim_pairs`) for every i: {part: one mean per pair}. Luminance
    alone needs ``a`` and ``b`` without squares."""
    ia, ib = np.asarray(ia, int), np.asarray(ib, int)
    masks = None if masks is None else np.asarray(masks, bool)

    def means(s: int) -> dict[str, list[float]]:  # the pairs s … s + chunk - 1
        i, j = ia[s: s + chunk], ib[s: s + chunk]
        maps = _maps(a.mu[i], b.mu[j], lambda: (a.sq[i], b.sq[j], _window(a.x[i] * b.x[j])), data_range, parts)
        regions = list(_regions(masks, len(i), a.x.shape[-2:], s))
        return {k: [_masked_mean(v[n], regions[n]) for n in range(len(i))] for k, v in maps.items()}

    done = thread_map(means, range(0, len(ia), chunk), progress=False)
    return {k: np.array([m for d in done for m in d[k]], float).reshape(len(ia)) for k in parts}


def ssim_components(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None,
                    data_range: float = DATA_RANGE,
                    parts: tuple[str, ...] = ALL_PARTS) -> dict[str, float | np.ndarray]:
    """Mean luminance, contrast, structure and full SSIM (those in ``parts``) over ``mask`` minus
    the 5 px border. For two images, floats; for two (N, H, W) stacks (and an (N, H, W) or
    (H, W) mask), arrays of N per-image means."""
    squares = bool({"contrast", "structure", "ssim"} & set(parts))
    wa, wb = Windowed(a, squares), Windowed(b, squares)
    require_regions(mask, len(wa), wa.x.shape[-2:])
    idx = np.arange(len(wa))
    found = components_pairs(wa, idx, wb, idx, mask, data_range, parts)
    return {k: float(v[0]) for k, v in found.items()} if np.ndim(a) == 2 else found


def sharpness(image: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean gradient magnitude (Sobel, in intensity per pixel) over ``mask``."""
    from scipy.ndimage import sobel

    img = np.asarray(image, np.float64)
    return _masked_mean(np.hypot(sobel(img, 0), sobel(img, 1)) / 8, mask)  # Sobel's kernel: 8 x the slope


def blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """(…, H, W) images smoothed by a Gaussian of ``sigma`` pixels in the image plane."""
    from scipy.ndimage import gaussian_filter

    images = np.asarray(images, np.float32)
    if sigma <= 0:
        return images.copy()
    return gaussian_filter(images, sigma=(0,) * (images.ndim - 2) + (sigma, sigma))


DARK_SHARE = 0.05  # the darkest share of the brain dark_overlap compares (about the CSF's share in T1w slices)


def dark_overlap(a: np.ndarray, b: np.ndarray, mask: np.ndarray, share: float = DARK_SHARE) -> np.ndarray:
    """Where the darkest ``share`` of the pixels inside ``mask`` lie in ``a`` and in ``b``, compared:
    the Dice overlap of the two sets (pixels at or below each image's ``share`` quantile in the
    mask), per image of two (N, H, W) stacks (one value for two (H, W) images). It depends only on
    each image's order of intensities, so any increasing contrast curve leaves it unchanged; it
    falls when thin dark structures (ventricles, sulci) are drawn wider, displaced or smeared,
    which averaged SSIM hardly sees. 1 = the same darkest pixels. Leave out of ``mask`` what is
    dark in every image alike (background the mask reaches): it would count as agreement."""
    a, b, mask = np.asarray(a), np.asarray(b), np.asarray(mask, bool)
    if a.shape != b.shape:
        raise ValueError(f"dark_overlap: images of shape {a.shape} against {b.shape}")
    single = a.ndim == 2
    a, b = (a[None], b[None]) if single else (a, b)
    mask = np.broadcast_to(mask, a.shape)
    out = np.empty(len(a))
    for i, (x, y, m) in enumerate(zip(a, b, mask)):
        if not m.any():
            raise ValueError("dark_overlap: an image's mask is empty")
        x, y = np.asarray(x[m], np.float64), np.asarray(y[m], np.float64)
        dx, dy = x <= np.quantile(x, share), y <= np.quantile(y, share)
        out[i] = 2 * np.count_nonzero(dx & dy) / (np.count_nonzero(dx) + np.count_nonzero(dy))
    return out[0] if single else out


BLUR_GRID = tuple(np.round(np.arange(0, 6.01, 0.125), 3))  # candidate sigmas (pixels) of the blur control


def effective_blur(inputs: np.ndarray, outputs: np.ndarray, masks: np.ndarray,
                   grid: tuple[float, ...] = BLUR_GRID, max_images: int = 48) -> float:
    """The Gaussian sigma (pixels) that brings ``inputs`` to the effective resolution of ``outputs``.

    For a candidate sigma the inputs are blurred, then histogram-matched to their own outputs
    inside the mask, so that a change of contrast (even a non-linear one) does not pass for a
    change of resolution; sharpness (:func:`sharpness`) is compared inside the mask eroded by
    2 px, away from the brain/background edge. Sharpness falls with sigma, so a bisection over
    ``grid`` finds the sigma whose median sharpness is closest to the outputs' (0 when the
    outputs are at least as sharp as the inputs). Input noise counts as sharpness, so outputs
    that denoise get a larger sigma: the control errs on the strong side. Measured on at most
    ``max_images`` evenly spaced images."""
    from scipy.ndimage import binary_erosion

    from .baselines import histogram_match, reference_quantiles

    if len(inputs) > max_images:  # the median sharpness of an even spread of slices is enough
        pick = np.round(np.linspace(0, len(inputs) - 1, max_images)).astype(int)
        inputs, outputs, masks = (np.asarray(a)[pick] for a in (inputs, outputs, masks))
    masks = np.asarray(masks, bool)
    inner = [e if (e := binary_erosion(m, iterations=2)).any() else m for m in masks]
    refs = [reference_quantiles(o, m, 256) for o, m in zip(outputs, masks)]
    target = np.median([sharpness(o, m) for o, m in zip(outputs, inner)])

    def gap(i: int) -> float:
        matched = [histogram_match(x, m, q) for x, m, q in zip(blur(inputs, grid[i]), masks, refs)]
        return float(np.median([sharpness(x, m) for x, m in zip(matched, inner)]) - target)

    lo, hi = 0, len(grid) - 1  # gap(lo) >= 0 >= gap(hi) unless the outputs are outside the grid's range
    g_lo, g_hi = gap(lo), gap(hi)
    if g_lo <= 0:
        return float(grid[lo])
    if g_hi >= 0:
        return float(grid[hi])
    while hi - lo > 1:
        mid = (lo + hi) // 2
        g = gap(mid)
        lo, g_lo, hi, g_hi = (mid, g, hi, g_hi) if g > 0 else (lo, g_lo, mid, g)
    return float(grid[lo] if abs(g_lo) <= abs(g_hi) else grid[hi])
