"""The built-in simulated multi-scanner data set (no download; docs/design.md, "Data").

Anatomy comes from the ICBM152 2009a T1 template that ships inside nilearn. A
*pseudo-subject* is a slab of ``slab`` contiguous 1 mm coronal slices at a random
position, bent by a random smooth in-plane deformation (rotation, scale, shift and
an elastic field). Four **simulated** scanners render it. Each is a fixed appearance
model — a tissue-contrast curve plus spatial signatures no global intensity remap can
undo: a characteristic resolution, a coil bias-field shape, a noise level and one
artefact — with per-image nuisance drawn from that scanner's ranges. The simulated
scanners imitate kinds of acquisition; they are not models of real devices.

* TRAINING split: every scanner sees its own anatomies (unpaired, like real sites).
* TEST split: the same held-out anatomies rendered by every scanner (a simulated
  traveling-subject study), plus each scanner's *clean* rendering of them (its contrast
  curve only, no resolution loss, bias, noise or artefact) as ground truth, and a *rescan*:
  the same anatomy on the same scanner with fresh per-image nuisance (the ceiling of
  scoring a translation against the target's observed scan).
* PAIRED split (optional): some training anatomies rendered by every scanner, the data a
  *paired* translator would need. Only the supervised reference reads it; the unpaired
  methods (GMM-DRIT, DRIT++) never see it.

Volumes are written as skull-stripped int16 NIfTI in FSL's MNI orientation (x flipped)
with a CSV ``path,domain,subject,split,clean,rescan``, so notebook 01 slices them through the
same code path as real data.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from .io import atomic_path
from .parallel import thread_map
from .plots import SIMULATION_MARK
from .volumes import MNI_AFFINE, to_mni_grid

# a cached set is reused only when made by this very code (the hash of this file) with the same spec
CODE_HASH = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
CORONAL_RANGE = (70, 150)  # MNI grid y indices (y = -56 … +24 mm): the broad central band


@dataclass(frozen=True)
class SimScanner:
    """A simulated scanner: fixed identity, nuisance ranges as (low, high)."""

    name: str
    like: str
    contrast: tuple[float, float, float]  # signal of CSF, GM, WM (template tissue means map here)
    curve_gamma: float  # bends the contrast curve between the knots (1 = piecewise linear)
    resolution: str  # text for the table
    blur_mm: tuple[float, float]  # Gaussian sigma along (x, z) in mm; 0 = none
    downsample: int  # acquire at this factor coarser, interpolate back (partial volume)
    bias: str  # 'superior', 'centre', 'periphery', 'left-right', 'diagonal' or 'bump' (off-centre)
    bias_strength: tuple[float, float]
    noise: tuple[float, float]  # Rician sigma in image units (the WM level is contrast[2])
    artefact: str  # 'none', 'ghost' or 'ringing'
    artefact_strength: tuple[float, float]
    contrast_jitter: float = 0.03  # per-image jitter of the tissue levels

    @property
    def label(self) -> str:
        return f"{self.name} {self.like}"


SCANNERS: tuple[SimScanner, ...] = (
    SimScanner("sim-A", "3T-MPRAGE-like", contrast=(0.08, 0.42, 0.90), curve_gamma=1.0,
               resolution="sharp, 1 mm isotropic", blur_mm=(0.4, 0.4), downsample=1,
               bias="superior", bias_strength=(0.10, 0.25), noise=(0.008, 0.015),
               artefact="none", artefact_strength=(0.0, 0.0)),
    SimScanner("sim-B", "1.5T-spin-echo-like", contrast=(0.30, 0.58, 0.78), curve_gamma=1.0,
               resolution="thick sagittal slices: blur along x", blur_mm=(1.6, 0.5), downsample=1,
               bias="centre", bias_strength=(0.20, 0.35), noise=(0.025, 0.040),
               artefact="ghost", artefact_strength=(0.06, 0.12)),
    SimScanner("sim-C", "3T-multichannel-coil-like", contrast=(0.12, 0.50, 0.95), curve_gamma=0.7,
               resolution="1 mm, k-space truncated along z", blur_mm=(0.6, 0.6), downsample=1,
               bias="periphery", bias_strength=(0.30, 0.50), noise=(0.015, 0.030),
               artefact="ringing", artefact_strength=(0.40, 0.55)),
    SimScanner("sim-D", "1.5T-low-resolution-like", contrast=(0.20, 0.62, 0.80), curve_gamma=1.3,
               resolution="2 mm in-plane, interpolated to 1 mm", blur_mm=(0.0, 0.0), downsample=2,
               bias="left-right", bias_strength=(0.15, 0.30), noise=(0.020, 0.030),
               artefact="none", artefact_strength=(0.0, 0.0)),
)


# A second simulated set, for checking that nothing is tuned to the four scanners above: other
# contrast curves, blur along the other axis, bias fields of other shapes (one of them not a
# low-order polynomial in the exponent), inferior-bright instead of superior-bright, other noise
# levels and artefacts (``python -m nbutils.phantom data/raw/second-set``; docs/experiments.md, "Second set").
OTHER_SCANNERS: tuple[SimScanner, ...] = (
    SimScanner("alt-X", "3T-FLASH-like", contrast=(0.05, 0.35, 0.85), curve_gamma=1.2,
               resolution="thick axial slices: blur along z", blur_mm=(0.4, 1.4), downsample=1,
               bias="diagonal", bias_strength=(0.15, 0.30), noise=(0.010, 0.020),
               artefact="ghost", artefact_strength=(0.04, 0.08)),
    SimScanner("alt-Y", "1.5T-inversion-recovery-like", contrast=(0.25, 0.50, 0.70), curve_gamma=0.85,
               resolution="1.5 mm, blurred", blur_mm=(0.8, 0.8), downsample=1,
               bias="bump", bias_strength=(0.20, 0.40), noise=(0.030, 0.050),
               artefact="none", artefact_strength=(0.0, 0.0)),
    SimScanner("alt-Z", "7T-like, inferior-bright", contrast=(0.10, 0.55, 1.00), curve_gamma=1.0,
               resolution="sharp, k-space truncated along z", blur_mm=(0.3, 0.3), downsample=1,
               bias="superior", bias_strength=(-0.45, -0.30), noise=(0.010, 0.020),
               artefact="ringing", artefact_strength=(0.50, 0.65)),
)


def scanner_table(scanners: tuple[SimScanner, ...] = SCANNERS) -> pd.DataFrame:
    """The simulated scanners' appearance models, one row each (for notebook 01)."""
    rows = []
    for s in scanners:
        rows.append({"domain": s.name, "kind (simulated)": s.like,
                     "CSF / GM / WM signal": " / ".join(f"{c:.2f}" for c in s.contrast),
                     "curve gamma": s.curve_gamma, "resolution": s.resolution,
                     "bias field": f"{s.bias}, strength {s.bias_strength[0]:.2f}–{s.bias_strength[1]:.2f}",
                     "noise σ (Rician)": f"{s.noise[0]:.3f}–{s.noise[1]:.3f}",
                     "artefact": "none" if s.artefact == "none" else
                     f"{s.artefact} {s.artefact_strength[0]:.2f}–{s.artefact_strength[1]:.2f}"})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- anatomy
