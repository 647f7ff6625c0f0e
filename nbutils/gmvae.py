"""Gaussian-mixture VAE (Dilokthanakul et al. 2016), stage 1 of GMM-DRIT.

Generative model: y ~ Uniform(K), z | y ~ N(mu_y, sigma_y^2) with a *learned* prior per
component, x | z ~ Bernoulli(decoder(z)). Inference: q(y|x) (relaxed with Gumbel-softmax, the
temperature annealed) and q(z|x,y). The loss of the thesis (§4, stage 1)::

    w_rec * BCE(x, x_hat) + w_gauss * L_gauss + w_categ * KL(q(y|x) || Uniform(K))

with ``L_gauss = E_q[log q(z|x,y) - log p(z|y)]`` (single-sample estimate, summed over the
latent dimensions; BCE summed over pixels; both averaged over the batch) and ``KL(q || U(K)) = sum_k q_k log q_k + log K``: correct for any K (the
public GMVAE code this follows hard-wired ``log(0.1)``, i.e. K = 10).

Any single-channel image size works: the encoder ends in adaptive pooling, the decoder starts
from a grid of ``ceil(H / 2^L) x ceil(W / 2^L)`` and is cropped back to H x W.
Inputs are intensities in [0, 1] (the BCE target).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import crops
from .nets import band_powers, level_stats, soft_histogram
from .train import adam


@dataclass(frozen=True)
class GMVAEConfig:
    """Architecture and loss weights. Defaults are the thesis's (gaussian size 64,
    w_gauss 2.0, w_categ 1.0, w_rec 0.7); ``width`` and the temperature schedule are ours."""

    image_shape: tuple[int, int]
    k: int
    gaussian_size: int = 64
    width: int = 16  # channels at full size, doubled at each down-sampling (at most 8x)
    pooling: str = "stats"  # how the encoder summarises its feature maps (see Trunk)
    w_rec: float = 0.7
    w_gauss: float = 2.0
    w_categ: float = 1.0
    # BCE is summed over pixels and scaled to an image of this many pixels, so that the thesis's
    # weights (set for 182 x 182 slices) keep their balance at any size; 0 = the plain sum
    rec_pixels: int = 0
    # KL(batch mean of q(y|x) || Uniform(K)): keeps every component in use (not in the thesis)
    w_marginal: float = 0.0
    # appearance features (see ``appearance``): a soft intensity histogram of the image and its
    # directional power spectrum in frequency bands; the encoder reads them beside its trunk
    histogram_bins: int = 0
    spectrum_bands: int = 0
    # > 0: each component also generates the image's appearance features,
    # p(a(x) | y) = N(m_y, diag s_y^2), weighted by this (see ``appearance``)
    w_appearance: float = 0.0
    # what the inference network reads: "image" (its conv trunk, plus the appearance features
    # when configured), "appearance-qy" (q(y|x) reads only the appearance features) or
    # "appearance" (q(y|x) and q(z|x,y) read only the appearance features: no conv trunk)
    encoder_input: str = "image"
    # > 0: the appearance features are read from whole slices of this size, at their own
    # resolution, before the slice is viewed down to ``image_shape`` (what a scanner changes most
    # -- noise, resolution, ringing -- lies at frequencies a 64 px view averages away); the model
    # then reads only slices of this size. 0: from the model's input
    appearance_size: int = 0
    init_temp: float = 1.0  # Gumbel-softmax temperature, annealed per epoch as in the GMVAE code
    min_temp: float = 0.5
    temp_decay: float = 0.013862944  # per epoch: temp = max(min, init * exp(-decay * epoch))

    def to_dict(self) -> dict:
        """The config as saved in checkpoints' meta; the optional departures are left out when off,
        so checkpoints written before they existed still match (and load)."""
        return {k: v for k, v in dataclasses.asdict(self).items()
                if not ((k in OPTIONAL and not v) or (k == "encoder_input" and v == "image"))}

    @classmethod
    def from_dict(cls, raw: dict) -> "GMVAEConfig":
        """The config saved in a checkpoint's meta (JSON-like: the shape comes back as a list)."""
        return cls(**dict(raw, image_shape=tuple(raw["image_shape"])))

    @property
    def levels(self) -> int:
        """Stride-2 stages: as many as keep the coarsest grid >= 4 px (at most 4)."""
        return max(0, min(4, int(math.log2(min(self.image_shape) / 4))))

    def temperature(self, epoch: float) -> float:
        return max(self.min_temp, self.init_temp * math.exp(-self.temp_decay * epoch))


