"""The supervised upper bound: a small paired translator (paired supervision, not available to
unpaired methods).

GMM-DRIT and DRIT++ learn from *unpaired* scans: no anatomy is seen by two scanners. The
built-in simulated set can also render training anatomies on every scanner (its ``paired``
split), the data that paired harmonization methods of the literature (DeepHarmony, MISPEL)
need from traveling subjects. A conditional U-Net trained on those pairs, x_a → x_b given the
source and target scanners (known labels, one-hot, as extra input channels), with an L1 loss, says how far the unpaired
models are from what the data allow. It is a yardstick, not a competitor: label it as
"paired supervision" wherever it appears.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .data import Slices

LABEL = "paired supervision (upper bound)"


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.LeakyReLU(0.2),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.LeakyReLU(0.2))


class PairedUNet(nn.Module):
    """Two-level U-Net on (N, 1, H, W) images in [0, 1], their source scanner and the target
    scanner (indices); any image size (padded to a multiple of 4 and cropped back). Predicts a
    residual on the input. Both labels are given: a small receptive field cannot infer the
    source scanner from a slice's global statistics, and the bound should not be held back by it."""

    def __init__(self, k: int, width: int = 16):
        super().__init__()
        self.k, self.width = k, width
        self.enc0, self.enc1 = _block(1 + 2 * k, width), _block(width, 2 * width)
        self.mid = _block(2 * width, 4 * width)
        self.dec1, self.dec0 = _block(6 * width, 2 * width), _block(3 * width, width)
        self.out = nn.Conv2d(width, 1, 1)

    def forward(self, x: torch.Tensor, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = -h % 4, -w % 4
        xp = F.pad(x, (0, pw, 0, ph))
        code = torch.cat([F.one_hot(source, self.k), F.one_hot(target, self.k)], 1).float()
        code = code[:, :, None, None].expand(-1, -1, *xp.shape[-2:])
        e0 = self.enc0(torch.cat([xp, code], 1))
        e1 = self.enc1(F.avg_pool2d(e0, 2))
        m = self.mid(F.avg_pool2d(e1, 2))
        d1 = self.dec1(torch.cat([F.interpolate(m, scale_factor=2.0), e1], 1))
        d0 = self.dec0(torch.cat([F.interpolate(d1, scale_factor=2.0), e0], 1))
        return (xp + self.out(d0))[..., :h, :w]


def pairs_of(paired: Slices) -> pd.DataFrame:
    """Rows of the paired split grouped by anatomy: one row per (subject, slice) with one
    column per scanner holding that scanner's row (only anatomies every scanner saw)."""
    m = paired.manifest.reset_index(drop=True).assign(row=lambda d: d.index)
    table = m.pivot_table(index=["subject", "slice_index"], columns="domain_index", values="row", aggfunc="first")
    return table.dropna().astype(int).reset_index(drop=True)


class PairedTask:
    """One iteration: a batch of random (anatomy, source scanner, target scanner) triples,
    L1 between the translation and the target scanner's scan of that anatomy."""

    def __init__(self, k: int, width: int, lr: float = 1e-3, device="cpu"):
        self.k, self.width, self.lr = k, width, lr
        self.modules = PairedUNet(k, width).to(device)
        self.optimizers = {"unet": torch.optim.Adam(self.modules.parameters(), lr=lr)}

    def step(self, batch, it: int, ctx) -> dict[str, float]:
        x, y, a, b = batch
        self.modules.train()
        with ctx.autocast():
            loss = F.l1_loss(self.modules(x, a, b).float(), y)
        ctx.update(loss, "unet")
        return dict(l1=float(loss.detach()))

    def meta(self) -> dict:
        return dict(kind="paired-unet", k=self.k, width=self.width, lr=self.lr)


def train_paired(paired: Slices, checkpoint, *, width: int = 16, steps: int = 600, batch_size: int = 16,
                 every: int = 200, seed: int = 0, device=None) -> tuple[PairedUNet, pd.DataFrame]:
    """Train (or load) the paired translator on ``paired`` (a split whose anatomies every
    scanner saw); returns (model, history)."""
    from .train import fit, pick_device

    table = pairs_of(paired)
    if table.empty:
        raise ValueError("the paired split holds no anatomy seen by every scanner: build the simulated set "
                         "with n_paired > 0 (profile sim_paired_subjects)")
    k = len(paired.domains)
    device = pick_device() if device is None else torch.device(device)
    task = PairedTask(k, width, device=device)
    rows = table.to_numpy()

    def batch(i):
        rng = np.random.default_rng((seed, i))
        anat = rng.integers(0, len(rows), batch_size)
        a, b = rng.integers(0, k, batch_size), rng.integers(0, k, batch_size)
        load = lambda r: torch.from_numpy(np.asarray(paired.images[r], np.float32)).unsqueeze(1).to(device)
        label = lambda v: torch.from_numpy(v).long().to(device)
        return load(rows[anat, a]), load(rows[anat, b]), label(a), label(b)

    history = fit(task, batch, steps, checkpoint, every=every, seed=seed, device=device, desc="paired translator")
    return task.modules.eval(), history


@torch.no_grad()
def to_target(model: PairedUNet, images: np.ndarray, sources: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """Every (H, W) image in [0, 1], acquired on scanner ``sources[i]``, translated to every
    scanner: (K, N, H, W), clipped to [0, 1]."""
    device = next(model.parameters()).device
    out = np.empty((model.k, *np.shape(images)), np.float32)
    sources = torch.as_tensor(np.asarray(sources), dtype=torch.long, device=device)
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
    from .data import load_slices

    slices = run.require(run.slices / "manifest.csv", "01_data_slicing").parent
    manifest = pd.read_csv(slices / "manifest.csv", usecols=["split"])
    if not (manifest["split"] == "paired").any():
        print("this data set has no paired split: no supervised upper bound")
        return None
    p = run.profile
    model, _ = train_paired(load_slices(slices, "paired"), run.checkpoints / "paired-unet.pt", width=p.paired_width,
                            steps=p.paired_steps, every=p.checkpoint_every, seed=run.seed)
    return model