@dataclass
class Template:
    t1: np.ndarray  # MNI grid, RAS, [0, 1]
    mask: np.ndarray  # brain mask (bool)
    knots: tuple[float, float, float]  # template T1 at CSF, GM, WM


def load_template() -> Template:
    """nilearn's ICBM152 2009a T1, brain mask and tissue maps on the MNI 182 grid."""
    from nilearn import datasets

    grid = lambda img: to_mni_grid(nib.as_closest_canonical(img), source="nilearn template")
    t1 = grid(datasets.load_mni152_template(resolution=1))
    mask = grid(datasets.load_mni152_brain_mask(resolution=1)) > 0.5
    gm = grid(datasets.load_mni152_gm_template(resolution=1))
    wm = grid(datasets.load_mni152_wm_template(resolution=1))
    t1 = t1 / float(t1[mask].max())
    csf = mask & (gm < 0.15) & (wm < 0.15) & (t1 > 0.02)
    knots = tuple(float(np.median(t1[m])) for m in (csf, gm > 0.6, wm > 0.8))
    return Template(t1=t1.astype(np.float32), mask=mask, knots=knots)


def pseudo_subject(tpl: Template, slab: int, rng: np.random.Generator):
    """A random anatomy: (T1 slab, mask slab) of shape (182, slab, 182), and its first y index."""
    y0 = int(rng.integers(CORONAL_RANGE[0], CORONAL_RANGE[1] - slab + 1))
    nx, nz = tpl.t1.shape[0], tpl.t1.shape[2]
    theta = np.deg2rad(rng.uniform(-7, 7))
    scale = rng.uniform(0.92, 1.08, size=2)
    shift = rng.uniform(-4, 4, size=2)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]) / scale
    gx, gz = np.meshgrid(np.arange(nx, dtype=np.float32), np.arange(nz, dtype=np.float32), indexing="ij")
    centre = np.array([nx / 2, nz / 2])
    coords = np.einsum("ij,jxz->ixz", rot, np.stack([gx, gz]) - centre[:, None, None])
    coords += (centre + shift)[:, None, None]
    amp = rng.uniform(1.0, 3.0)  # elastic displacement in mm, smooth over ~30 mm
    coarse = rng.normal(0, amp, size=(2, 7, 7))
    coords += np.stack([ndimage.zoom(c, (nx / 7, nz / 7), order=3) for c in coarse])
    warp = lambda a, order: np.stack([ndimage.map_coordinates(a[:, y, :], coords, order=order)
                                      for y in range(y0, y0 + slab)], axis=1)
    t1 = np.clip(warp(tpl.t1, 1), 0, None)
    mask = warp(tpl.mask.astype(np.float32), 1) > 0.5
    return t1 * mask, mask, y0


