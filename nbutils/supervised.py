"""The supervised reference: a small paired translator (paired supervision, not available to
unpaired methods).

GMM-DRIT and DRIT++ learn from *unpaired* scans: no anatomy is seen by two scanners. The
built-in simulated set can also render training anatomies on every scanner (its ``paired``
split), the data that paired harmonization methods of the literature (DeepHarmony, MISPEL)
need from traveling subjects. A conditional U-Net trained on those pairs, x_a → x_b given the
source and target scanners (known labels, one-hot, as extra input channels), with an L1 loss, says what a small
paired model reaches at the same budget. It is a yardstick, not a competitor and not an upper
bound (the unpaired models, which see far more anatomies, can pass it): label it as "paired
supervision" wherever it appears.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .crops import coordinates
from .data import Slices
from .methods import SUPERVISED
from .train import adam


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.LeakyReLU(0.2),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.LeakyReLU(0.2))


class PairedUNet(nn.Module):
    """Three-level U-Net on (N, 1, H, W) images in [0, 1], their source scanner and the target
    scanner (indices); any image size (padded to a multiple of 8 and cropped back). Predicts a
    residual on the input. The labels and two coordinate channels (x, y in [-1, 1]) enter as
    extra input channels: the scanners' coil bias fields are fixed shapes in the field of view,
    which a translator can only undo if it knows where it is; and a small receptive field cannot
    infer the source scanner from a slice's global statistics, so it is given (the reference should
    not be held back by either)."""

    def __init__(self, k: int, width: int = 16):
        super().__init__()
        self.k, self.width = k, width
        w = (width, 2 * width, 4 * width, 8 * width)
        self.enc = nn.ModuleList([_block(3 + 2 * k, w[0]), _block(w[0], w[1]), _block(w[1], w[2])])
        self.mid = _block(w[2], w[3])
        self.dec = nn.ModuleList([_block(w[3] + w[2], w[2]), _block(w[2] + w[1], w[1]), _block(w[1] + w[0], w[0])])
        self.out = nn.Conv2d(w[0], 1, 1)

    def forward(self, x: torch.Tensor, source: torch.Tensor, target: torch.Tensor,
                origin: torch.Tensor | None = None, full: tuple[int, int] | None = None) -> torch.Tensor:
        """``x`` whole slices, or windows of ``full``-sized slices at ``origin`` (N, 2) (row, column):
        the coordinate channels are always those of the whole slice."""
        h, w = x.shape[-2:]
        xp = F.pad(x, (0, -w % 8, 0, -h % 8))
        n, _, hp, wp = xp.shape
        code = torch.cat([F.one_hot(source, self.k), F.one_hot(target, self.k)], 1).to(x.dtype)
        fh, fw = full or (h, w)
        # (column, row) channels of the padded whole slice
        grid = coordinates(origin, (hp, wp), (fh + -fh % 8, fw + -fw % 8), n, x.device, x.dtype).flip(1)
        h_ = torch.cat([xp, grid, code[:, :, None, None].expand(-1, -1, hp, wp)], 1)
        skips = []
        for i, block in enumerate(self.enc):
            h_ = block(h_ if i == 0 else F.avg_pool2d(h_, 2))
            skips.append(h_)
        h_ = self.mid(F.avg_pool2d(h_, 2))
        for block, skip in zip(self.dec, reversed(skips)):
            h_ = block(torch.cat([F.interpolate(h_, scale_factor=2.0), skip], 1))
        return (xp + self.out(h_))[..., :h, :w]


def pairs_of(paired: Slices) -> np.ndarray:
    """Rows of the paired split by anatomy: an (anatomies, K) array whose column b holds the row
    of scanner b's slice of that anatomy, -1 where scanner b did not see it; only anatomies seen
    by at least two scanners are kept."""
    m = paired.manifest.reset_index(drop=True).assign(row=lambda d: d.index)
    table = m.pivot_table(index=["subject", "slice_index"], columns="domain_index", values="row", aggfunc="first")
    table = table.reindex(columns=range(len(paired.domains))).fillna(-1).astype(int).to_numpy()
    return table[(table >= 0).sum(1) >= 2]


class PairedTask:
    """One iteration: a batch of random (anatomy, source scanner, target scanner) triples,
    L1 between the translation and the target scanner's scan of that anatomy."""

    def __init__(self, k: int, width: int, lr: float = 1e-3, device="cpu"):
        self.k, self.width, self.lr = k, width, lr
        self.modules = PairedUNet(k, width).to(device)
        self.optimizers = {"unet": adam(self.modules.parameters(), lr=lr)}

    def step(self, batch, it: int, ctx) -> dict[str, float]:
        x, y, a, b, origin, full = batch
        self.modules.train()
        with ctx.autocast():
            loss = F.l1_loss(self.modules(x, a, b, origin, full).float(), y)
        ctx.update(loss, "unet")
        return dict(l1=float(loss.detach()))

    def meta(self) -> dict:
        return dict(kind="paired-unet", levels=3, coords=True, k=self.k, width=self.width, lr=self.lr)