OPTIONAL = ("rec_pixels", "w_marginal", "histogram_bins", "spectrum_bands", "w_appearance", "appearance_size")  # departures from the thesis, off by default

# Named stage-1 settings (``train_gmvae(..., **PRESETS[name])``):
# - "thesis": the thesis's GM-VAE as written (BCE summed over the image's own pixels);
# - "appearance": our departures, chosen by measurement on two simulated multi-scanner sets
#   (docs/experiments.md, "Stage 1"): BCE scaled to 182 x 182 pixels so the thesis's weights keep their balance
#   at any size (at 182 px it *is* the thesis's loss); a batch-marginal term that keeps every
#   component in use; appearance features (foreground intensity histogram, directional power
#   spectrum) that q(y|x) reads and that each component also generates.
PRESETS = {
    "thesis": {},
    "appearance": dict(rec_pixels=182 * 182, w_marginal=20.0, histogram_bins=32, spectrum_bands=4,
                       encoder_input="appearance-qy", w_appearance=1.0),
}


def preset(name: str) -> dict:
    """The GMVAEConfig overrides of the stage-1 setting ``name`` (see ``PRESETS``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown stage-1 setting {name!r}: choose one of {sorted(PRESETS)}")
    return dict(PRESETS[name])


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.LeakyReLU(0.2, inplace=True))


class Trunk(nn.Module):
    """Conv levels (a stride-1 stem, then ``levels`` stride-2 convs) and a pooling:

    - ``"stats"``: the spatial mean and standard deviation of every channel of every level.
      Pooling statistics instead of positions keeps what an image *looks like* (contrast,
      noise, sharpness) and averages out *where* its anatomy is: the attribute encoder's job
      (DRIT's attribute encoder likewise ends in global pooling).
    - ``"grid"``: the last level average-pooled to 4 x 4 and flattened, keeping coarse layout
      (for clustering by shape, e.g. digits).
    """

    def __init__(self, chans: list[int], levels: int, pooling: str = "stats"):
        super().__init__()
        if pooling not in ("stats", "grid"):
            raise ValueError(f"pooling must be 'stats' or 'grid', got {pooling!r}")
        self.pooling = pooling
        self.stages = nn.ModuleList([_block(1, chans[0], 1)] +
                                    [_block(chans[i], chans[i + 1], 2) for i in range(levels)])
        self.out_features = 2 * sum(chans[: levels + 1]) if pooling == "stats" else 16 * chans[levels]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pooling == "stats":
            return level_stats(self.stages, x)[1]
        for stage in self.stages:
            x = stage(x)
        return F.adaptive_avg_pool2d(x, 4).flatten(1)


class GMVAE(nn.Module):
    def __init__(self, cfg: GMVAEConfig):
        super().__init__()
        if cfg.k < 2:
            raise ValueError(f"a mixture needs k >= 2 components, got {cfg.k}")
        if min(cfg.image_shape) < 4:
            raise ValueError(f"images must be at least 4x4 pixels, got {cfg.image_shape}")
        self.cfg = cfg
        L, w = cfg.levels, cfg.width
        chans = [min(w * 2 ** i, 8 * w) for i in range(L + 1)]  # chans[i]: channels at 1/2^i size
        # --- inference network: a conv trunk and its pooling (see Trunk), then the q(y|x) and
        # q(z|x,y) heads
        if cfg.encoder_input not in ("image", "appearance-qy", "appearance"):
            raise ValueError(f"encoder_input must be 'image', 'appearance-qy' or 'appearance', got {cfg.encoder_input!r}")
        n_app = cfg.histogram_bins + 3 * cfg.spectrum_bands
        if cfg.encoder_input != "image" and not n_app:
            raise ValueError(f"encoder_input={cfg.encoder_input!r} needs histogram_bins > 0 or spectrum_bands > 0")
        if cfg.appearance_size and (not n_app or cfg.image_shape[0] != cfg.image_shape[1]
                                    or cfg.appearance_size < cfg.image_shape[0]):
            raise ValueError("appearance_size needs appearance features, a square input and whole slices at "
                             f"least as large as it, got {cfg.appearance_size} for {cfg.image_shape}")
        # appearance features are standardised with batch statistics (running ones once frozen)
        self.app_norm = nn.BatchNorm1d(n_app, affine=False) if n_app else None
        if cfg.w_appearance and not n_app:
            raise ValueError("w_appearance > 0 needs histogram_bins > 0 or spectrum_bands > 0")
        self.trunk = Trunk(chans, L, cfg.pooling) if cfg.encoder_input != "appearance" else None
        n_in = n_app + (self.trunk.out_features if self.trunk is not None else 0)
        self.features = nn.Sequential(nn.Linear(n_in, 256), nn.LeakyReLU(0.2, inplace=True))
        self.qy = nn.Linear(256, cfg.k)
        if cfg.encoder_input == "appearance-qy":
            self.qy = nn.Sequential(nn.Linear(n_app, 64), nn.LeakyReLU(0.2), nn.Linear(64, cfg.k))
        self.qz = nn.Sequential(nn.Linear(256 + cfg.k, 256), nn.LeakyReLU(0.2, inplace=True),
                                nn.Linear(256, 2 * cfg.gaussian_size))
        # --- generative network: learned p(z|y) and the decoder p(x|z)
        self.prior_mu = nn.Linear(cfg.k, cfg.gaussian_size, bias=False)
        self.prior_logvar = nn.Linear(cfg.k, cfg.gaussian_size, bias=False)
        nn.init.zeros_(self.prior_logvar.weight)  # start every component at unit variance
        if cfg.w_appearance:  # p(a|y): per-component means (random, to break symmetry) and log-variances
            self.app_mu, self.app_logvar = nn.Linear(cfg.k, n_app, bias=False), nn.Linear(cfg.k, n_app, bias=False)
            nn.init.normal_(self.app_mu.weight)
            nn.init.zeros_(self.app_logvar.weight)
        self.grid = tuple(math.ceil(s / 2 ** L) for s in cfg.image_shape)
        self.dec_in = nn.Linear(cfg.gaussian_size, chans[L] * self.grid[0] * self.grid[1])
        up = [nn.Sequential(nn.ConvTranspose2d(chans[i + 1], chans[i], 4, 2, 1), nn.LeakyReLU(0.2, inplace=True))
              for i in reversed(range(L))]
        self.decoder = nn.Sequential(nn.LeakyReLU(0.2, inplace=True), *up, nn.Conv2d(chans[0], 1, 3, 1, 1))

    # ----------------------------------------------------------------- inference
    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != 1 or tuple(x.shape[-2:]) != tuple(self.cfg.image_shape):
            raise ValueError(f"expected images of shape (N, 1, {self.cfg.image_shape[0]}, "
                             f"{self.cfg.image_shape[1]}), got {tuple(x.shape)}")

    def infer(self, x: torch.Tensor, temperature: float = 1.0, hard: bool = False) -> dict:
        """q(y|x) and q(z|x,y): logits, probabilities, a Gumbel-softmax y and z ~ q(z|x,y), the
        appearance features and ``seen``, the images the trunk read. Slices larger than the
        model's square input are read as their view (:func:`nbutils.crops.view`)."""
        app, x = self.read(x)
        f = [self.trunk(x)] if self.trunk is not None else []
        if app is not None:
            f.append(app.to(x.dtype))
        h = self.features(torch.cat(f, 1))
        logits = self.qy(app if self.cfg.encoder_input == "appearance-qy" else h).float()
        y = F.gumbel_softmax(logits, tau=temperature, hard=hard) if self.training else \
            F.one_hot(logits.argmax(1), self.cfg.k).float()
        mu, logvar = self.qz(torch.cat([h, y.to(h.dtype)], 1)).float().chunk(2, 1)
        logvar = logvar.clamp(-12.0, 8.0)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        return dict(logits=logits, prob=logits.softmax(1), y=y, mu=mu, logvar=logvar, z=z, app=app, seen=x)

    def read(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(appearance features, the image the trunk and the decoder see) of a batch: slices
        larger than the model's square input are read as their view; with ``appearance_size``
        the features come from the whole slices before that."""
        h, w = self.cfg.image_shape
        native = self.cfg.appearance_size
        if native:
            if x.ndim != 4 or tuple(x.shape[1:]) != (1, native, native):
                raise ValueError(f"this GM-VAE reads its appearance features from whole {native} x {native} "
                                 f"slices (before their {h} px view): expected (N, 1, {native}, {native}), "
                                 f"got {tuple(x.shape)}")
            app = self.appearance(x)
            x = crops.view(x, h)
        else:
            if h == w and x.ndim == 4 and x.shape[-2] > h and x.shape[-1] > w:
                x = crops.view(x, h)
            self._check(x)
            app = self.appearance(x)
        return app, x

    def appearance(self, x: torch.Tensor) -> torch.Tensor | None:
        """The standardised appearance features of images in [0, 1] (None when configured off):
        what a scanner changes (intensity distribution; resolution, noise and artefacts as a
        directional spectrum) summarised without the anatomy's layout."""
        parts = []
        if self.cfg.histogram_bins:
            parts.append(soft_histogram(x.float() * 2 - 1, self.cfg.histogram_bins))
        if self.cfg.spectrum_bands:
            parts.append(band_powers(x[:, 0], self.cfg.spectrum_bands))
        return self.app_norm(torch.cat(parts, 1)) if parts else None

    @torch.no_grad()
    def init_appearance(self, x: torch.Tensor, seed: int = 0) -> None:
        """Start p(a|y) at a k-means partition of the appearance features of the images ``x``
        (N, 1, H, W): each component's mean at a centroid, its variance that of its cluster,
        as a Gaussian mixture fitted by EM is usually started (scikit-learn's default). From
        random means the mixture settled in worse partitions (docs/experiments.md, "Stage 1")."""
        from sklearn.cluster import KMeans

        if not self.cfg.w_appearance:
            raise ValueError("init_appearance needs w_appearance > 0 (no p(a|y) to start)")
        norm, was_training = self.app_norm, self.training
        norm.reset_running_stats()  # standardise with these images' statistics, kept as the running ones
        momentum, norm.momentum = norm.momentum, None
        norm.train()
        a = self.read(x)[0].float().cpu().numpy()
        norm.momentum = momentum
        self.train(was_training)
        km = KMeans(self.cfg.k, n_init=10, random_state=seed).fit(a)
        var = np.stack([a[km.labels_ == j].var(0) if (km.labels_ == j).sum() > 1 else a.var(0)
                        for j in range(self.cfg.k)])
        dev = self.app_mu.weight.device
        self.app_mu.weight.copy_(torch.as_tensor(km.cluster_centers_.T, dtype=torch.float32, device=dev))
        self.app_logvar.weight.copy_(torch.as_tensor(np.log(var + 1e-3).T, dtype=torch.float32, device=dev))

    def prior(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of p(z|y) for (relaxed) one-hot ``y``."""
        y = y.float()
        return self.prior_mu(y), self.prior_logvar(y).clamp(-12.0, 8.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Logits of p(x|z), cropped to the image shape (apply sigmoid for intensities)."""
        h = self.dec_in(z).view(len(z), -1, *self.grid)
        out = self.decoder(h)
        return out[..., : self.cfg.image_shape[0], : self.cfg.image_shape[1]]

    # ----------------------------------------------------------------- training
    def loss(self, x: torch.Tensor, temperature: float) -> tuple[torch.Tensor, dict]:
        """Total loss (mean over the batch) and its weighted parts as floats."""
        q = self.infer(x, temperature)
        x = q["seen"]  # what the decoder draws: the batch as the model read it (a view of larger slices)
        logits_x = self.decode(q["z"]).float()
        rec = F.binary_cross_entropy_with_logits(logits_x, x.float(), reduction="none").flatten(1).sum(1)
        if self.cfg.rec_pixels:
            rec = rec * (self.cfg.rec_pixels / (x.shape[-2] * x.shape[-1]))
        pmu, plogvar = self.prior(q["y"])
        gauss = (_log_normal(q["z"], q["mu"], q["logvar"]) - _log_normal(q["z"], pmu, plogvar)).sum(1)
        log_q = q["logits"].log_softmax(1)
        categ = (q["prob"] * log_q).sum(1) + math.log(self.cfg.k)  # KL(q(y|x) || U(K)) >= 0
        c = self.cfg
        parts = dict(rec=c.w_rec * rec.mean(), gauss=c.w_gauss * gauss.mean(), categ=c.w_categ * categ.mean())
        if c.w_appearance:  # - E_q(y|x) log p(a(x) | y), the expectation taken exactly over the K components
            eye = torch.eye(c.k, device=x.device)
            m, lv = self.app_mu(eye), self.app_logvar(eye).clamp(-8.0, 4.0)  # (K, A)
            loglik = _log_normal(q["app"].float()[:, None], m, lv).sum(2)  # (N, K)
            parts["appearance"] = -c.w_appearance * (q["prob"] * loglik).sum(1).mean()
        if c.w_marginal:
            usage = q["prob"].mean(0)
            parts["marginal"] = c.w_marginal * ((usage * (usage + 1e-8).log()).sum() + math.log(c.k))
        total = sum(parts.values())
        return total, {k: float(v.detach()) for k, v in parts.items()}


def _log_normal(x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return -0.5 * (math.log(2 * math.pi) + logvar + (x - mu) ** 2 / logvar.exp())


class AttributeEncoder(nn.Module):
    """The frozen GM-VAE inference network as stage 2's attribute encoder E^a.

    ``encode(x01)`` takes images in [0, 1] and returns the attribute code's mean, a sample,
    q(y|x) and the one-hot scanner code c = onehot(argmax q(y|x)). ``sample(k, n)`` draws
    z ~ p(z|y=k). The weights never change (``requires_grad`` is off, eval mode is kept).
    """

    def __init__(self, gmvae: GMVAE):
        super().__init__()
        self.gmvae = gmvae
        self.k, self.size = gmvae.cfg.k, gmvae.cfg.gaussian_size
        for p in self.gmvae.parameters():
            p.requires_grad_(False)
        self.gmvae.eval()

    def train(self, mode: bool = True):  # frozen: stays in eval mode whatever the caller does
        super().train(mode)
        self.gmvae.eval()
        return self

    def encode(self, x01: torch.Tensor) -> dict:
        """Differentiable in ``x01`` (stage 2 re-encodes its translations), never in the weights."""
        q = self.gmvae.infer(x01)
        c = F.one_hot(q["prob"].argmax(1), self.k).float()
        return dict(mean=q["mu"], sample=q["z"], prob=q["prob"], c=c)

    @torch.no_grad()
    def sample(self, k: int, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        if not 0 <= k < self.k:
            raise ValueError(f"component {k} does not exist: the GM-VAE has {self.k} (0..{self.k - 1})")
        device = self.gmvae.prior_mu.weight.device
        return self.draw(F.one_hot(torch.full((n,), k, device=device), self.k).float(), generator)

    @torch.no_grad()
    def draw(self, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """z ~ p(z|y) for one-hot components ``y`` (N, K), one draw per row; with a ``generator``, drawn
        on its device (a CPU generator gives the same draws whether the model lies on the CPU or a GPU)."""
        mu, logvar = self.gmvae.prior(y)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device if generator is None else generator.device)
        eps = eps.to(mu.device)
        return mu + eps * (0.5 * logvar).exp()


class GMVAETask:
    """Stage-1 training task for :func:`nbutils.train.fit`: Adam on the GM-VAE loss, with the
    Gumbel-softmax temperature annealed by epoch."""

    def __init__(self, cfg: GMVAEConfig, n_train: int, batch_size: int = 64, lr: float = 1e-3,
                 device: torch.device | str = "cpu"):
        self.cfg, self.n_train, self.batch_size, self.lr = cfg, n_train, batch_size, lr
        self.modules = GMVAE(cfg).to(device)
        self.optimizers = {"gmvae": adam(self.modules.parameters(), lr=lr)}

    def temperature(self, it: int) -> float:
        return self.cfg.temperature(it * self.batch_size / self.n_train)

    def step(self, batch: torch.Tensor, it: int, ctx) -> dict[str, float]:
        self.modules.train()
        with ctx.autocast():
            total, parts = self.modules.loss(batch, self.temperature(it))
        ctx.update(total, "gmvae")
        return dict(loss=float(total.detach()), **parts, temperature=self.temperature(it))

    def meta(self) -> dict:
        return dict(kind="gmvae", config=self.cfg.to_dict(), batch_size=self.batch_size, lr=self.lr)


def train_gmvae(images, k: int, checkpoint, *, width: int = 16, steps: int = 1000, batch_size: int = 64,
                lr: float = 1e-3, every: int = 200, seed: int = 0, device=None, init: str = "kmeans",
                init_images: int = 2048, view: int = 0, native_appearance: bool = True, **config):
    """Train (or resume, or load when finished) a GM-VAE on a (N, H, W) [0, 1] image array
    (``view`` > 0: on the slices' ``view`` x ``view`` views, :func:`nbutils.crops.view`; the model
    then reads any larger slice the same way; with appearance features and ``native_appearance``
    it reads them from the whole slices at their own resolution, ``appearance_size``).

    Returns the model in eval mode and the loss history. ``config`` overrides other
    :class:`GMVAEConfig` fields (the loss weights default to the thesis's). With appearance
    features generated (``w_appearance > 0``), ``init="kmeans"`` starts their mixture at a k-means
    partition of ``init_images`` training images (``"random"``: random means).
    """
    if init not in ("kmeans", "random"):
        raise ValueError(f"init must be 'kmeans' or 'random', got {init!r}")
    from .train import EpochSampler, fit, images_to_tensor, pick_device

    device = pick_device() if device is None else torch.device(device)
    shape = tuple(images.shape[1:])
    if view and shape != (view, view):
        if native_appearance and shape[0] == shape[1] and (config.get("histogram_bins") or config.get("spectrum_bands")):
            config = dict(config, appearance_size=shape[0])  # the model views each batch itself
            shape = (view, view)
        else:
            images = crops.views(images, view)
            shape = tuple(images.shape[1:])
    cfg = GMVAEConfig(image_shape=shape, k=k, width=width, **config)
    torch.manual_seed(seed)  # the initial weights are a function of the seed too
    task = GMVAETask(cfg, len(images), batch_size, lr, device)
    if cfg.w_appearance and init == "kmeans":  # (a resumed or finished run loads its own weights over this)
        pick = np.random.default_rng(seed).permutation(len(images))[:init_images]
        task.modules.init_appearance(images_to_tensor(images, pick, device), seed)  # (rows read in order)
    sampler = EpochSampler(len(images), batch_size, seed)
    history = fit(task, lambda i: images_to_tensor(images, sampler(i), device), steps, checkpoint,
                  every=every, seed=seed, device=device, desc="GM-VAE")
    return task.modules.eval(), history


def from_checkpoint(path, device: torch.device | str = "cpu") -> GMVAE:
    """The trained GM-VAE stored in a stage-1 checkpoint, in eval mode."""
    from .train import load_checkpoint

    state = load_checkpoint(path, device)
    if state["meta"].get("kind") != "gmvae":
        raise ValueError(f"{path} is not a GM-VAE checkpoint (it holds {state['meta'].get('kind')!r})")
    model = GMVAE(GMVAEConfig.from_dict(state["meta"]["config"])).to(device)
    model.load_state_dict(state["modules"])
    return model.eval()


@torch.no_grad()
def encode_all(model: GMVAE, images, batch_size: int = 256) -> dict[str, "np.ndarray"]:
    """q(y|x), the attribute mean and its log-variance (of q(z|x,y) at y = argmax q(y|x)) for
    every image of a (N, H, W) [0, 1] array."""
    import numpy as np

    model.eval()
    device = next(model.parameters()).device
    out = {"prob": [], "mean": [], "logvar": []}
    for s in range(0, len(images), batch_size):
        x = torch.from_numpy(np.asarray(images[s: s + batch_size], dtype=np.float32)).unsqueeze(1)
        q = model.infer(x.to(device))
        for key, name in (("prob", "prob"), ("mean", "mu"), ("logvar", "logvar")):
            out[key].append(q[name].cpu().numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def scanner_components(model: GMVAE, images, labels, k: int) -> "np.ndarray":
    """For each scanner label 0 … k-1: its mixture component, e.g. the code to translate toward it
    or the part of the mixture to draw its z^a from. Components are matched to scanners one to one
    on the argmax q(y|x) of ``images``, by the matching E1 scores (:func:`nbutils.clustering.matching`),
    so two scanners never share a code; component numbers are an arbitrary order of the scanners.
    A scanner matched to a component most of its slices do not fall in (stage 1 did not tell it
    apart) is warned of. With fewer components than scanners, each takes the component most of its
    slices fall in, and some share one (warned)."""
    import warnings

    from .clustering import matching

    comps = encode_all(model, images)["prob"].argmax(1)
    labels = np.asarray(labels)
    if missing := sorted(set(range(k)) - set(labels.tolist())):
        raise ValueError(f"scanner(s) {missing} have no slices to find their component from")
    counts = np.stack([np.bincount(comps[labels == b], minlength=model.cfg.k) for b in range(k)])  # scanner x component
    majority = counts.argmax(1)
    if model.cfg.k < k:
        warnings.warn(f"{model.cfg.k} mixture components for {k} scanners: scanners share the code of the "
                      "component most of their slices fall in")
        return majority
    component_of = {b: c for c, b in matching(labels, comps).items()}
    matched = np.array([component_of[b] for b in range(k)])
    off = np.flatnonzero(counts[np.arange(k), matched] < counts.max(1))  # fewer of its slices than elsewhere
    if len(off):
        warnings.warn(f"scanner(s) {off.tolist()} matched one to one to component(s) {matched[off].tolist()}, "
                      f"not to {majority[off].tolist()}, where most of their slices fall: stage 1 does not tell "
                      "them apart (E1)")
    return matched


def occupancy(prob: "np.ndarray") -> "np.ndarray":
    """The share of images whose argmax q(y|x) is each component, from (N, K) probabilities
    (:func:`encode_all`'s ``prob``): an empty component is a scanner nobody can be assigned to."""
    return np.bincount(prob.argmax(1), minlength=prob.shape[1]) / len(prob)


@torch.no_grad()
def diagnostics(model: GMVAE, images, labels, seed: int = 0, batch_size: int = 256, groups=None) -> dict:
    """Is the posterior collapsed? On (N, H, W) [0, 1] ``images`` with scanner ``labels``:

    - ``active_units``: latent dimensions whose posterior mean varies across images
      (variance > 0.01, Burda et al.'s criterion), and ``mean_variance`` per dimension;
    - ``kl_per_dim``: mean KL(q(z_d|x,y) || p(z_d|y)) per dimension at y = argmax q(y|x) (nats),
      and ``informative_units``, the dimensions carrying more than 0.1 nats (scale-free, unlike
      the variance criterion, which a learned narrow prior can satisfy without information);
    - ``occupancy``: the share of images whose argmax q(y|x) is each component;
    - ``probe_mean`` / ``probe_sample``: cross-validated linear-probe accuracy of the scanner from
      the posterior mean and from one posterior sample (stage 2 is fed one of the two); ``groups``
      (e.g. the subjects) fall in one fold together (:func:`nbutils.clustering.linear_probe`)."""
    import numpy as np

    from .clustering import linear_probe

    codes = encode_all(model, images, batch_size)
    device = next(model.parameters()).device
    m, logvar = (torch.from_numpy(codes[k]).to(device) for k in ("mean", "logvar"))
    comp = codes["prob"].argmax(1)
    pmu, plogvar = model.prior(F.one_hot(torch.from_numpy(comp).to(device), model.cfg.k))
    kl = (0.5 * (plogvar - logvar + (logvar.exp() + (m - pmu) ** 2) / plogvar.exp() - 1)).cpu().numpy()
    eps = torch.randn(m.shape, generator=torch.Generator(device=device).manual_seed(seed), device=device)
    sample = (m + eps * (0.5 * logvar).exp()).cpu().numpy()
    mu = codes["mean"]
    var = mu.var(0)
    labels = np.asarray(labels)
    return dict(active_units=int((var > 0.01).sum()), mean_variance=var, kl_per_dim=kl.mean(0),
                informative_units=int((kl.mean(0) > 0.1).sum()),
                occupancy=occupancy(codes["prob"]),
                probe_mean=linear_probe(mu, labels, seed=seed, groups=groups),
                probe_sample=linear_probe(sample, labels, seed=seed, groups=groups))
