"""Random appearance changes that must not change the content map (E^c's invariance term).

A coil bias field and a tissue-contrast curve are appearance by definition; the content map z^c
should read the same anatomy whatever they are. A linear probe showed that each of them alone,
applied to the same anatomy, let z^c name the scanner (docs/experiments.md, "Stage 2"): E^c passed them on,
and the content discriminator, which saw windows cut from anywhere in the slice without knowing
where, could not tell a smooth field from anatomy (it now can: ``DRITConfig.dc_field``). The invariance term asks E^c for the same map of an image after a
random change of this kind (:class:`nbutils.drit.DRITConfig` ``w_invariance``).

The changes are TorchIO's ``RandomBiasField`` (a log-polynomial field, Van Leemput et al. 1999,
order 3, coefficients uniform in ±0.5) and ``RandomGamma`` (x ** exp(u), u uniform in ±0.3), at
TorchIO's default ranges, batched in torch and drawn at each pixel's position in its whole slice
(the same coordinates G's own bias field uses). They are generic: not fitted to any scanner.
Unlike TorchIO the result is clipped to [0, 1], the translation nets' range: where a field
brightens white matter past 1 it saturates.

Optionally (``blur``, ``noise``) the change also covers the acquisition's resolution and noise, as
TorchIO's ``RandomBlur`` (a Gaussian of σ uniform in [0, ``blur``] px, drawn for each axis) and
``RandomNoise`` (Gaussian, σ uniform in [0, ``noise``] times the spread of the head's intensities in
the image it changes, in training a window: TorchIO's default assumes a standardised image) do at
their default ranges (2 px, 0.25). Noise never takes a head pixel to the background's value.
"""
from __future__ import annotations

import math

import torch

from .crops import coordinates, monomials


def jitter(x: torch.Tensor, origin: torch.Tensor | None = None, full: tuple[int, int] | None = None,
           order: int = 3, coefficients: float = 0.5, log_gamma: float = 0.3, blur: float = 0.0,
           noise: float = 0.0) -> torch.Tensor:
    """(N, 1, h, w) images in [-1, 1] with a random bias field and gamma each (torch's global
    random state), then, when ``blur`` / ``noise`` > 0, a random blur and noise; background (-1)
    kept. ``origin`` (N, 2): where windows sit in ``full``-sized slices (None: whole slices)."""
    n, _, h, w = x.shape
    basis = monomials(coordinates(origin, (h, w), full, n, x.device), order)
    coef = (torch.rand(n, basis.shape[1], device=x.device) * 2 - 1) * coefficients
    field = torch.einsum("nk,nkhw->nhw", coef, basis).exp()[:, None]
    gamma = ((torch.rand(n, 1, 1, 1, device=x.device) * 2 - 1) * log_gamma).exp()
    y = (((x.float() + 1) / 2) * field).clamp(0, 1) ** gamma
    head = x > -1
    if blur:
        sigma = torch.rand(n, 2, device=x.device) * blur
        # every kernel cut at 4 sigma or more; the edge reflected, as a window's outside is not known
        y = _blur(y, sigma, max(1, math.ceil(4 * float(sigma.max()))), "reflect")
    if noise:
        # each image's head spread (sample standard deviation; 0 with fewer than two head pixels)
        count = head.sum((1, 2, 3)).float()
        mean = (y * head).sum((1, 2, 3)) / count.clamp(min=1)
        spread = (((y - mean.view(n, 1, 1, 1)) ** 2 * head).sum((1, 2, 3)) / (count - 1).clamp(min=1)).sqrt()
        sigma = torch.rand(n, device=x.device) * noise * spread
        y = (y + torch.randn_like(y) * sigma.view(n, 1, 1, 1)).clamp(1e-3, 1)  # above 0: still head
    if blur or noise:
        y = torch.where(head, y, torch.zeros_like(y))
    return (y * 2 - 1).to(x.dtype)


def _blur(y: torch.Tensor, sigma: torch.Tensor, r: int, mode: str) -> torch.Tensor:
    """(N, 1, h, w) images, each blurred by a separable Gaussian of ``sigma`` (N, 2) px along (rows, columns),
    cut at ``r`` px; the image's edge padded by ``mode`` (``F.pad``'s: "reflect", or "constant" for zeros)."""
    n, _, h, w = y.shape
    t = torch.arange(-r, r + 1, device=y.device, dtype=torch.float32)
    out = y.reshape(1, n, h, w)
    for axis in range(2):
        g = torch.exp(-0.5 * (t[None] / sigma[:, axis, None].clamp(min=1e-3)) ** 2)
        g = (g / g.sum(1, keepdim=True)).view(n, 1, *((-1, 1) if axis == 0 else (1, -1)))
        pad = (0, 0, r, r) if axis == 0 else (r, r, 0, 0)
        out = torch.nn.functional.conv2d(torch.nn.functional.pad(out, pad, mode=mode), g, groups=n)
    return out.reshape(n, 1, h, w)


def log_detail(x: torch.Tensor, sigma: float, floor: float = 0.02) -> torch.Tensor:
    """(N, 1, h, w) images in [-1, 1] as E^c reads them with ``content_highpass``: inside the head, the log
    intensity less its local mean (a Gaussian of ``sigma`` px over the head's pixels only, so neither the
    background nor the image's border pulls it), halved and clipped to [-1, 1]; background (-1) kept. A smooth
    multiplicative field and a global gain are additive in the log and slow, so they are (nearly) gone;
    edges and the contrast between neighbouring tissues stay (homomorphic filtering, as classic bias-field
    correction does). ``floor`` keeps the log finite in dark tissue."""
    v = ((x.float() + 1) / 2).clamp(min=0)
    head = (x > -1).float()
    sig = torch.full((len(x), 2), float(sigma), device=x.device)
    blur = lambda a: _blur(a, sig, max(1, int(3 * sigma)), "constant")
    log = torch.log(v + floor) * head
    local = blur(log) / blur(head).clamp(min=1e-6)
    return torch.where(head > 0, ((log - local) / 2).clamp(-1, 1), -torch.ones_like(v)).to(x.dtype)

