"""Stage 2: GMM-DRIT and the DRIT++ baseline as one training task (thesis §4; docs/design.md, "Method decisions").

Each iteration takes two unpaired batches x_a, x_b and follows the thesis's four steps:

1. encode: z^c = E^c(x); (z^a, c) = E^a(x) (GMM-DRIT: the frozen GM-VAE, c = its inferred
   one-hot code; DRIT++: a unimodal Gaussian encoder trained jointly, c = the known label);
2. translate: x_ab = G(z^c_a, z^a_b, c_b), x_ba = G(z^c_b, z^a_a, c_a); scanner-free
   x_a^sf = G(z^c_a, z ~ N(0, I), 0) (and for b); and, for DRIT++'s latent regression, toward a
   random target r: x_r = G(z^c_a, z_r, c_r) (GMM-DRIT: z_r ~ p(z|y=r); DRIT++: N(0, I));
3. re-encode the translations for the cross-cycle x_aba = G(E^c(x_ab), E^a(x_ba), c_a) (and bab);
   self-reconstructions x_aa = G(z^c_a, z^a_a, c_a);
4. update D_c (scanner of z^c; gradient norm clipped), D_s^1 (real vs cross-domain and
   random-target translations), D_s^2 (real vs scanner-free), then E^c and G (and DRIT++'s E^a) on
   the adversarial, classification, content, self-reconstruction L1, cross-cycle L1, latent
   regression L1 (E^a(x_r) ≈ z_r) and z^c L2 losses.

The discriminators are updated on detached fakes, and the generator's losses are computed with
fresh discriminator passes after their step: no graph is reused across an optimizer step.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import appearance, crops, layout, losses
from .gmvae import AttributeEncoder, GMVAE, GMVAEConfig, scanner_components
from .nets import (ContentDiscriminator, ContentEncoder, GaussianAttributeEncoder, Generator, ScannerDiscriminator,
                   reflect_padding)
from .scanner_means import ScannerMeans
from .train import EpochSampler, adam, fit, load_checkpoint, load_snapshots, pick_device, refuse_other_seed


@dataclass(frozen=True)
class DRITConfig:
    image_shape: tuple[int, int]  # what it trains on: whole slices, or random windows of them
    k: int
    variant: str = "gmm-drit"  # or "drit++"
    width: int = 16
    n_res: int = 2
    down: int = 2  # stride-2 stages of E^c (and up-sampling stages of G); DRIT's is 2
    attr: int = 64  # attribute size (GMM-DRIT: the GM-VAE's gaussian size)
    known_labels: bool = False  # GMM-DRIT only: condition on the true scanner instead of the inferred one
    lr: float = 1e-4
    # the last share of the iterations over which every learning rate falls linearly toward zero, as DRIT++'s code
    # schedules it (lr_policy "lambda": decay from epoch 600 of 1,200, a share of 0.5); 0 = every rate held to the
    # end, as checkpoints written before were trained (DRITTask.lr_factor; docs/experiments.md, "DRIT's decaying
    # learning rate")
    lr_decay: float = 0.0
    # each iteration's pair x_a, x_b drawn from two scanners, as the thesis writes it ({(x_a, c_a), (x_b, c_b)} from two
    # scanners a, b): where x_b's scanner code is x_a's, x_b is drawn again among the other codes' slices (GMM-DRIT:
    # the inferred codes; DRIT++ and known_labels: the labels). False: either may share a scanner, as DRIT++'s
    # multi-domain code draws them and checkpoints written before were trained (docs/experiments.md, "Pairs from two
    # scanners")
    distinct_pairs: bool = False
    w_adv: float = 1.0
    w_cls: float = 10.0  # G's scanner-classification term (DRIT++'s multi-domain lambda_cls_G), cross-domain branch
    # the same term on the scanner-free branch (D_s²'s scanner head toward no scanner, the all-zero code); as w_cls
    # by default. Measured at 1, not adopted (docs/experiments.md, "Do the scanner-free branch's two terms fight?")
    w_cls_sf: float = 10.0
    w_content: float = 1.0
    w_self: float = 10.0
    w_cc: float = 10.0
    w_kl: float = 0.01  # DRIT++ only
    # DRIT++'s latent regression: a random attribute code must be recoverable from G's output
    w_latent: float = 10.0
    w_zc: float = 0.01  # DRIT++'s L2 penalty on z^c
    # std of Gaussian noise added to z^c before G in training, as DRIT++ does (docs/experiments.md, "Stage 2")
    zc_noise: float = 1.0
    dc_clip: float = 5.0  # D_c's gradient-norm clip, as in DRIT++
    # D_c's own schedule, as DRIT's training loop runs it (d_iter 3, D_c's rate lr / 2.5): D_c updates
    # per iteration, the extra ones on fresh batches whose content maps E^c reads without gradients
    # (PairSampler's "dc" batches), and D_c's learning rate as a share of lr. 1 and 1.0: one update
    # at lr, as checkpoints written before were trained (docs/experiments.md, "D_c's own schedule")
    dc_steps: int = 1
    dc_lr: float = 1.0
    dc_norm: bool = False  # instance-normalise D_c's conv levels (blinds it; nets.ContentDiscriminator)
    # stride-2 levels of D_c after its two 3 x 3 ones (nets.ContentDiscriminator); 3 lets D_c read
    # the scanner from z^c, and scored lower on our second set (docs/experiments.md, "Stage 2")
    dc_depth: int = 0
    # order of the spatial moments D_c reads at its cells' positions in the whole slice, which
    # let it see a bias field kept in z^c (nets.ContentDiscriminator; docs/experiments.md, "Stage 2"): the
    # order of the field G draws (bias_field); 0 = none, as checkpoints written before were built
    dc_field: int = 3
    content_norm: bool = True  # instance-normalise z^c (nets.ContentEncoder; docs/experiments.md, "Stage 2")
    # order of the log-polynomial bias field G draws from the code at each pixel's position in the
    # whole slice (nets.BiasField); 0 = none (docs/experiments.md, "Stage 2")
    bias_field: int = 3
    # GMM-DRIT: E^c reads the image divided by the bias field G draws from the image's own codes
    # (one nets.BiasField for both; the scanner code inferred by the frozen E^a): E^c alone knows
    # neither the scanner nor where a window lies, so it cannot undo a field at a fixed place in
    # the field of view (Translator.encode; docs/experiments.md, "Stage 2"). False: as checkpoints written
    # before were built, DRIT++ and known_labels (whose codes are labels)
    content_field: bool = False
    # segments of the monotone tone curve G draws from the code before the bias field
    # (nets.ToneCurve, Nyul-Udupa-like); with content_field E^c reads its input with it undone too.
    # 0 = none, as checkpoints written before were built (docs/experiments.md, "Stage 2")
    tone_curve: int = 0
    # the least slope of each of its segments (nets.ToneCurve): 0 = unbounded, as it was first built
    tone_floor: float = 0.0
    # E^c reads an image brighter than the field G draws for it (x / field > 1) through the curve's last segment
    # continued above 1 (nets.ToneCurve.inverse), as it does without a curve; False: as 1, flat, as checkpoints
    # written before were built (docs/experiments.md, "Above the field")
    tone_extend: bool = False
    # how G doubles its maps: "resize" (nearest neighbour, then a 3 x 3 conv) or DRIT's 4 x 4
    # stride-2 transposed conv, "transpose", which leaves a checkerboard (nets.Generator)
    upsample: str = "resize"
    # how E^c's and G's convolutions pad: "zeros", or "reflect", as DRIT's networks do (nets.reflect_padding;
    # a transposed up-sampling, upsample "transpose", keeps zeros);
    # tried, not yet the default: no gain told apart from another seed's, 6 % more time per iteration
    # (docs/experiments.md, "Reflection padding")
    padding: str = "zeros"
    # the scanner-free outputs must keep their input's content, L1(E^c(G(z^c, z, 0)), z^c): without
    # it nothing but D_s2 constrains that branch (not in the thesis; docs/experiments.md, "Stage 2")
    w_sf_content: float = 10.0
    # z^c must not change under a random bias field and gamma, L1(E^c(jitter(x)), z^c)
    # (nbutils.appearance; not in the thesis; docs/experiments.md, "Stage 2")
    w_invariance: float = 0.0
    # the invariance term's change also blurs (sigma uniform in [0, this] px per axis) and adds noise (sigma uniform
    # in [0, this] x the head's spread in the window): TorchIO's RandomBlur / RandomNoise defaults are 2, 0.25; 0 = off
    invariance_blur: float = 0.0
    invariance_noise: float = 0.0
    # the term's target, the image's own z^c, also learns (both maps move toward each other): E^c must drop what the
    # change alters, not only restore it; False = the target is held fixed
    invariance_symmetric: bool = False
    # E^c reads the log image less its local mean over sigma px (nbutils.appearance.log_detail): a smooth coil
    # field and a gain are gone before E^c sees them; 0 = the image as it is (docs/experiments.md, "A log
    # high-pass before E^c")
    content_highpass: float = 0.0
    # the floor added before the log (appearance.log_detail): higher stretches dark tissue, and its noise, less
    content_highpass_floor: float = 0.02
    # GMM-DRIT: the mean coil field G draws for each scanner code, relative to the other codes', must
    # move as the code's training slices' smooth layout does (nbutils.layout; field_layout_loss; not in
    # the thesis; docs/experiments.md, "A field anchored to the slices' layout")
    w_field_layout: float = 0.0
    # z^c's running mean per scanner code in each of the whole slice's 4 x 4 regions, standardised, must not differ
    # between the codes (nbutils.scanner_means: what a linear probe of z^c reads first; not in the thesis;
    # docs/experiments.md, "Scanner means in z^c"); its running means' momentum per iteration
    w_content_mean: float = 0.0
    content_mean_momentum: float = 0.99
    # the term weighs each region's differences by the inverse of the windows' covariance over the channels there, as
    # a linear discriminant does, instead of each channel's variance (nbutils.scanner_means; "Whitened scanner means")
    content_mean_whiten: bool = False
    # the slices it harmonizes (fully convolutionally) when it trains on windows of them; None = image_shape
    slice_shape: tuple[int, int] | None = None
    # > 0: the attribute encoder reads whole slices as view x view views (nbutils.crops.view; the
    # GM-VAE reads its own training size); needed when training on windows (docs/experiments.md, "Native resolution")
    view: int = 0

    @property
    def slices(self) -> tuple[int, int]:
        """The size of the slices this model harmonizes."""
        return tuple(self.slice_shape or self.image_shape)

    def __post_init__(self):
        if self.variant not in ("gmm-drit", "drit++"):
            raise ValueError(f"variant must be 'gmm-drit' or 'drit++', got {self.variant!r}")
        if self.padding not in ("reflect", "zeros"):
            raise ValueError(f"padding must be 'reflect' or 'zeros', got {self.padding!r}")
        if self.content_field and not self.bias_field:
            raise ValueError("content_field divides E^c's input by G's bias field: set bias_field > 0")
        if self.content_field and self.known_labels:
            raise ValueError("content_field reads the field of the code E^a infers from the image; with known_labels "
                             "G's codes are the labels, which a harmonizer of unlabelled scans does not have")
        if self.w_field_layout and (self.variant != "gmm-drit" or not self.bias_field):
            raise ValueError("w_field_layout anchors the field G draws for each scanner code: GMM-DRIT with "
                             "bias_field > 0")
        if not 0 <= self.lr_decay <= 1:
            raise ValueError(f"lr_decay is the share of the iterations over which the learning rates fall, in [0, 1], "
                             f"got {self.lr_decay}")
        if self.dc_steps < 1 or self.dc_lr <= 0:
            raise ValueError(f"dc_steps must be at least 1 and dc_lr positive, got {self.dc_steps} and {self.dc_lr}")
        if self.content_highpass < 0 or self.content_highpass_floor <= 0:
            raise ValueError(f"content_highpass is a Gaussian's sigma in pixels (0: off) and content_highpass_floor "
                             f"positive, got {self.content_highpass} and {self.content_highpass_floor}")
        if not 0 <= self.content_mean_momentum < 1:
            raise ValueError(f"content_mean_momentum is the running means' momentum per iteration, in [0, 1), got "
                             f"{self.content_mean_momentum}")
        if self.tone_extend and not (self.tone_curve and self.content_field):
            raise ValueError("tone_extend continues the inverse of the tone curve E^c reads through: set "
                             "tone_curve > 0 and content_field")
        if self.content_mean_whiten and not self.w_content_mean:
            raise ValueError("content_mean_whiten shapes the scanner-means term: set w_content_mean > 0")
        if self.content_field and self.variant == "drit++":
            raise ValueError("content_field needs the scanner code of every image E^c reads; DRIT++ has it "
                             "only as a label, which a harmonizer of unlabelled scans does not have: use GMM-DRIT")


class Translator(nn.Module):
    """All stage-2 networks, and the translations they compute (used in training and inference)."""

    def __init__(self, cfg: DRITConfig, gmvae: GMVAE | None = None):
        super().__init__()
        self.cfg = cfg
        w, k = cfg.width, cfg.k
        self.content = ContentEncoder(w, cfg.n_res, cfg.down, cfg.content_norm)
        self.generator = Generator(w, cfg.attr, k, cfg.n_res, cfg.down, cfg.bias_field, cfg.upsample,
                                   cfg.tone_curve, cfg.tone_floor, cfg.tone_extend)
        if cfg.padding == "reflect":
            for part in (self.content, self.generator):
                reflect_padding(part)
        self.ds1, self.ds2 = ScannerDiscriminator(w, k), ScannerDiscriminator(w, k)
        self.dc = ContentDiscriminator(self.content.channels, k, cfg.dc_norm, cfg.dc_depth, cfg.dc_field)
        if cfg.w_content_mean:  # its running means are buffers: saved and resumed with the weights
            self.scanner_means = ScannerMeans(k, self.content.channels, self.content_map_size,
                                              cfg.content_mean_momentum, whiten=cfg.content_mean_whiten)
        if cfg.variant == "gmm-drit":
            if gmvae is None:
                raise ValueError("GMM-DRIT needs the trained GM-VAE (notebook 02) as its attribute encoder")
            if gmvae.cfg.gaussian_size != cfg.attr or gmvae.cfg.k != k:
                raise ValueError(f"the GM-VAE has {gmvae.cfg.k} components and attribute size "
                                 f"{gmvae.cfg.gaussian_size}; this model expects {k} and {cfg.attr}")
            self.attribute = AttributeEncoder(gmvae)
        else:
            self.attribute = GaussianAttributeEncoder(w, cfg.attr)
        # known_labels: each scanner label's GM-VAE component, for random_code (set by train_drit)
        self.label_component: torch.Tensor | None = None

    @property
    def view_size(self) -> int:
        """The size of the whole slices E^a is handed (0: the slices as they are): the GM-VAE's
        input, or the native slices it reads its appearance features from before viewing them
        (``appearance_size``); DRIT++'s ``cfg.view``."""
        if self.cfg.variant == "gmm-drit":
            g = self.attribute.gmvae.cfg
            return g.appearance_size or g.image_shape[0]
        return self.cfg.view

    def content_grid(self, origin: torch.Tensor, size: tuple[int, int]) -> torch.Tensor | None:
        """Whole-slice coordinates (:func:`nbutils.crops.coordinates`) of the cells of content maps
        of ``size`` computed from windows whose top-left pixels are ``origin`` (N, 2); None when
        D_c does not read positions."""
        return self.cell_grid(origin, size) if self.cfg.dc_field else None

    def cell_grid(self, origin: torch.Tensor | None, size: tuple[int, int], n: int = 1) -> torch.Tensor:
        """Whole-slice coordinates of the cells of content maps of ``size``, from windows whose top-left
        pixels are ``origin`` (N, 2), or of ``n`` whole slices' maps when ``origin`` is None."""
        if origin is None:
            return crops.coordinates(None, tuple(size), n=n, device=next(self.content.parameters()).device)
        return crops.coordinates(origin.float() / self.content.factor, tuple(size), self.content_map_size)

    @property
    def content_map_size(self) -> tuple[int, int]:
        """The size of a whole slice's content map (E^c pads the slice to a multiple of its factor)."""
        return tuple(-(-n // self.content.factor) for n in self.cfg.slices)

    def batch_content(self, batch: dict) -> tuple[torch.Tensor, tuple, torch.Tensor | None]:
        """(z^c, (z^a, c), window origins or None) of a :class:`PairSampler` batch's images, both sides in one pass,
        each read with its own codes: GMM-DRIT's frozen codes when the batch carries them, DRIT++'s labels (its E^c
        reads no codes), else E^a's."""
        if "za" in batch:  # GMM-DRIT: the frozen E^a's codes, computed once
            codes = (torch.cat([batch["za"], batch["zb"]]), torch.cat([batch["ca"], batch["cb"]]))
        elif self.cfg.variant == "drit++":
            codes = (None, F.one_hot(torch.cat([batch["la"], batch["lb"]]), self.cfg.k).float())
        else:
            (za_a, c_a, _), (za_b, c_b, _) = (self.attributes(batch.get("v" + s, batch["x" + s]), batch.get("l" + s))
                                              for s in "ab")
            codes = (torch.cat([za_a, za_b]), torch.cat([c_a, c_b]))
        origin = torch.cat([batch["oa"], batch["ob"]]) if "oa" in batch else None
        return self.encode(torch.cat([batch["xa"], batch["xb"]]), codes, origin, self.cfg.slices), codes, origin

    # ---------------------------------------------------------------- codes
    def attributes(self, x: torch.Tensor, labels: torch.Tensor | None = None, sample: bool = False):
        """(z^a, c, kl) for whole slices (or their views) in [-1, 1]; ``labels`` are the known scanners (DRIT++, or
        GMM-DRIT with ``known_labels``). ``sample``: DRIT++ draws z^a from its posterior (the
        reparameterisation its KL term needs); GMM-DRIT always takes the frozen posterior's mean,
        in training as at inference (with a collapsed posterior a sample carries much less of the
        scanner than the mean, so training on samples taught G to ignore z^a)."""
        onehot = None if labels is None else F.one_hot(labels, self.cfg.k).float()
        if self.cfg.variant == "gmm-drit":
            q = self.attribute.encode((x + 1) / 2)
            c = onehot if self.cfg.known_labels and onehot is not None else q["c"]
            return q["mean"], c, x.new_zeros(())
        mu, logvar = self.attribute(crops.view(x, self.cfg.view) if self.cfg.view else x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if sample else mu
        kl = 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).sum(1).mean()
        if onehot is None:
            raise ValueError("DRIT++ is conditioned on the known scanner labels: pass labels")
        return z, onehot, kl

    def encode(self, x: torch.Tensor, codes, origin: torch.Tensor | None = None,
               full: tuple[int, int] | None = None) -> torch.Tensor:
        """z^c of (N, 1, h, w) images in [-1, 1]. With ``content_field`` E^c reads them divided by
        the bias field G draws from their own ``codes`` (z^a, c) at their pixels' whole-slice
        positions (``origin``, ``full`` as for the generator), and with G's tone curve undone
        (``tone_curve``); without it ``codes`` are unused (may be None). With ``content_highpass`` E^c reads the
        log image less its local mean (:func:`nbutils.appearance.log_detail`)."""
        if self.cfg.content_field:
            za, c = codes
            grid = crops.coordinates(origin, tuple(x.shape[-2:]), full, len(x), x.device)
            x = (self.generator.undo((x.float() + 1) / 2, za, c, grid) * 2 - 1).to(x.dtype)
        if self.cfg.content_highpass:
            x = appearance.log_detail(x, self.cfg.content_highpass, self.cfg.content_highpass_floor)
        return self.content(x)

    def translate(self, x: torch.Tensor, za: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """G(E^c(x), z^a, c) for (N, 1, H, W) slices in [-1, 1].

        A model trained on windows translates a larger slice window by window: training-sized
        windows at half-window strides, blended with a sine taper (:meth:`_windows`; longer strides,
        Gaussian and flat tapers scored up to 0.018 SSIM lower: docs/experiments.md). E^c and G
        instance-normalise their feature maps; over a whole 1 mm slice, half of it background,
        those statistics are not the ones they were trained with, and translating the whole slice
        in one pass scored 0.03-0.04 SSIM lower against the target scan and the clean truth
        (docs/experiments.md, "Stage 2"). The background outside the head (:func:`outside`) stays background:
        there is nothing to translate there, and G's faint haze in it showed as grey squares."""
        return self.translate_each(x, [(za, c)])[0]

    def translate_each(self, x: torch.Tensor, codes) -> list[torch.Tensor]:
        """:meth:`translate` of ``x`` with each (z^a, c) of ``codes``: E^c's reading of the
        slices (and of their windows), which no code changes, is computed once for all of them.
        The same outputs as one :meth:`translate` per code."""
        h, w = x.shape[-2:]
        source = self._source(x)
        if not self._windowed(x):
            zc = self.encode(x, source)
            ys = [self.generator(zc, za, c, (h, w)) for za, c in codes]
        else:
            ys = self._windows(x, codes, source)
        background = outside(x)
        return [y.masked_fill(background, -1.0) for y in ys]

    def _source(self, x: torch.Tensor):
        """The codes E^c reads ``x`` with: (z^a, c) inferred from it with ``content_field``, else None."""
        return self.attributes(x)[:2] if self.cfg.content_field else None

    def _windowed(self, x: torch.Tensor) -> bool:
        """Whether slices ``x`` are translated window by window (a model trained on windows of smaller slices)."""
        (th, tw), (h, w) = self.cfg.image_shape, x.shape[-2:]
        return tuple(self.cfg.image_shape) != self.cfg.slices and not (h <= th and w <= tw)

    def _window_rows(self, x: torch.Tensor, source):
        """For each row of the training-sized windows that tile slices ``x``: (y0, the windows' x0s, the
        windows (one batch of ``len(x)`` per x0), their top-left pixels, E^c's reading of them)."""
        (th, tw), (h, w) = self.cfg.image_shape, x.shape[-2:]
        n, xs = len(x), window_starts(w, tw)
        for y0 in window_starts(h, th):
            tiles = torch.cat([x[..., y0: y0 + th, x0: x0 + tw] for x0 in xs])
            origin = torch.tensor([[y0, x0] for x0 in xs for _ in range(n)], device=x.device, dtype=torch.float32)
            zc = self.encode(tiles, None if source is None else [v.repeat(len(xs), 1) for v in source], origin, (h, w))
            yield y0, xs, tiles, origin, zc

    def _windows(self, x: torch.Tensor, codes, source=None) -> list[torch.Tensor]:
        (th, tw), (h, w) = self.cfg.image_shape, x.shape[-2:]
        th, tw = min(th, h), min(tw, w)  # a slice narrower than a window in one dimension: windows as wide as it
        weight = taper(th, x.device)[:, None] * taper(tw, x.device)[None]
        outs = [x.new_zeros(x.shape, dtype=torch.float32) for _ in codes]
        total = torch.zeros(x.shape[-2:], device=x.device)
        n = len(x)
        for y0, xs, tiles, origin, zc in self._window_rows(x, source):
            for out, (za, c) in zip(outs, codes):
                y = self.generator(zc, za.repeat(len(xs), 1), c.repeat(len(xs), 1), tiles.shape[-2:], origin,
                                   (h, w)).float()
                for i, x0 in enumerate(xs):
                    out[..., y0: y0 + th, x0: x0 + tw] += y[i * n: (i + 1) * n] * weight
            for x0 in xs:
                total[y0: y0 + th, x0: x0 + tw] += weight
        return [(out / total).to(x.dtype) for out in outs]

    def content_as_fed(self, x: torch.Tensor) -> torch.Tensor:
        """The content maps G is fed when it translates (N, 1, H, W) slices in [-1, 1], as one map:
        for a model trained on windows, E^c's reading of each window :meth:`translate` cuts (what G
        reads for that window), put back where the window lies, and where windows overlap their
        readings blended with the translation's sine taper at the map's scale (a slice read in one
        pass is normalised over all of it, half of it background, a map G never reads); for a model
        trained on whole slices, E^c's reading of the slice. A window that does not start on one of
        E^c's cells is put back at the cell it starts in, the last one (flush with the slice's end)
        flush with the map's end, so that every cell is covered."""
        source = self._source(x)
        if not self._windowed(x):
            return self.encode(x, source)
        (th, _), (h, w) = self.cfg.image_shape, x.shape[-2:]
        f, n, last = self.content.factor, len(x), window_starts(h, th)[-1]
        total = torch.zeros(-(-h // f), -(-w // f), device=x.device)
        out = None
        for y0, xs, _, _, zc in self._window_rows(x, source):
            zc = zc.float()
            mh, mw = zc.shape[-2:]
            if out is None:
                out = zc.new_zeros(n, zc.shape[1], *total.shape)
                weight = taper(mh, x.device)[:, None] * taper(mw, x.device)[None]
            for i, x0 in enumerate(xs):
                cy = total.shape[0] - mh if y0 == last else min(y0 // f, total.shape[0] - mh)
                cx = total.shape[1] - mw if x0 == xs[-1] else min(x0 // f, total.shape[1] - mw)
                cells = (slice(cy, cy + mh), slice(cx, cx + mw))
                out[(..., *cells)] += zc[i * n: (i + 1) * n] * weight
                total[cells] += weight
        return out / total

    def random_code(self, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(z^a, c) for a random target per sample: GMM-DRIT draws z^a from the GM-VAE's prior
        component of a random scanner code, DRIT++ from N(0, I) with a random scanner label. With
        ``known_labels`` the code is a scanner label, and z^a is drawn from that scanner's component
        (:attr:`label_component`), as the harmonizer draws it: component numbers are an arbitrary
        order of the scanners."""
        r = torch.randint(self.cfg.k, (n,), device=device)
        y = F.one_hot(r, self.cfg.k).float()
        if self.cfg.variant == "gmm-drit":
            if self.cfg.known_labels:  # the code is the scanner r; its z^a comes from r's own component
                if self.label_component is None:
                    raise ValueError("known_labels: random_code needs each scanner's GM-VAE component "
                                     "(label_component), which train_drit sets")
                return self.attribute.draw(F.one_hot(self.label_component.to(device)[r], self.cfg.k).float()), y
            return self.attribute.draw(y), y
        return torch.randn(n, self.cfg.attr, device=device), y

    def latent_regression(self, x_r: torch.Tensor, z_r: torch.Tensor) -> torch.Tensor:
        """DRIT++'s latent regression: L1 between E^a's attribute mean of G's output ``x_r`` and
        the random code z_r it was made with (for GMM-DRIT through the frozen GM-VAE).

        Tried for GMM-DRIT and dropped: cross-entropy of the GM-VAE's q(y|x_r) against the target
        component. q(y|x) reads only appearance features, and G learned to game them: within 1,200
        iterations the self-reconstruction L1 rose to 0.94 and the translations lost the anatomy
        (SSIM vs target scan 0.34)."""
        if self.cfg.variant == "gmm-drit":
            mean = self.attribute.encode((x_r + 1) / 2)["mean"]
        else:  # DRIT++'s E^a reads x_r with its weights held: the term trains G (and E^c), not E^a, as
            # DRIT++'s code steps only E^c and G after it
            held = {name: p.detach() for name, p in self.attribute.named_parameters()}
            x_r = crops.view(x_r, self.cfg.view) if self.cfg.view else x_r  # at the size E^a reads (attributes)
            mean = torch.func.functional_call(self.attribute, held, (x_r,))[0]
        return F.l1_loss(mean.float(), z_r.float())

    def scanner_free_code(self, n: int, device, generator: torch.Generator | None = None):
        za = torch.randn(n, self.cfg.attr, generator=generator, device=device)
        return za, torch.zeros(n, self.cfg.k, device=device)


def window_starts(size: int, t: int) -> list[int]:
    """Where the windows of length ``t`` that tile ``size`` pixels start: at half-window strides, the
    last one flush with the end."""
    return sorted({*range(0, max(size - t, 0), t // 2), max(size - t, 0)})


def taper(t: int, device=None) -> torch.Tensor:
    """The sine taper (length ``t``) that blends overlapping windows."""
    return torch.sin(torch.pi * (torch.arange(t, device=device, dtype=torch.float32) + 0.5) / t)


def outside(x: torch.Tensor) -> torch.Tensor:
    """Where (N, 1, H, W) slices in [-1, 1] show the background outside the head: pixels at exactly
    -1 (0 before scaling, as skull-stripped slices are outside the brain) connected to the slice's
    border. Dark pixels the brain encloses (ventricles clipped to 0) are not background."""
    from scipy import ndimage

    zero = (x <= -1).cpu().numpy()[:, 0]
    out = np.zeros_like(zero)
    for i, z in enumerate(zero):
        lab = ndimage.label(z)[0]
        border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
        out[i] = np.isin(lab, border[border > 0])
    return torch.from_numpy(out).to(x.device)[:, None]


# options added after the quick run's checkpoints were written, with the value that builds the
# model those checkpoints hold (DRITTask.meta_of leaves them out while so)
ADDED_OFF = {"tone_curve": 0, "tone_floor": 0.0, "w_field_layout": 0.0, "padding": "zeros", "dc_steps": 1,
             "dc_lr": 1.0, "content_highpass": 0.0, "content_highpass_floor": 0.02, "invariance_blur": 0.0,
             "invariance_noise": 0.0, "invariance_symmetric": False, "w_cls_sf": 10.0, "w_content_mean": 0.0,
             "content_mean_momentum": 0.99, "content_mean_whiten": False, "lr_decay": 0.0,
             "tone_extend": False, "distinct_pairs": False}
# every option's value in checkpoints written before it existed (from_checkpoint)
BEFORE_OPTIONS = dict(content_norm=False, w_sf_content=0.0, bias_field=0, dc_norm=True, dc_depth=0, dc_field=0,
                      content_field=False, upsample="transpose", **ADDED_OFF)


class DRITTask:
    """Stage-2 training task for :func:`nbutils.train.fit`."""

    def __init__(self, cfg: DRITConfig, gmvae: GMVAE | None = None, device="cpu", steps: int = 0):
        self.cfg = cfg
        self.modules = Translator(cfg, gmvae).to(device)
        m = self.modules
        gen_params = list(m.content.parameters()) + list(m.generator.parameters())
        if cfg.variant == "drit++":
            gen_params += list(m.attribute.parameters())
        optimizer = lambda params, share=1.0: adam(params, lr=cfg.lr * share, betas=(0.5, 0.999), weight_decay=1e-4)
        self.layout = None  # (codes, groups, targets) of field_layout_loss when w_field_layout (train_drit)
        self.optimizers = {"dc": optimizer(m.dc.parameters(), cfg.dc_lr), "ds1": optimizer(m.ds1.parameters()),
                           "ds2": optimizer(m.ds2.parameters()), "gen": optimizer(gen_params)}
        # each optimizer's own rates, which lr_factor scales (a checkpoint's optimizer state holds the scaled ones)
        self.base_lr = {k: [g["lr"] for g in o.param_groups] for k, o in self.optimizers.items()}
        self.steps = steps  # the iterations the run trains for, which lr_decay's schedule needs (0: rates held)

    def lr_factor(self, it: int) -> float:
        """The learning rates' share of their base at iteration ``it`` (from 0): 1 until the last ``lr_decay``
        share of ``steps``, then falling linearly, as DRIT++'s ``lambda`` policy does per epoch, to 2 / (the
        decay's iterations + 1) at the last. A function of ``it`` and ``steps`` alone, so a resumed run follows
        the same rates; trained on to more steps, it follows the schedule of the new total from where it is."""
        if not self.cfg.lr_decay or not self.steps:
            return 1.0
        start = round(self.steps * (1 - self.cfg.lr_decay))
        return 1.0 - max(0, it - start) / (self.steps - start + 1)

    def meta(self) -> dict:
        return self.meta_of(self.modules)

    @staticmethod
    def meta_of(m: Translator) -> dict:
        """What a checkpoint must have been written with to be resumed. Options added after
        checkpoints were written (:data:`ADDED_OFF`) are left out while off, so those checkpoints
        still resume and their snapshots still count."""
        gm = m.attribute.gmvae.cfg.to_dict() if m.cfg.variant == "gmm-drit" else None
        config = {k: v for k, v in dataclasses.asdict(m.cfg).items() if ADDED_OFF.get(k, object()) != v}
        return dict(kind="drit", config=config, gmvae=gm)

    def content_discriminator_step(self, batch: dict, ctx) -> torch.Tensor:
        """One D_c update on a batch of its own (DRIT's ``update_D_content``): E^c reads it without
        gradients; D_c learns the scanner codes of its images (GMM-DRIT's inferred, DRIT++'s labels)."""
        m = self.modules
        with torch.no_grad(), ctx.autocast():
            zc, codes, origin = m.batch_content(batch)
        grid = None if origin is None else m.content_grid(origin, zc.shape[-2:])
        return self._update_dc(zc, grid, codes[1], ctx)

    def _update_dc(self, zc: torch.Tensor, grid, target: torch.Tensor, ctx) -> torch.Tensor:
        """One step of D_c on content maps ``zc`` (no gradient reaches E^c) toward their scanner codes."""
        with ctx.autocast():
            loss = losses.bce(self.modules.dc(zc, grid), target)
        ctx.update(loss, "dc", clip=self.cfg.dc_clip)
        return loss

    def step(self, batch: dict, it: int, ctx) -> dict[str, float]:
        m, cfg = self.modules, self.cfg
        m.train()
        if cfg.lr_decay:
            share = self.lr_factor(it)
            for k, opt in self.optimizers.items():
                for g, base in zip(opt.param_groups, self.base_lr[k]):
                    g["lr"] = base * share
        for extra in batch.get("dc", ()):  # D_c's extra updates come first, as in DRIT's loop
            self.content_discriminator_step(extra, ctx)
        xa, xb = batch["xa"], batch["xb"]
        shape = xa.shape[-2:]
        n = len(xa)
        with ctx.autocast():
            # (1) encode: attribute codes, then content (both batches in one pass)
            sampled = cfg.variant == "drit++"
            # E^a reads whole slices: the batch's own, or the views of the slices its crops come from
            windows = "oa" in batch
            if "za" in batch:  # GMM-DRIT: the frozen E^a's codes of these slices, computed once
                (za_a, c_a), (za_b, c_b) = (batch["za"], batch["ca"]), (batch["zb"], batch["cb"])
                kl_a = kl_b = xa.new_zeros(())
            else:
                za_a, c_a, kl_a = m.attributes(batch.get("va", xa), batch.get("la"), sample=sampled)
                za_b, c_b, kl_b = m.attributes(batch.get("vb", xb), batch.get("lb"), sample=sampled)
            # where each window sits in its whole slice (G draws the bias field there)
            o_a, o_b = batch.get("oa"), batch.get("ob")
            at = lambda *o: None if o_a is None else torch.cat(o)
            real, own = torch.cat([xa, xb]), (torch.cat([za_a, za_b]), torch.cat([c_a, c_b]))  # codes of a, b
            zc = m.encode(real, own, at(o_a, o_b), cfg.slices)
            # (2) translate: cross-domain, scanner-free, self-reconstruction (for step 3) and a
            # random target (for the latent regression), in one generator pass:
            # ab, ba, sf_a, sf_b, aa, bb, r_a
            zs, c_sf = m.scanner_free_code(2 * n, xa.device)
            z_r, c_r = m.random_code(n, xa.device)
            zc_g = zc + cfg.zc_noise * torch.randn_like(zc) if cfg.zc_noise else zc
            zc_ga, zc_gb = zc_g.split(n)
            out = m.generator(torch.cat([zc_ga, zc_gb, zc_ga, zc_gb, zc_ga, zc_gb, zc_ga]),
                              torch.cat([za_b, za_a, zs, za_a, za_b, z_r]),
                              torch.cat([c_b, c_a, c_sf, c_a, c_b, c_r]), shape,
                              at(o_a, o_b, o_a, o_b, o_a, o_b, o_a), cfg.slices)
            x_ab, x_ba, sf_a, sf_b, x_aa, x_bb, x_r = out.split(n)
            sf = torch.cat([sf_a, sf_b])
        c_real = own[1]

        # where z^c's cells sit in their whole slices, for D_c (None: whole slices)
        zgrid = None if o_a is None else m.content_grid(torch.cat([o_a, o_b]), zc.shape[-2:])
        # (4a) discriminators, on detached codes and images
        loss_dc = self._update_dc(zc.detach(), zgrid, c_real, ctx)
        with ctx.autocast():
            loss_ds1 = losses.discriminator(m.ds1, real, torch.cat([x_ab, x_ba, x_r]).detach(), c_real)
        ctx.update(loss_ds1, "ds1")
        with ctx.autocast():
            loss_ds2 = losses.discriminator(m.ds2, real, sf.detach(), c_real)
        ctx.update(loss_ds2, "ds2")

        # (3) + (4b) encoders and generator; the discriminators are fixed here
        for d in (m.dc, m.ds1, m.ds2):
            d.requires_grad_(False)
        with ctx.autocast():
            fake = torch.cat([x_ab, x_ba])
            adv1, cls1 = losses.generator(m.ds1, torch.cat([fake, x_r]), torch.cat([c_b, c_a, c_r]))
            adv2, cls2 = losses.generator(m.ds2, sf, torch.zeros_like(c_real))
            content = losses.bce(m.dc(zc, zgrid), torch.full_like(c_real, 0.5))
            # E^a cannot read a window of G's output as a whole slice: on windows, no latent
            # regression, and the cross-cycle takes the codes the translations were made with
            latent = zc.new_zeros(()) if windows else m.latent_regression(x_r, z_r)
            self_rec = F.l1_loss(x_aa, xa) + F.l1_loss(x_bb, xb)
            # (3) re-encode the translations: the content of x_ab is a's anatomy, the attribute of
            # x_ba is a's look; translate back
            if windows:
                za_ba, za_ab = za_a, za_b
            else:
                za_ba, _, _ = m.attributes(x_ba, batch.get("la"))
                za_ab, _, _ = m.attributes(x_ab, batch.get("lb"))
            # one E^c pass re-encodes the cross translations and, when they must keep their
            # input's content, the scanner-free outputs
            back_codes = (torch.cat([za_b, za_a, zs]), torch.cat([c_b, c_a, c_sf]))
            zc_back = (m.encode(torch.cat([fake, sf]), back_codes, at(o_a, o_b, o_a, o_b), cfg.slices)
                       if cfg.w_sf_content else
                       m.encode(fake, [v[: 2 * n] for v in back_codes], at(o_a, o_b), cfg.slices))
            invariance = zc.new_zeros(())
            if cfg.w_invariance:
                jittered = appearance.jitter(real, at(o_a, o_b), cfg.slices, blur=cfg.invariance_blur,
                                             noise=cfg.invariance_noise)
                invariance = F.l1_loss(m.encode(jittered, own, at(o_a, o_b), cfg.slices),
                                       zc if cfg.invariance_symmetric else zc.detach())
            content_mean = content_mean_value = zc.new_zeros(())
            if cfg.w_content_mean:  # in float32 (ScannerMeans)
                cells = m.cell_grid(None if o_a is None else torch.cat([o_a, o_b]), zc.shape[-2:], len(zc))
                content_mean, content_mean_value = m.scanner_means(zc, cells, c_real)
            field_layout = zc.new_zeros(())
            if cfg.w_field_layout:
                if self.layout is None:
                    raise ValueError("w_field_layout needs the scanner codes' layout targets, which train_drit sets "
                                     "(task.layout)")
                field_layout = field_layout_loss(m.generator, *self.layout)
            back = m.generator(zc_back[: 2 * n], torch.cat([za_ba, za_ab]), torch.cat([c_a, c_b]), shape,
                               at(o_a, o_b), cfg.slices)
            x_aba, x_bab = back.split(n)
            cc = F.l1_loss(x_aba, xa) + F.l1_loss(x_bab, xb)
            kl = kl_a + kl_b
            zc_l2 = zc.float().square().mean()  # constant (about 1) when content_norm is on
            sf_content = F.l1_loss(zc_back[2 * n:], zc.detach()) if cfg.w_sf_content else zc_l2.new_zeros(())
            total = (cfg.w_adv * (adv1 + adv2) + cfg.w_cls * cls1 + cfg.w_cls_sf * cls2 + cfg.w_content * content
                     + cfg.w_self * self_rec + cfg.w_cc * cc + cfg.w_kl * kl + cfg.w_latent * latent
                     + cfg.w_zc * zc_l2 + cfg.w_sf_content * sf_content + cfg.w_invariance * invariance
                     + cfg.w_field_layout * field_layout + cfg.w_content_mean * content_mean)
        ctx.update(total, "gen")
        for d in (m.dc, m.ds1, m.ds2):
            d.requires_grad_(True)
        out = dict(D_c=loss_dc, D_s1=loss_ds1, D_s2=loss_ds2, G_adv1=adv1, G_cls1=cls1, G_adv2=adv2,
                   G_cls2=cls2, content_adv=content, self_rec=self_rec, cross_cycle=cc, latent=latent, kl=kl,
                   zc_l2=zc_l2, sf_content=sf_content, invariance=invariance, field_layout=field_layout, total=total)
        if cfg.w_content_mean:
            out["content_mean"] = content_mean_value
        return {k: float(v.detach()) for k, v in out.items()}


LAYOUT_VIEW = 64  # the size of the whole-slice views the layout targets are read from when training on whole slices


def field_layout_loss(generator, codes: tuple[torch.Tensor, torch.Tensor], groups: torch.Tensor,
                      targets: torch.Tensor) -> torch.Tensor:
    """How far the fields G draws are from the scanners' layouts: the mean log-field coefficients
    (constant left out) G draws for each scanner code's slices, from their own codes (z^a, c), less
    their mean over the codes present in ``groups``, against :func:`nbutils.layout.field_targets`;
    squared distance, mean over those codes. Its gradient reaches the field's coefficients and the code
    they are read from (shared with G's residual blocks), as measured; in float32 (not under autocast)."""
    with torch.autocast(codes[0].device.type, enabled=False):
        coef = generator.field.coef(generator._code(*(v.float() for v in codes)))[:, 1:]
    present = groups.unique()
    means = torch.stack([coef[groups == s].mean(0) for s in present])
    return ((means - means.mean(0)) - targets[present]).square().sum(1).mean()


class PairSampler:
    """Two unpaired batches per iteration, a pure function of (seed, iteration); with ``crop`` > 0,
    random ``crop`` windows centred on the brain ``masks`` (:func:`nbutils.crops.random_crops`)."""

    def __init__(self, images, labels: np.ndarray, batch_size: int, seed: int = 0, device="cpu",
                 crop: int = 0, masks=None, view: int = 0, dc_extra: int = 0, distinct: bool = False):
        if crop and (masks is None or not view):
            raise ValueError("training on crops needs the brain masks (crops are centred on the brain) "
                             "and the size of the attribute encoder's whole-slice view")
        self.images, self.labels, self.device = images, np.asarray(labels), torch.device(device)
        self.crop, self.masks, self.seed = crop, masks, seed
        # the whole slices the crops come from, as E^a is handed them (rows read per batch when
        # that is the slices' own size)
        self.views = None if not crop else images if images.shape[-1] == view else crops.views(images, view)
        self.a = EpochSampler(len(images), batch_size, seed)
        self.b = EpochSampler(len(images), batch_size, seed + 7919)
        self.codes = None
        self.batch_size, self.dc_extra = batch_size, dc_extra  # batches of D_c's own (DRITConfig.dc_steps - 1)
        self.distinct = distinct  # x_b never of x_a's scanner code (DRITConfig.distinct_pairs)

    @torch.no_grad()
    def attach_codes(self, model: Translator, size: int = 64) -> None:
        """Compute once the (z^a, c) that GMM-DRIT's frozen attribute encoder gives every slice
        (the posterior mean and the argmax of q(y|x): deterministic per slice), so that batches
        carry them instead of encoding the same whole slices again every iteration."""
        if model.cfg.variant != "gmm-drit":
            raise ValueError("only GMM-DRIT's attribute encoder is frozen; DRIT++'s codes change as it trains")
        source = self.images if self.views is None else self.views
        za, c = [], []
        for s in range(0, len(source), size):
            x = torch.from_numpy(np.asarray(source[s: s + size], np.float32)).unsqueeze(1).to(self.device) * 2 - 1
            lab = torch.as_tensor(np.array(self.labels[s: s + size], np.int64), device=self.device)
            z, code, _ = model.attributes(x, lab)
            za.append(z.float())
            c.append(code.float())
        self.codes = torch.cat(za), torch.cat(c)

    def _batch(self, idx, rng, side: str) -> dict:  # rows ``idx`` in that order
        x, starts = crops.random_crops(self.images, self.masks, idx, self.crop, rng)
        out = {f"x{side}": torch.from_numpy(x).unsqueeze(1).to(self.device) * 2 - 1,
               f"l{side}": torch.from_numpy(self.labels[idx]).long().to(self.device)}
        if self.codes is not None:
            rows = torch.from_numpy(idx).to(self.device)
            out[f"z{side}"], out[f"c{side}"] = self.codes[0][rows], self.codes[1][rows]
        if self.views is not None:  # where the crops lie in their slices, and the whole slices as E^a
            out[f"o{side}"] = torch.from_numpy(starts).float().to(self.device)  # reads them (unless coded)
            if self.codes is None:
                v = torch.from_numpy(np.asarray(self.views[idx], np.float32)).unsqueeze(1)
                out[f"v{side}"] = v.to(self.device) * 2 - 1
        return out

    def groups(self) -> np.ndarray:
        """Each slice's scanner code: the attached codes' (GMM-DRIT: inferred, or the labels with known_labels), else
        the labels."""
        return self.labels if self.codes is None else self.codes[1].argmax(1).cpu().numpy()

    def _apart(self, a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``b`` with every row whose scanner code is its partner's in ``a`` drawn again, uniformly among the slices of
        the other codes (kept where there are none)."""
        g, b = self.groups(), b.copy()
        for i in np.flatnonzero(g[b] == g[a]):
            others = np.flatnonzero(g != g[a[i]])
            if len(others):
                b[i] = rng.choice(others)
        return b

    def __call__(self, it: int) -> dict:
        rng = np.random.default_rng((self.seed, it))
        a, b = np.sort(self.a(it)), np.sort(self.b(it))
        if self.distinct:
            b = self._apart(a, b, np.random.default_rng((self.seed, it, 2)))
        out = {**self._batch(a, rng, "a"), **self._batch(b, rng, "b")}
        if self.dc_extra:  # drawn from a stream of their own: the batches above are as without them
            more = np.random.default_rng((self.seed, it, 1))
            pick = lambda: np.sort(more.choice(len(self.images), self.batch_size, replace=False))
            out["dc"] = [{**self._batch(pick(), more, "a"), **self._batch(pick(), more, "b")}
                         for _ in range(self.dc_extra)]
        return out


def train_drit(images, labels, cfg: DRITConfig, checkpoint, *, gmvae: GMVAE | None = None, steps: int = 1000,
               batch_size: int = 8, every: int = 200, seed: int = 0, device=None, snapshots: bool = False,
               masks=None):
    """Train (or resume, or load when finished) GMM-DRIT or DRIT++ on (N, H, W) [0, 1] images
    with their known scanner labels (used by DRIT++, and by GMM-DRIT only with ``known_labels``).
    When ``cfg.image_shape`` is smaller than the images, on random windows of that size centred
    on the brain ``masks``.
    Returns the :class:`Translator` in eval mode and the loss history. ``snapshots``: keep the
    weights every ``every`` iterations (see :func:`snapshot_models`)."""
    device = pick_device() if device is None else torch.device(device)
    torch.manual_seed(seed)  # the initial weights are a function of the seed, not of what ran before
    task = DRITTask(cfg, None if gmvae is None else gmvae.to(device), device, steps)
    if cfg.slices != tuple(images.shape[1:]):
        raise ValueError(f"the model is set up for {cfg.slices} slices, the images are {tuple(images.shape[1:])}")
    crop = cfg.image_shape[0] if tuple(cfg.image_shape) != cfg.slices else 0
    sampler = PairSampler(images, labels, batch_size, seed, device, crop=crop, masks=masks,
                          view=task.modules.view_size, dc_extra=cfg.dc_steps - 1, distinct=cfg.distinct_pairs)
    if cfg.variant == "gmm-drit":
        sampler.attach_codes(task.modules)
        if cfg.known_labels:
            comps = scanner_components(task.modules.attribute.gmvae, images, labels, cfg.k)
            task.modules.label_component = torch.as_tensor(comps, device=device)
        if cfg.w_field_layout:  # each scanner code's slices, as whole-slice views (a smooth fit needs no more)
            groups = sampler.codes[1].argmax(1)
            whole = crops.views(sampler.images, LAYOUT_VIEW) if sampler.views is None else sampler.views
            targets = layout.field_targets(np.asarray(whole), groups.cpu().numpy(), cfg.k, cfg.bias_field)
            task.layout = (sampler.codes, groups, torch.as_tensor(targets, dtype=torch.float32, device=device))
    if gmvae is not None:
        refuse_other_gmvae(checkpoint, task.modules)
    history = fit(task, sampler, steps, checkpoint, every=every, seed=seed, device=device, desc=cfg.variant,
                  snapshots=snapshots)
    return task.modules.eval(), history


def refuse_other_gmvae(checkpoint, model: Translator) -> None:
    """Raise if the stage-2 ``checkpoint`` holds another frozen GM-VAE than ``model``'s (notebook
    02 trained it again since): its E^a, and the codes it was trained on, are not the run's, and
    loading it would overwrite the GM-VAE given. No checkpoint yet, or DRIT++: nothing to check."""
    path = Path(checkpoint)
    if not path.exists() or model.cfg.variant != "gmm-drit":
        return
    held = load_checkpoint(path, "cpu")["modules"]
    ours = {k: v for k, v in model.state_dict().items() if k.startswith("attribute.gmvae.")}
    if not all(k in held and torch.equal(held[k].cpu(), v.cpu()) for k, v in ours.items()):
        raise ValueError(f"{path} was trained over another GM-VAE than the one given (notebook 02 has trained "
                         f"it again since). Train stage 2 anew over it: set retrain (papermill -p retrain True), "
                         f"or delete {path.name}.")


def snapshot_models(checkpoint, model: Translator) -> list[tuple[int, float, Translator]]:
    """(step, training seconds, model) for every snapshot kept beside ``checkpoint`` by the same
    settings as ``model`` (others are skipped), each a copy of ``model`` with those weights."""
    import copy

    meta = DRITTask.meta_of(model)
    out = []
    for snap in load_snapshots(checkpoint, next(model.parameters()).device):
        if snap["meta"] == meta:
            m = copy.deepcopy(model)
            m.load_state_dict(snap["modules"])
            out.append((snap["step"], snap["seconds"], m.eval()))
    return out


def from_checkpoint(path, device="cpu", seed: int | None = None) -> Translator:
    """The trained stage-2 model stored in a checkpoint (its GM-VAE included), in eval mode;
    ``seed``: refused if trained with another (:func:`nbutils.train.refuse_other_seed`)."""
    state = load_checkpoint(path, device)
    if seed is not None:
        refuse_other_seed(path, state.get("seed"), seed)
    if state["meta"].get("kind") != "drit":
        raise ValueError(f"{path} is not a GMM-DRIT / DRIT++ checkpoint (it holds {state['meta'].get('kind')!r})")
    raw = dict(state["meta"]["config"], image_shape=tuple(state["meta"]["config"]["image_shape"]))
    if raw.get("slice_shape"):
        raw["slice_shape"] = tuple(raw["slice_shape"])
    raw = BEFORE_OPTIONS | raw
    gm = GMVAE(GMVAEConfig.from_dict(state["meta"]["gmvae"])) if state["meta"]["gmvae"] else None
    model = Translator(DRITConfig(**raw), gm).to(device)
    model.load_state_dict(state["modules"])
    return model.eval()
