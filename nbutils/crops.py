"""Crops and views: native-resolution slices for the translator, whole-slice views for E^a.

The ``quick`` profile keeps slices at their native 1 mm (182 x 182). Stage 2's content encoder
and generator train on random ``crop`` x ``crop`` windows of them (:func:`random_crops`, centred
on a brain pixel: a window of background teaches nothing) and, being fully convolutional,
harmonize whole slices. A scanner's identity is a property of the whole slice (its contrast
curve across every tissue, its bias field), so the attribute encoders (the GM-VAE and DRIT++'s
E^a) read a *view*: the whole slice down-sampled to ``view`` x ``view`` (:func:`view`), in
training as at inference (docs/experiments.md, "Native resolution").
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def crop_starts(masks: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """(N, 2) top-left corners of ``size`` x ``size`` windows of the (N, H, W) ``masks``' images,
    each centred on a random mask pixel (anywhere, for an empty mask) and shifted to fit."""
    masks = np.asarray(masks, bool)
    n, h, w = masks.shape
    if size > min(h, w):
        raise ValueError(f"crops of {size} px do not fit in {h} x {w} slices")
    out = np.empty((n, 2), int)
    for i, m in enumerate(masks):
        on = np.flatnonzero(m)
        centre = on[rng.integers(len(on))] if len(on) else rng.integers(h * w)
        cy, cx = divmod(int(centre), w)
        out[i] = (min(max(cy - size // 2, 0), h - size), min(max(cx - size // 2, 0), w - size))
    return out


def take(images: np.ndarray, starts: np.ndarray, size: int) -> np.ndarray:
    """The windows of (N, H, W) ``images`` at ``starts`` (N, 2), as float32 (N, size, size)."""
    return np.stack([np.asarray(im[y: y + size, x: x + size], np.float32)
                     for im, (y, x) in zip(images, starts)])


def random_crops(images: np.ndarray, masks: np.ndarray, idx: np.ndarray, size: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``idx`` of ``images``, in that order, cut to random ``size`` windows on the brain
    (float32; no crop when ``size`` is 0 or the slices' own size), and the windows' (N, 2)
    top-left corners."""
    if not size or images.shape[-1] == size == images.shape[-2]:
        return np.asarray(images[idx], np.float32), np.zeros((len(idx), 2), int)
    starts = crop_starts(masks[idx], size, rng)
    return take(images[idx], starts, size), starts


def coordinates(origin: torch.Tensor | None, size: tuple[int, int], full: tuple[int, int] | None = None,
                n: int = 1, device=None, dtype=torch.float32) -> torch.Tensor:
    """(N, 2, h, w) coordinate channels (row, column) in [-1, 1] of ``size`` = (h, w) windows
    whose top-left corners sit at ``origin`` (N, 2) in ``full``-sized slices: pixel i of a
    slice of n pixels has coordinate -1 + 2 i / (n - 1), wherever the window is cut from.
    ``origin`` None: whole slices (``full`` = ``size``), ``n`` of them."""
    h, w = size
    fh, fw = full or size
    if origin is None:
        origin = torch.zeros(n, 2, device=device, dtype=dtype)
    o = origin.to(device or origin.device, dtype)
    rows = (torch.arange(h, device=o.device, dtype=dtype)[None] + o[:, :1]) / max(fh - 1, 1) * 2 - 1
    cols = (torch.arange(w, device=o.device, dtype=dtype)[None] + o[:, 1:]) / max(fw - 1, 1) * 2 - 1
    return torch.stack([rows[:, :, None].expand(-1, h, w), cols[:, None, :].expand(-1, h, w)], 1)


def exponents(order: int) -> list[tuple[int, int]]:
    """(i, j) of the monomials row^i col^j with i + j <= ``order``, in :func:`monomials`'s order."""
    return [(i, j) for i in range(order + 1) for j in range(order + 1 - i)]


def n_monomials(order: int) -> int:
    """How many monomials row^i col^j have i + j <= ``order`` (the constant included)."""
    return len(exponents(order))


def monomials(grid: torch.Tensor, order: int) -> torch.Tensor:
    """(N, P, h, w): the monomials row^i col^j, i + j <= ``order``, of (N, 2, h, w) coordinate
    channels (:func:`coordinates`): the basis of a log-polynomial bias field."""
    return torch.stack([grid[:, 0] ** i * grid[:, 1] ** j for i, j in exponents(order)], 1)


def view(x: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 1, H, W) whole slices as the attribute encoders read them: anti-aliased bilinear
    down-sampling to ``size`` x ``size`` (unchanged when already that size)."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def views(images: np.ndarray, size: int, batch_size: int = 256) -> np.ndarray:
    """:func:`view` of a (N, H, W) image array (e.g. a memory map), as float32 (N, size, size)."""
    out = [view(torch.from_numpy(np.asarray(images[s: s + batch_size], np.float32)).unsqueeze(1), size)[:, 0].numpy()
           for s in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, size, size), np.float32)