def train_paired(paired: Slices, checkpoint, *, width: int = 16, steps: int = 600, batch_size: int = 16,
                 every: int = 200, seed: int = 0, device=None, crop: int = 0,
                 any_seed: bool = False) -> tuple[PairedUNet, pd.DataFrame]:
    """Train (or load) the paired translator on ``paired`` (a split whose anatomies every
    scanner saw); returns (model, history). ``crop`` > 0: on random ``crop`` windows centred on the
    brain, the same window of both scans; ``any_seed``: as :func:`nbutils.train.fit`."""
    from .crops import crop_starts, take
    from .train import fit, pick_device

    rows = pairs_of(paired)
    if not len(rows):
        raise ValueError("the paired split holds no anatomy seen by two scanners: build the simulated set "
                         "with n_paired > 0 (profile sim_paired_subjects)")
    k = len(paired.domains)
    device = pick_device() if device is None else torch.device(device)
    torch.manual_seed(seed)  # the initial weights are a function of the seed, not of what ran before
    task = PairedTask(k, width, device=device)
    seen = [np.flatnonzero(r >= 0) for r in rows]

    def batch(i):
        rng = np.random.default_rng((seed, i))
        anat = rng.integers(0, len(rows), batch_size)
        a, b = np.array([rng.choice(seen[j], 2) for j in anat]).T  # two scanners that saw it (may be equal)
        src, dst = rows[anat, a], rows[anat, b]
        full = tuple(paired.images.shape[1:])
        starts = crop_starts(paired.masks[src], crop, rng) if crop else np.zeros((len(src), 2), int)

        def load(r):
            x = take(paired.images[r], starts, crop) if crop else np.asarray(paired.images[r], np.float32)
            return torch.from_numpy(x).unsqueeze(1).to(device)

        label = lambda v: torch.from_numpy(v).long().to(device)
        origin = torch.from_numpy(starts).float().to(device) if crop else None
        return load(src), load(dst), label(a), label(b), origin, full

    history = fit(task, batch, steps, checkpoint, every=every, seed=seed, device=device, desc="paired translator",
                  any_seed=any_seed)
    return task.modules.eval(), history


@torch.no_grad()
def to_target(model: PairedUNet, images: np.ndarray, sources: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """Every (H, W) image in [0, 1], acquired on scanner ``sources[i]``, translated to every
    scanner: (K, N, H, W), clipped to [0, 1]. ``batch_size`` None: 4 slices at a time on the CPU,
    where a whole 1 mm slice's first-level maps take about 1 MB and 64 slices in one batch ran
    2.2 x slower (its caches; the same outputs), 128 on a GPU."""
    device = next(model.parameters()).device
    batch_size = batch_size or (4 if device.type == "cpu" else 128)
    out = np.empty((model.k, *np.shape(images)), np.float32)
    sources = torch.as_tensor(np.array(sources), dtype=torch.long, device=device)
    for b in range(model.k):
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(np.asarray(images[i:i + batch_size], np.float32)).unsqueeze(1).to(device)
            t = torch.full((len(x),), b, dtype=torch.long, device=device)
            out[b, i:i + len(x)] = model.eval()(x, sources[i:i + len(x)], t).clamp(0, 1)[:, 0].cpu().numpy()
    return out


def for_run(run) -> PairedUNet | None:
    """The run's paired translator, trained once on the run's ``paired`` split with the profile's
    settings and then loaded from ``<run>/checkpoints/paired-unet.pt``; None (with a message) when
    the data set has no paired split (real data without traveling subjects in training)."""
    from .data import for_run as slices_for_run

    manifest = pd.read_csv(run.require(run.slices / "manifest.csv", "01_data_slicing"), usecols=["split"])
    if not (manifest["split"] == "paired").any():
        print("this data set has no paired split: no supervised reference")
        return None
    p = run.profile
    model, _ = train_paired(slices_for_run(run, "paired"), run.checkpoints / SUPERVISED.checkpoint(), width=p.paired_width,
                            steps=p.paired_steps, every=p.checkpoint_every, seed=run.seed, crop=p.crop,
                            any_seed=True)  # the run's reference, which make seeds shares with every seed
    return model