# --------------------------------------------------------------------------- scanners
def contrast_curve(t1: np.ndarray, knots, levels, gamma: float) -> np.ndarray:
    """Map template intensity to a scanner's signal: through (knot_i → level_i), bent by gamma."""
    xs = np.array([0.0, *knots, 1.0])
    ys = np.array([0.0, *levels, levels[-1] * 1.05])
    lin = np.interp(t1, xs, ys)
    top = ys.max()
    return (top * (lin / top) ** gamma).astype(np.float32)


def _bias_field(kind: str, strength: float, shape: tuple[int, int]) -> np.ndarray:
    u, v = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    g = {"superior": v, "left-right": u, "centre": 1 - 2 * (u**2 + v**2),
         "periphery": 2 * (u**2 + v**2) - 1, "diagonal": (u - v) / np.sqrt(2),
         "bump": 2 * np.exp(-((u - 0.4) ** 2 + (v + 0.3) ** 2) / 0.3) - 1}[kind]
    return np.exp(strength * g).astype(np.float32)


def _ringing(img: np.ndarray, keep: float) -> np.ndarray:
    """Gibbs ringing: keep the central ``keep`` share of k-space along z (hard truncation)."""
    k = np.fft.fftshift(np.fft.fft(img, axis=1), axes=1)
    n = img.shape[1]
    half = int(round(keep * n / 2))
    k[:, : n // 2 - half] = 0
    k[:, n // 2 + half:] = 0
    return np.abs(np.fft.ifft(np.fft.ifftshift(k, axes=1), axis=1)).astype(np.float32)


def partial_volume(s: np.ndarray, f: int) -> np.ndarray:
    """Acquire ``s`` at ``f`` times coarser pixels (block means) and interpolate back to its grid.

    Each coarse pixel is centred on its block, so the image is not shifted (edges padded by repetition)."""
    h, w = s.shape
    pad = np.pad(s, ((0, -h % f), (0, -w % f)), mode="edge")
    low = pad.reshape(pad.shape[0] // f, f, pad.shape[1] // f, f).mean((1, 3))
    return ndimage.zoom(low, f, order=1, grid_mode=True, mode="nearest")[:h, :w]


def render(t1: np.ndarray, mask: np.ndarray, knots, scanner: SimScanner,
           rng: np.random.Generator | None) -> np.ndarray:
    """Render a (182, slab, 182) anatomy as ``scanner`` sees it.

    ``rng=None`` gives the clean rendering (nominal contrast curve only)."""
    if rng is None:
        return contrast_curve(t1, knots, scanner.contrast, scanner.curve_gamma) * mask
    levels = np.array(scanner.contrast) + rng.uniform(-1, 1, 3) * scanner.contrast_jitter
    gamma = scanner.curve_gamma * rng.uniform(0.93, 1.07)
    img = contrast_curve(t1, knots, np.sort(levels), gamma)
    bias = rng.uniform(*scanner.bias_strength)
    sigma = rng.uniform(*scanner.noise)
    art = rng.uniform(*scanner.artefact_strength)
    out = np.empty_like(img)
    for y in range(img.shape[1]):
        s = img[:, y, :]
        if scanner.downsample > 1:
            s = partial_volume(s, scanner.downsample)
        if any(scanner.blur_mm):
            s = ndimage.gaussian_filter(s, scanner.blur_mm)
        if scanner.artefact == "ghost":  # phase-encode ghost along x, a third of the FOV away
            s = s + art * np.roll(s, s.shape[0] // 3, axis=0)
        elif scanner.artefact == "ringing":
            s = _ringing(s, art)
        s = s * _bias_field(scanner.bias, bias, s.shape)
        noisy = np.hypot(s + rng.normal(0, sigma, s.shape), rng.normal(0, sigma, s.shape))
        out[:, y, :] = noisy
    return (out * mask).astype(np.float32)  # skull-stripped, as the preprocessing would leave it


# --------------------------------------------------------------------------- writing
def _save(vol: np.ndarray, y0: int, path: Path) -> None:
    """Write a RAS slab as int16 NIfTI in FSL's MNI orientation (x flipped), placed at y0."""
    affine = MNI_AFFINE.copy()
    affine[1, 3] += y0
    affine[0, 0], affine[0, 3] = -1.0, MNI_AFFINE[0, 3] + vol.shape[0] - 1
    img = nib.Nifti1Image(np.round(vol[::-1] * 1000).astype(np.int16), affine)
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = b"GMM-DRIT simulated scanner (not real data)"
    nib.save(img, str(path))


def build(out_dir: str | Path, n_train: int, n_test: int, slab: int, seed: int = 0,
          n_paired: int = 0, scanners: tuple[SimScanner, ...] = SCANNERS, progress: bool = True) -> Path:
    """Write the simulated set to ``out_dir`` (atomically) and return its CSV.

    ``n_train`` anatomies per scanner (unpaired) and ``n_test`` anatomies rendered by
    every scanner with their clean truths and a rescan; the first ``n_paired`` training
    anatomies of each scanner are also rendered by every scanner (split ``paired``). The
    same arguments give the same files; a folder already holding them (same spec) is reused.
    ``scanners`` replaces the four built-in simulated scanners (e.g. to test on scanners the
    project was not developed on).
    """
    out_dir = Path(out_dir)
    if n_paired > n_train:
        raise ValueError(f"n_paired ({n_paired}) cannot exceed n_train ({n_train}): the paired split "
                         "re-renders training anatomies")
    spec = dict(code=CODE_HASH, n_train=n_train, n_test=n_test, slab=slab, seed=seed, n_paired=n_paired,
                scanners=[asdict(s) for s in scanners])
    csv = out_dir / "volumes.csv"
    if holds(out_dir, spec):
        return csv
    tpl = load_template()
    k_all = range(len(scanners))
    jobs = [("train", k, i) for k in k_all for i in range(n_train)]
    jobs += [("test", None, j) for j in range(n_test)]
    jobs += [("paired", k, i) for k in k_all for i in range(n_paired)]
    with atomic_path(out_dir) as tmp:
        for sub in ("train", "test", "clean", "rescan", "paired"):
            (tmp / sub).mkdir(parents=True)

        def write(job) -> list[dict]:  # one anatomy as each scanner that renders it sees it: its CSV rows
            split, k, i = job
            test = split == "test"
            # a paired anatomy is training anatomy (k, i) itself: the same random draw
            t1, mask, y0 = pseudo_subject(tpl, slab, np.random.default_rng([seed, int(test), k or 0, i]))
            subject = {"train": f"{scanners[k or 0].name}-s{i:03d}", "test": f"trav-{i:03d}",
                       "paired": f"pair-{scanners[k or 0].name}-s{i:03d}"}[split]
            rows = []
            for kk in ([k] if split == "train" else k_all):
                s = scanners[kk]
                name = f"{subject}.nii.gz" if split == "train" else f"{subject}_{s.name}.nii.gz"
                nuisance = [seed, 2, kk, i, int(test)] if split != "paired" else [seed, 3, kk, k, i]
                _save(render(t1, mask, tpl.knots, s, np.random.default_rng(nuisance)), y0, tmp / split / name)
                clean = rescan = ""
                if test:
                    _save(render(t1, mask, tpl.knots, s, None), y0, tmp / "clean" / name)
                    _save(render(t1, mask, tpl.knots, s, np.random.default_rng([seed, 4, kk, i])), y0,
                          tmp / "rescan" / name)
                    clean, rescan = f"clean/{name}", f"rescan/{name}"
                rows.append(dict(path=f"{split}/{name}", domain=s.name, subject=subject,
                                 split=split, clean=clean, rescan=rescan))
            return rows

        # every anatomy draws from its own generators, so the files do not depend on the threads
        done = thread_map(write, jobs, desc="simulating scanners", progress=progress)
        write_index(tmp, done, spec, f"{SIMULATION_MARK} from nilearn's ICBM152 2009a template.",
                    [s.name for s in scanners], built_in=scanners == SCANNERS)
    return csv


def build_for_profile(out_dir: str | Path, profile, seed: int = 0,
                      scanners: tuple[SimScanner, ...] = SCANNERS) -> Path:
    """:func:`build` with a profile's counts (``config.Profile``'s ``sim_*`` fields): the set notebook 01 makes for
    that profile, with ``scanners`` in place of the built-in ones if given."""
    return build(out_dir, n_train=profile.sim_train_subjects, n_test=profile.sim_test_subjects, slab=profile.sim_slab,
                 n_paired=profile.sim_paired_subjects, seed=seed, scanners=scanners)


def holds(out_dir: Path, spec: dict) -> bool:
    """Whether ``out_dir`` already holds the simulated set that ``spec`` describes."""
    return (out_dir / "volumes.csv").exists() and (out_dir / "spec.json").exists() and \
        json.loads((out_dir / "spec.json").read_text()) == json.loads(json.dumps(spec))


def write_index(folder: Path, rows: list[list[dict]], spec: dict, made_by: str, scanners: list[str],
                built_in: bool = False) -> None:
    """A simulated set's CSV (``rows``: each anatomy's rows), ``spec.json`` and README.txt, whose first line
    ``made_by`` begins with :data:`~nbutils.plots.SIMULATED_BY` (so figures call the data simulated)."""
    pd.DataFrame([row for each in rows for row in each]).to_csv(folder / "volumes.csv", index=False)
    (folder / "spec.json").write_text(json.dumps(spec, indent=2))
    (folder / "README.txt").write_text(
        f"{made_by}\nScanners: {', '.join(scanners)} (simulations, not real devices).\n"
        + ("The built-in set.\n" if built_in else "Not the built-in scanners.\n"))


def main(argv=None) -> Path:
    """``python -m nbutils.phantom OUT_DIR``: write the second simulated set (:data:`OTHER_SCANNERS`)
    and its CSV into OUT_DIR, for ``make run DATA=OUT_DIR/volumes.csv``."""
    ap = argparse.ArgumentParser(prog="python -m nbutils.phantom",
                                 description="Write the second simulated multi-scanner set ("
                                             + ", ".join(s.name for s in OTHER_SCANNERS)
                                             + ": simulations, not real devices) and its CSV.")
    ap.add_argument("out_dir", metavar="OUT_DIR", help="folder to write (reused when it already holds this very set)")
    csv = build(ap.parse_args(argv).out_dir, n_train=60, n_test=12, slab=3, seed=11, n_paired=8,
                scanners=OTHER_SCANNERS)
    print(csv)
    return csv


if __name__ == "__main__":
    main()
