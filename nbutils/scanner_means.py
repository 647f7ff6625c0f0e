"""Running per-scanner means of the content map, region by region of the whole slice: a content term aimed at the
simplest thing a linear probe of z^c reads.

D_c learns to tell the scanners apart from z^c batch by batch; the linear probe of z^c (``nbutils.usage``) reads the
whole slice's 4 x 4 average-pooled map instead, and on traveling subjects any consistent difference between the
scanners' maps, however small. The simplest such difference is between the scanners' mean maps in each of those 16
regions. This module keeps those means as training goes (count-weighted exponential averages over the windows E^c
reads, each window's cells assigned to the regions of the whole slice they lie in, as ``adaptive_avg_pool2d`` bins
them, each window weighted by its scanner code) and gives E^c the gradient of

    1/2 mean_{k, c, r seen} (m_kcr - mean_k' m_k'cr)^2 / v_cr

with this batch's windows standing in for the running means: each cell is pushed against its scanner's persistent
excess over the scanners' average in its region and channel. v_cr is the running variance of the windows' means in
that region and channel (the probe standardises its features over whole slices instead). ``whiten`` replaces v_cr by
the running covariance of the windows' means over the channels in each region, shrunk a tenth toward its diagonal
(SHRINK): the term then weighs each region's mean difference as a linear discriminant of that region's channels does,
against the channels' joint spread, most along the combinations in which the scanners differ most for their spread.
Unpaired: it needs the scanner codes the model already has (the inferred ones for GMM-DRIT), never the same anatomy
in two scanners. First-order moment matching, as in domain adaptation's class-conditional mean matching; not in the
thesis. Measured, left off: per channel it shrinks what it measures and moves the probe little; whitened it moves the
probe more on two of three simulated sets, under no bar; both break the lateral ventricles in the outputs
(docs/experiments.md, "Scanner means in z^c", "Whitened scanner means").
"""
from __future__ import annotations

import torch

REGIONS = 4  # per side: the probe's 4 x 4 pooling of the whole slice's map
SHRINK = 0.1  # whiten: the share of each region's channel covariance moved to its diagonal (a floor on its spectrum)


def _share(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """total / count, 0 where nothing was counted."""
    return torch.where(count > 0, total / count.clamp(min=1e-12), torch.zeros_like(total))


def regions(grid: torch.Tensor, full: tuple[int, int], n: int = REGIONS) -> torch.Tensor:
    """(N, 2, h, w) whole-slice coordinates in [-1, 1] (:func:`nbutils.crops.coordinates`) of cells of a map whose
    whole slice is ``full`` cells -> (N, n * n, h, w): 1 where a cell lies in a region of the whole slice's n x n
    grid, the bins ``adaptive_avg_pool2d`` averages (row-major; where its bins overlap, a cell lies in both)."""
    out = []
    for axis, size in enumerate(full):
        cell = ((grid[:, axis] + 1) / 2 * (size - 1)).round()  # the cell's index in the whole slice's map
        bins = torch.arange(n, device=grid.device, dtype=grid.dtype)
        start, end = (bins * size / n).floor(), ((bins + 1) * size / n).ceil()
        out.append(((cell[:, None] >= start[:, None, None]) & (cell[:, None] < end[:, None, None])).to(grid.dtype))
    rows, cols = out  # (N, n, h, w) each
    return (rows[:, :, None] * cols[:, None]).flatten(1, 2)


class ScannerMeans(torch.nn.Module):
    """Count-weighted running means (momentum per step) of z^c per scanner code, channel and region of a whole slice
    of ``full`` cells, and the spread of the windows' region means (``whiten``: their covariance over the channels,
    region by region). Buffers: saved and resumed with the model's other weights."""

    def __init__(self, k: int, channels: int, full: tuple[int, int], momentum: float = 0.99, eps: float = 1e-4,
                 whiten: bool = False):
        super().__init__()
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
        self.full, self.momentum, self.eps, self.whiten = tuple(full), momentum, eps, whiten
        r = REGIONS * REGIONS
        second = (channels, channels, r) if whiten else (channels, r)
        for name, shape in dict(sums=(k, channels, r), counts=(k, r), first=(channels, r), second=second,
                                windows=(r,)).items():
            self.register_buffer(name, torch.zeros(shape))

    @torch.no_grad()
    def _update(self, sums, counts, window_means, present) -> None:
        b, inside = self.momentum, present[:, None].float()
        self.sums.mul_(b).add_(sums)
        self.counts.mul_(b).add_(counts)
        self.first.mul_(b).add_((window_means * inside).sum(0))
        products = (torch.einsum("ncr,ndr->cdr", window_means * inside, window_means) if self.whiten else
                    (window_means.square() * inside).sum(0))
        self.second.mul_(b).add_(products)
        self.windows.mul_(b).add_(present.sum(0))

    def forward(self, zc: torch.Tensor, grid: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(surrogate, value) for content maps ``zc`` (N, C, h, w), their cells' whole-slice coordinates ``grid``
        (N, 2, h, w) and scanner codes ``codes`` (N, K; one-hot or soft). ``surrogate`` carries the gradient the
        module's docstring describes (its value is not the loss); ``value`` (no gradient) is that loss on the
        running means after this batch, per code, channel and region seen: 0 when no scanner's mean differs from the
        others' anywhere. Updates the running means (in training mode only). In float32, under autocast too."""
        with torch.autocast(zc.device.type, enabled=False):
            return self._forward(zc.float(), grid.float(), codes.float().detach())

    def _forward(self, zc, grid, codes):
        onehot = regions(grid, self.full)
        cells = onehot.flatten(2).sum(2)  # (N, R): how many of each window's cells lie in each region
        window_means = _share(torch.einsum("nchw,nrhw->ncr", zc, onehot), cells[:, None])  # (N, C, R)
        sums = torch.einsum("nk,ncr,nr->kcr", codes, window_means, cells)
        counts = torch.einsum("nk,nr->kr", codes, cells)
        if self.training:
            self._update(sums.detach(), counts, window_means.detach(), cells > 0)
        with torch.no_grad():
            seen = (self.counts > 0)[:, None].expand_as(self.sums).float()  # (K, C, R): codes seen in a region
            n = max(int(seen.sum()), 1)
            means = _share(self.sums, self.counts[:, None])
            average = _share((means * seen).sum(0), seen.sum(0))  # (C, R): the codes seen, alike
            excess = self._precision((means - average) * seen)  # the loss's gradient in the running means
            value = 0.5 * (excess * (means - average)).sum() / n
        batch = _share(sums, counts[:, None])  # this batch's means stand in for the running ones
        return (excess * batch).sum() / n, value

    def _precision(self, difference: torch.Tensor) -> torch.Tensor:
        """(K, C, R) differences times the inverse of each region's spread of the windows' means: its variance per
        channel, or (``whiten``) its shrunk covariance over the channels, plus ``eps``."""
        mean = _share(self.first, self.windows)  # (C, R)
        second = _share(self.second, self.windows)
        if not self.whiten:
            return difference / ((second - mean.square()).clamp(min=0) + self.eps)
        cov = (second - torch.einsum("cr,dr->cdr", mean, mean)).permute(2, 0, 1)  # (R, C, C)
        diagonal = torch.diag_embed(cov.diagonal(dim1=1, dim2=2).clamp(min=0))
        eye = torch.eye(cov.shape[-1], device=cov.device)
        cov = (1 - SHRINK) * cov + SHRINK * diagonal + self.eps * eye
        return torch.linalg.solve(cov, difference.permute(2, 1, 0)).permute(2, 1, 0)  # (R, C, K) solved -> (K, C, R)
