"""Stage-2 networks: content encoder E^c, generator G, scanner discriminators D_s and the content
discriminator D_c (thesis §3; docs/design.md, "Method decisions"), plus the unimodal attribute encoder of DRIT++.

Images are in [-1, 1] (tanh). Any image size: inputs are padded (with the background value -1)
to a multiple of the down-sampling factor and outputs cropped back (182 -> 184 -> 182).
Any batch size. Normalisation layers are real modules on the forward path (the original DRIT
code built InstanceNorm layers in its discriminators and never applied them).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from .crops import coordinates, exponents, monomials, n_monomials


def pad_to_multiple(x: torch.Tensor, m: int, value: float = -1.0) -> torch.Tensor:
    h, w = x.shape[-2:]
    return F.pad(x, (0, -w % m, 0, -h % m), value=value)


def _conv(cin, cout, k, s, norm: bool = True, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, s, (k - 1) // 2 if s == 1 else 1)]
    if norm:
        layers.append(nn.InstanceNorm2d(cout, affine=True))
    if act:
        layers.append(nn.LeakyReLU(0.2, inplace=True))
    return nn.Sequential(*layers)


class ResBlock(nn.Module):
    """Residual block of two 3x3 convolutions (instance-normalised when ``norm``)."""

    def __init__(self, ch: int, norm: bool = True):
        super().__init__()
        self.c1 = _conv(ch, ch, 3, 1, norm)
        self.c2 = _conv(ch, ch, 3, 1, norm, act=False)

    def forward(self, x):
        return x + self.c2(self.c1(x))


class ModulatedResBlock(nn.Module):
    """Residual block whose two convolutions are instance-normalised and then scaled and shifted
    per channel by the code (``h * (1 + gamma) + beta``, as in MUNIT's AdaIN blocks).

    The normalisation removes each content channel's own mean and spread, which is where the
    content map can smuggle a scanner's global appearance past the code; the modulation puts
    the target's back. It computes what DRIT++'s concatenation generator computes with the code
    tiled into constant channels, a per-sample affine term, without convolving those constants."""

    def __init__(self, ch: int, code: int):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(ch, ch, 3, 1, 1), nn.Conv2d(ch, ch, 3, 1, 1)
        self.film = nn.Linear(code, 4 * ch)

    @staticmethod
    def _mod(h, gamma, beta):
        return F.instance_norm(h) * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]

    def forward(self, x, code):
        g1, b1, g2, b2 = self.film(code).chunk(4, 1)
        h = F.leaky_relu(self._mod(self.c1(x), g1, b1), 0.2)
        return x + self._mod(self.c2(h), g2, b2)


class ContentEncoder(nn.Module):
    """E^c: image -> content map z^c of shape (w * 2^down, H / 2^down, W / 2^down) (DRIT: down = 2).

    ``norm=True`` instance-normalises the map (no affine): every channel of every image has mean
    0 and spread 1, so the content cannot carry a scanner's global gain and offset, which the
    generator's residual skips would otherwise pass to its output untouched."""

    def __init__(self, width: int = 16, n_res: int = 2, down: int = 2, norm: bool = False):
        super().__init__()
        w = width
        self.factor, self.norm = 2 ** down, norm
        self.net = nn.Sequential(_conv(1, w, 5, 1), *[_conv(w * 2 ** i, w * 2 ** (i + 1), 4, 2) for i in range(down)],
                                 *[ResBlock(w * self.factor) for _ in range(n_res)])
        self.channels = w * self.factor

    def forward(self, x):
        zc = self.net(pad_to_multiple(x, self.factor))
        return F.instance_norm(zc) if self.norm else zc


class BiasField(nn.Module):
    """A smooth multiplicative intensity field drawn from the code: exp(sum_k a_k(code) phi_k),
    phi_k the monomials row^i col^j (i + j <= ``order``) of the whole slice's coordinates in
    [-1, 1] (:func:`nbutils.crops.coordinates`): the log-polynomial bias-field model of Van Leemput
    et al. (1999) that TorchIO's ``RandomBiasField`` also draws from.

    A fully convolutional generator cannot place anything at a fixed position in the field of
    view, least of all on a window cut from anywhere in the slice; a scanner's coil bias field is
    such a shape. Without this head self-reconstruction could only get the source's field back
    through z^c (docs/experiments.md, "Stage 2"). The coefficients start at zero (a flat field)."""

    def __init__(self, code: int, order: int = 3):
        super().__init__()
        self.order = order
        self.coef = nn.Linear(code, n_monomials(order))  # one per monomial, in monomials()'s order
        nn.init.zeros_(self.coef.weight)
        nn.init.zeros_(self.coef.bias)
        # coefficient k of monomials()'s row^i col^j goes to entry (i, j) of an (order + 1)^2 matrix
        pick = torch.zeros(n_monomials(order), order + 1, order + 1)
        for k, (i, j) in enumerate(exponents(order)):
            pick[k, i, j] = 1
        self.register_buffer("pick", pick, persistent=False)

    def forward(self, code: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """(N, 1, h, w) field for ``grid`` (N, 2, h, w) coordinate channels (row, column) made by
        :func:`nbutils.crops.coordinates`, whose row coordinate is constant along each row and
        column coordinate along each column: the log field sum_ij a_ij row^i col^j is then the
        product R A C^T of the rows' powers (N, h, order + 1), the coefficients and the columns'
        powers, without the (N, P, h, w) monomial basis (the same sum, in another order). At least
        float32, under mixed precision too."""
        coef = self.coef(code)
        dtype = torch.promote_types(coef.dtype, torch.float32)
        with torch.autocast(code.device.type, enabled=False):
            a = torch.einsum("nk,kij->nij", coef.to(dtype), self.pick.to(dtype))
            powers = lambda v: torch.stack([v.to(dtype) ** i for i in range(self.order + 1)], -1)
            rows, cols = powers(grid[:, 0, :, 0]), powers(grid[:, 1, 0, :])
            return (rows @ a @ cols.transpose(1, 2)).exp()[:, None]


class ToneCurve(nn.Module):
    """A monotone map of [0, 1] onto itself drawn from the code: piecewise linear through
    ``knots`` + 1 points evenly spaced in the input, whose outputs are the cumulative sums of
    softmax(a(code)) (strictly increasing, 0 at 0 and 1 at 1): the piecewise-linear intensity
    standardisation of Nyúl & Udupa (1999, 2000), one curve per code. Starts as the identity.
    :meth:`inverse` undoes it exactly, so E^c can read an image with its own curve undone.

    ``floor`` in [0, 1) is the least slope of every segment (the increments are
    ``floor / knots + (1 - floor) * softmax``), so the inverse stretches no intensity range, and
    the scan's noise in it, by more than ``1 / floor``. Unbounded (0), the curves of a trained
    model were nearly flat on the darkest 1/16 and on mid-grey ranges, stretching the noise
    there 2-25 times for E^c (docs/experiments.md, "Stage 2")."""

    def __init__(self, code: int, knots: int = 16, floor: float = 0.0, extend: bool = False):
        super().__init__()
        if not 0 <= floor < 1:
            raise ValueError(f"the tone curve's least slope must be in [0, 1), got {floor}")
        self.floor, self.extend = floor, extend
        self.coef = nn.Linear(code, knots)
        nn.init.zeros_(self.coef.weight)
        nn.init.zeros_(self.coef.bias)

    def levels(self, code: torch.Tensor) -> torch.Tensor:
        """(N, knots + 1) outputs at the inputs 0, 1/knots, ..., 1."""
        rise = self.floor / self.coef.out_features + (1 - self.floor) * torch.softmax(self.coef(code).float(), 1)
        return F.pad(rise.cumsum(1), (1, 0)).clamp(max=1)

    def forward(self, code: torch.Tensor, x01: torch.Tensor) -> torch.Tensor:
        """The (N, 1, h, w) images ``x01`` in [0, 1] through each sample's curve."""
        y, m = self.levels(code), self.coef.out_features
        t = x01.float().clamp(0, 1).flatten(1) * m
        i = t.floor().clamp(max=m - 1)
        lo, hi = y.gather(1, i.long()), y.gather(1, i.long() + 1)
        return (lo + (t - i) * (hi - lo)).view_as(x01)

    def inverse(self, code: torch.Tensor, y01: torch.Tensor) -> torch.Tensor:
        """The inputs whose curve values are ``y01`` (N, 1, h, w) in [0, 1]. Values above 1 (an image brighter than
        the field G draws for it, which :meth:`Generator.undo` divides out) read as 1 unless ``extend``, which
        continues the last segment above 1, so that what lies above keeps its differences."""
        y, m = self.levels(code), self.coef.out_features
        v = y01.float().clamp(0, None if self.extend else 1).flatten(1)
        i = (torch.searchsorted(y[:, 1:-1].contiguous(), v.contiguous(), right=True)).clamp(max=m - 1)
        lo, hi = y.gather(1, i), y.gather(1, i + 1)
        return ((i + (v - lo) / (hi - lo)) / m).view_as(y01)


def reflect_padding(module: nn.Module) -> nn.Module:
    """Pad every convolution of ``module`` that pads by reflecting its input at the border instead
    of with zeros, as DRIT's content encoder and generator do (``nn.ReflectionPad2d``): a model
    trained on windows then sees no dark frame round each window (``DRITConfig.padding``; tried,
    off by default: docs/experiments.md, "Reflection padding"). Returns ``module``."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d) and any(p > 0 for p in m.padding):
            m.padding_mode = "reflect"
    return module


class UpConv(nn.Conv2d):
    """Nearest-neighbour 2x up-sampling followed by this 3 x 3 convolution (padding 1), computed
    without the up-sampled map: each of the four output phases (2i + a, 2j + b) sees only a 2 x 2
    neighbourhood of the small map, with the 3 x 3 weights summed over the taps that land on the
    same input pixel. One 2 x 2 convolution with 4 x the output channels on the small map gives
    all four phases, which are then interleaved. The same function (to float rounding; tested)
    at 4 instead of 9 multiply-adds per output pixel and input-output channel pair, and no 2x
    copy to write and back-propagate through (docs/experiments.md, "Speed"). Types as ``nn.Conv2d``'s (autocast
    casts the folded weights). With ``padding_mode`` "reflect" (:func:`reflect_padding`) the
    up-sampled map is padded by reflection."""

    def __init__(self, cin: int, cout: int):
        super().__init__(cin, cout, 3, 1, 1)

    def phase_weights(self) -> torch.Tensor:
        """(4 cout, cin, 2, 2): per output channel the kernels of phases (0,0), (0,1), (1,0), (1,1).
        Phase a = 0 reads input rows (i - 1, i) with the 3 x 3 rows (0, 1 + 2); a = 1 reads (i, i + 1)
        with (0 + 1, 2); the same for columns."""
        w = self.weight
        fold = lambda t, d: [torch.stack([t.select(d, 0), t.select(d, 1) + t.select(d, 2)], d),
                             torch.stack([t.select(d, 0) + t.select(d, 1), t.select(d, 2)], d)]
        return torch.stack([c for r in fold(w, 2) for c in fold(r, 3)], 1).flatten(0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (n, _, h, w), c = x.shape, self.out_channels
        # reflecting the doubled map by one pixel repeats the small map's border pixel
        x, pad = (F.pad(x, (1, 1, 1, 1), mode="replicate"), 0) if self.padding_mode == "reflect" else (x, 1)
        y = F.conv2d(x, self.phase_weights(), self.bias.repeat_interleave(4), 1, pad).view(n, c, 2, 2, h + 1, w + 1)
        # phase (a, b) of output pixel (2i + a, 2j + b) is y[..., a, b, i + a, j + b]
        rows = [torch.stack([y[:, :, a, b, a: a + h, b: b + w] for b in (0, 1)], -1) for a in (0, 1)]
        return torch.stack(rows, 3).reshape(n, c, 2 * h, 2 * w)


class Generator(nn.Module):
    """G(z^c, z^a, c): content map + attribute code + scanner code -> image in [-1, 1].

    ``tone_curve`` > 0: the image (in [0, 1]) goes through a :class:`ToneCurve` with that many
    segments drawn from the code, each of slope at least ``tone_floor`` (``tone_extend``: its inverse continues
    the last segment above 1). ``bias_field`` > 0: it
    is then multiplied by a :class:`BiasField` of that order drawn from the same code, at the
    pixels' positions in the whole slice (``origin``, ``full``: see :meth:`forward`), and
    clipped to 1. :meth:`undo` inverts both.

    ``upsample``: ``"resize"`` doubles the map by nearest-neighbour repetition and then convolves
    (3 x 3; computed as :class:`UpConv`); ``"transpose"`` (DRIT's, and how checkpoints written before this option were built)
    uses a 4 x 4 stride-2 transposed convolution, whose uneven overlap leaves a period-2
    checkerboard in the output (Odena, Dumoulin & Olah 2016, "Deconvolution and checkerboard
    artifacts")."""

    def __init__(self, width: int = 16, attr: int = 64, k: int = 4, n_res: int = 2, down: int = 2,
                 bias_field: int = 0, upsample: str = "resize", tone_curve: int = 0, tone_floor: float = 0.0,
                 tone_extend: bool = False):
        super().__init__()
        if upsample not in ("resize", "transpose"):
            raise ValueError(f"upsample must be 'resize' or 'transpose', got {upsample!r}")
        w, self.k = width, k
        self.code = nn.Sequential(nn.Linear(attr + k, 128), nn.LeakyReLU(0.2, inplace=True), nn.Linear(128, 64))
        self.res = nn.ModuleList([ModulatedResBlock(w * 2 ** down, 64) for _ in range(n_res)])
        up = []
        for i in reversed(range(down)):
            cin, cout = w * 2 ** (i + 1), w * 2 ** i
            # "resize": nn.Identity() holds the place the separate nn.Upsample had, so that the
            # checkpoints written before UpConv keep their parameter names
            up += ([nn.ConvTranspose2d(cin, cout, 4, 2, 1)] if upsample == "transpose" else
                   [nn.Identity(), UpConv(cin, cout)])
            up += [nn.GroupNorm(1, cout), nn.LeakyReLU(0.2, inplace=True)]
        self.up = nn.Sequential(*up, nn.Conv2d(w, 1, 5, 1, 2), nn.Tanh())
        self.field = BiasField(64, bias_field) if bias_field else None
        self.curve = ToneCurve(64, tone_curve, tone_floor, tone_extend) if tone_curve else None

    def undo(self, x01: torch.Tensor, za: torch.Tensor, c: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """(N, 1, h, w) images in [0, 1] without the bias field and tone curve G draws for codes
        (z^a, c) at the coordinates ``grid``: what G's network would have made of them (float32)."""
        code = self._code(za, c)
        flat = x01.float() / self.field(code, grid) if self.field is not None else x01.float()
        return self.curve.inverse(code, flat) if self.curve is not None else flat

    def _code(self, za: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The 64-d code the residual blocks and the field read, from (z^a, c)."""
        return self.code(torch.cat([za, c.to(za.dtype)], 1))

    def forward(self, zc, za, c, shape: tuple[int, int], origin: torch.Tensor | None = None,
                full: tuple[int, int] | None = None):
        """``shape``: the output's size. The output is a whole slice, or (``origin`` (N, 2), the
        top-left corners of windows of ``full``-sized slices) windows of them."""
        code = self._code(za, c)
        h = zc
        for block in self.res:
            h = block(h, code)
        out = self.up(h)[..., : shape[0], : shape[1]]
        if self.field is None and self.curve is None:
            return out
        x01 = (out + 1) / 2
        if self.curve is not None:
            x01 = self.curve(code, x01)
        if self.field is not None:
            x01 = x01 * self.field(code, coordinates(origin, tuple(shape), full, len(out), out.device))
        return x01.clamp(max=1).to(out.dtype) * 2 - 1


def level_stats(levels, x: torch.Tensor, grid: torch.Tensor | None = None,
                order: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``x`` through ``levels`` in turn; return the last output and the spatial mean and
    standard deviation of every channel of every level, concatenated (appearance statistics,
    independent of where things are; computed in float32).

    ``order`` > 0 adds every channel's spatial moments mean(x phi) against the non-constant
    monomials phi of the (N, 2, h, w) coordinate channels ``grid`` (:func:`nbutils.crops.coordinates`)
    up to that order: where a smooth field such as a coil's bias field is brighter, which the mean
    and spread cannot tell. A level that halves the map (floor) halves the grid by 2 x 2
    averaging, which keeps each cell's coordinate at the centre of the cells it covers."""
    stats = []
    g = None if grid is None else grid.float()
    for level in levels:
        x = level(x)
        f = x.float().flatten(2)
        stats += [f.mean(2), f.std(2)]
        if order:
            while g.shape[-1] > x.shape[-1] or g.shape[-2] > x.shape[-2]:
                g = F.avg_pool2d(g, 2)
            if g.shape[-2:] != x.shape[-2:]:
                raise ValueError(f"a {tuple(g.shape[-2:])} grid for a {tuple(x.shape[-2:])} map")
            phi = monomials(g, order)[:, 1:].flatten(2)  # (N, P, hw), the constant left out
            with torch.autocast(x.device.type, enabled=False):  # float32 under mixed precision too
                stats.append(torch.einsum("nch,nph->ncp", f, phi).flatten(1) / f.shape[-1])
    return x, torch.cat(stats, 1)


class _KernelSums(torch.autograd.Function):
    """sum_p weight[n, p] * exp(-(scale * (v[n, p] - centres[b]))^2 / 2) for (N, P) ``v`` and
    ``weight``: (N, B). The kernel matrix (N, P, B) is made once and kept for the backward pass,
    where both gradients are one batched product with it (d/dv of the kernel is
    -scale^2 (v - c) times the kernel), instead of autograd's pass per elementwise operation.
    The exponent is clamped at -80 (a kernel value of 2e-35 where it would be smaller): on the
    CPU exp of arguments that underflow float32 takes a path 10-20 x slower."""

    @staticmethod
    def forward(ctx, v, weight, centres, scale):
        with torch.autocast(v.device.type, enabled=False):
            k = torch.exp((((v[:, :, None] - centres) * scale) ** 2 * -0.5).clamp(min=-80))
            ctx.save_for_backward(v, weight, centres, k)
            ctx.scale = scale
            return torch.bmm(weight[:, None], k)[:, 0]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        v, weight, centres, k = ctx.saved_tensors
        with torch.autocast(v.device.type, enabled=False):
            # (N, P, 2): sum_b k g_b and sum_b k g_b c_b
            kg = torch.bmm(k, torch.stack([grad, grad * centres], 2))
            grad_weight = kg[..., 0]
            grad_v = weight * (kg[..., 1] - v * kg[..., 0]) * ctx.scale ** 2
        return grad_v, grad_weight, None, None


def soft_histogram(x: torch.Tensor, bins: int = 32, fine: int = 1024) -> torch.Tensor:
    """Differentiable intensity histogram of the foreground (> background -1) of images in
    [-1, 1]: Gaussian kernels on ``bins`` centres, normalised by the foreground area.

    With a gradient (G's update through D_s), the kernels' sums and their gradients are computed
    by :class:`_KernelSums` (the same function; its gradients tested against autograd's of the
    direct form). When no gradient is needed (a classifier's or an encoder's input), the same
    kernels are applied to a ``fine``-bin histogram of the pixels instead of to every pixel:
    equal up to intensities quantised to 2 / ``fine`` (a 40th of the kernels' width), and about
    bins x cheaper on whole 1 mm slices."""
    centres = torch.linspace(-1, 1, bins, device=x.device, dtype=x.dtype)
    v = x.flatten(1)
    fg = torch.sigmoid((v + 0.95) * 400)
    if torch.is_grad_enabled() and x.requires_grad:
        return _KernelSums.apply(v, fg, centres, bins / 2) / (fg.sum(1, keepdim=True) + 1e-3)
    kernel = lambda u: torch.exp(-0.5 * ((u - centres) * (bins / 2)) ** 2)
    vf, fgf = v.float(), fg.float()
    idx = ((vf.clamp(-1, 1) + 1) * (fine / 2)).long().clamp(max=fine - 1)
    counts = torch.zeros(len(v), fine, device=x.device).scatter_add_(1, idx, fgf)
    mids = (torch.arange(fine, device=x.device, dtype=torch.float32) + 0.5) * (2 / fine) - 1
    with torch.autocast(x.device.type, enabled=False):  # counts of a bin can pass float16's 65,504
        sums = counts @ kernel(mids[:, None].to(x.dtype)).float()
    return (sums / (fgf.sum(1, keepdim=True) + 1e-3)).to(x.dtype)


def band_powers(x: torch.Tensor, bands: int = 4) -> torch.Tensor:
    """Directional power spectrum of images: the log share of the image's power in ``bands``
    radial frequency bands (octave-like, from 1/16 cycle/px to Nyquist) along the first axis,
    along the second and along the diagonal, i.e. ``3 * bands`` numbers per image.

    Resolution, anisotropic blur, noise, ringing and ghosting all change this and none of them
    is visible in a histogram; the anatomy's layout changes it little (it sits mostly below
    1/16 cycle/px). Differentiable; computed in float32, under autocast too (in float16 the
    zero-frequency power of a 64 px view overflows)."""
    with torch.autocast(x.device.type, enabled=False):
        x = x.float().flatten(0, -3)
        power = torch.fft.rfft2(x).abs().square().flatten(1)
        weights = _band_weights(x.shape[-2], x.shape[-1], bands, str(x.device))
        total = power.sum(1, keepdim=True) + 1e-12
        return (power @ weights / total + 1e-12).log()


@functools.lru_cache(maxsize=16)
def _band_weights(h: int, w: int, bands: int, device: str) -> torch.Tensor:
    """(h * (w // 2 + 1), 3 * bands) averaging weights of :func:`band_powers`' frequency masks
    (each column: 1 / its size on its mask), built once per image shape."""
    fy = torch.fft.fftfreq(h).abs()[:, None]
    fx = torch.fft.rfftfreq(w)[None, :]
    edges = torch.linspace(1 / 16, 0.5, bands + 1).tolist()
    edges[-1] = 0.51  # include Nyquist
    low = 1 / 16
    masks = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        masks += [(fy >= lo) & (fy < hi) & (fx < low), (fx >= lo) & (fx < hi) & (fy < low),
                  (fy >= lo) & (fy < hi) & (fx >= lo) & (fx < hi)]
    m = torch.stack(masks).flatten(1).float()
    return (m / m.sum(1, keepdim=True)).T.contiguous().to(device)


class ScannerDiscriminator(nn.Module):
    """D_s: a patch real/fake map and a K-way scanner head (global pooling: any size).

    The scanner head reads the mean and standard deviation of every level's feature maps,
    the first (un-normalised) one included, plus a small MLP on a soft intensity histogram of
    the image. Instance normalisation divides out exactly the intensity statistics that tell
    scanners apart: a head on the last, normalised level stayed at chance on the simulated
    set, and one on every level's statistics reached 0.4-0.6 held-out accuracy after 300
    iterations, 0.8 with the histogram (the scanners differ mostly in their contrast curve)."""

    def __init__(self, width: int = 16, k: int = 4, levels: int = 3, bins: int = 32):
        super().__init__()
        chans = [width * 2 ** i for i in range(levels)]
        self.bins = bins
        self.levels = nn.ModuleList([_conv(1, chans[0], 4, 2, norm=False)] +
                                    [_conv(chans[i], chans[i + 1], 4, 2) for i in range(levels - 1)])
        self.adv = nn.Conv2d(chans[-1], 1, 3, 1, 1)
        self.cls = nn.Linear(2 * sum(chans), k)
        self.hist = nn.Sequential(nn.Linear(bins, 64), nn.LeakyReLU(0.2, inplace=True), nn.Linear(64, k))

    def forward(self, x):
        h = self.hist(soft_histogram(x.float(), self.bins) * 8)
        x, stats = level_stats(self.levels, x)
        return self.adv(x), self.cls(stats) + h


class ContentDiscriminator(nn.Module):
    """D_c: K-way scanner classifier on content maps (global pooling: any size).

    It reads the spatial mean and standard deviation of every channel of the content map itself
    and of each of its two conv levels: a scanner can hide in a channel's gain and offset, which
    instance normalisation followed by average pooling (DRIT's D_c) cannot see.

    ``norm`` instance-normalises the conv levels. Leave it off: the mean and spread of an
    instance-normalised map are its affine constants, the same for every image, so with the
    content map itself normalised (``ContentEncoder(norm=True)``) such a D_c reads nothing but the
    shape of each channel's distribution, and stays near chance while a linear probe reads the
    scanner from the same maps (docs/experiments.md, "Stage 2"). ``True`` is how checkpoints written before
    this option were built.

    ``depth`` adds that many stride-2 levels (4 x 4 kernels, channels doubling each time), as
    DRIT's D_c is a stack of stride-2 convolutions. The two 3 x 3 levels alone see 5 x 5 cells of
    the content map, too little to compare one tissue's level with another's: trained on a
    frozen E^c's windows they read the scanner at 0.46, three stride-2 levels at 0.72. In
    training such a D_c does read the scanner, yet the models it trained scored no better
    (docs/experiments.md, "Stage 2"), so the default stays 0, as checkpoints written before this
    option were built.

    ``field`` > 0 also reads each channel's spatial moments against the monomials (up to that
    order) of where its cells lie in the whole slice (:func:`level_stats`; the ``grid`` handed to
    :meth:`forward`). The scanner that a content map keeps is mostly the coil's bias field
    (docs/experiments.md, "What carries the scanner into z^c"): a smooth trend at a fixed place in the field of view,
    which statistics that ignore position cannot see, least of all on windows cut from anywhere."""

    def __init__(self, channels: int, k: int = 4, norm: bool = False, depth: int = 0, field: int = 0):
        super().__init__()
        self.field = field
        widths = [channels] * 3 + [channels * 2 ** (i + 1) for i in range(depth)]
        self.levels = nn.ModuleList([nn.Identity(), _conv(channels, channels, 3, 1, norm),
                                     _conv(channels, channels, 3, 1, norm),
                                     *[_conv(widths[i + 2], widths[i + 3], 4, 2, norm) for i in range(depth)]])
        moments = n_monomials(field) - 1  # the constant left out
        self.cls = nn.Linear((2 + moments) * sum(widths), k)

    def forward(self, zc, grid: torch.Tensor | None = None):
        """Scanner logits of content maps ``zc``; ``grid``: the (N, 2, h, w) whole-slice
        coordinates of their cells (:func:`nbutils.crops.coordinates`; None: whole slices)."""
        # each stride-2 level halves the map, and the last must keep 2 x 2 for a spread
        small = 2 ** (len(self.levels) - 2)
        h, w = zc.shape[-2:]
        if self.field and grid is None:
            grid = coordinates(None, (h, w), n=len(zc), device=zc.device)
        if h < small or w < small:  # only on toy-sized maps
            pad = (0, max(small - w, 0), 0, max(small - h, 0))
            zc = F.pad(zc, pad, mode="replicate")
            grid = None if grid is None else F.pad(grid, pad, mode="replicate")
        return self.cls(level_stats(self.levels, zc, grid, self.field)[1])


class GaussianAttributeEncoder(nn.Module):
    """DRIT++'s unimodal attribute encoder: image -> N(mu, sigma^2) over the attribute code,
    pushed towards N(0, I) with a KL term and trained jointly with G."""

    def __init__(self, width: int = 16, attr: int = 64, levels: int = 4):
        super().__init__()
        chans = [width * 2 ** min(i, 3) for i in range(levels + 1)]
        self.body = nn.Sequential(_conv(1, chans[0], 3, 1, norm=False),
                                  *[_conv(chans[i], chans[i + 1], 4, 2, norm=False) for i in range(levels)])
        self.head = nn.Linear(chans[-1], 2 * attr)

    def forward(self, x):
        mu, logvar = self.head(self.body(x).mean((2, 3))).chunk(2, 1)
        return mu, logvar.clamp(-12, 8)
