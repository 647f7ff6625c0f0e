"""A third simulated multi-scanner set, rendered without :mod:`nbutils.phantom`'s renderer.

The built-in set and our second set share one renderer (a contrast curve of the T1 template, then
resolution, coil field, noise and one artefact), the one the project was developed on. This module
renders scanners another way, to check that what the models learn is not that renderer:

* **anatomy**: nilearn's MNI152 2009a grey- and white-matter maps and brain mask on their own
  197 × 233 × 189 grid (not FSL's 182 grid, so notebook 01 resamples), each subject a slab of
  coronal slices warped by a random 3-D affine and a smooth elastic field;
* **contrast**: a tissue-mixing model, each scanner giving CSF, grey and white matter its own level;
* **five scanners**, each with one kind of effect: Rician noise alone, in-plane blur, thick axial
  slices (block means along z), edge enhancement, anisotropic blur; a coil field of its own shape
  and per-image gain; stored as float32, int16, float64 or uint8 (saturating), in RAS or LAS.

The split follows the built-in set: unpaired training subjects per scanner, and test subjects seen
by every scanner with a clean truth (the scanner's tissue levels alone) and a rescan (the same
anatomy, fresh per-image nuisance). No paired split. These are simulations, not real devices.
"""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from .io import atomic_path
from .parallel import thread_map
from .phantom import holds, write_index
from .plots import SIMULATED_BY

CODE_HASH = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]  # in the spec: new code, new files
Y_BAND = (78, 158)  # y = -56 … +24 mm on nilearn's grid: the built-in set's coronal band
# per scanner: tissue levels (CSF, GM, WM), noise (sd, Rician?), effect, coil field (shape, strength), storage
SCANNERS = {
    "u-1": dict(levels=(0.25, 0.60, 0.95), noise=(0.03, True), effect="none", field=("x", 0.15),
                dtype="float32", las=False, scale=1.0),
    "u-2": dict(levels=(0.10, 0.45, 0.80), noise=(0.02, True), effect="blur", field=("radial", 0.20),
                dtype="int16", las=False, scale=2000.0),
    "u-3": dict(levels=(0.35, 0.55, 0.75), noise=(0.04, False), effect="thick", field=("z", 0.10),
                dtype="int16", las=True, scale=1000.0),
    "u-4": dict(levels=(0.20, 0.70, 0.90), noise=(0.025, True), effect="sharpen", field=("y", 0.20),
                dtype="float64", las=False, scale=300.0),
    "u-5": dict(levels=(0.05, 0.50, 1.00), noise=(0.015, False), effect="aniso", field=("saddle", 0.15),
                dtype="uint8", las=True, scale=200.0),
}


def load_tissues():
    """(affine, [CSF, GM, WM] fractions, brain mask) on nilearn's own 1 mm grid."""
    from nilearn import datasets

    mask_img = datasets.load_mni152_brain_mask(resolution=1)
    mask = mask_img.get_fdata() > 0.5
    gm, wm = (m / m.max() for m in (datasets.load_mni152_gm_template(resolution=1).get_fdata(),
                                    datasets.load_mni152_wm_template(resolution=1).get_fdata()))
    csf = np.clip(1 - gm - wm, 0, 1) * mask
    return mask_img.affine, [v.astype(np.float32) for v in (csf, gm, wm, mask)]


def subject(maps, slab: int, rng: np.random.Generator):
    """A random anatomy: its [CSF, GM, WM] fractions on ``slab`` coronal slices, its mask, its first y
    (a rotation about x and z, a scale and a shift, then a smooth elastic field)."""
    shape = maps[0].shape
    y0 = int(rng.integers(Y_BAND[0], Y_BAND[1] - slab))
    ax, _, az = np.deg2rad(rng.uniform(-5, 5, 3))  # an angle about y is drawn and not used (the set's draws)
    rot_x = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    rot_z = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    grid = np.stack(np.meshgrid(np.arange(shape[0]), np.arange(y0, y0 + slab), np.arange(shape[2]),
                                indexing="ij")).reshape(3, -1).astype(float)
    centre = np.array(shape, float)[:, None] / 2
    coords = rot_x @ rot_z @ np.diag(rng.uniform(0.94, 1.06, 3)) @ (grid - centre) + centre
    coords += rng.uniform(-3, 3, (3, 1))
    on_coarse = [grid[i] / shape[i] * 5 for i in range(3)]  # a smooth elastic field: 6³ knots, sd 1.5 mm
    coords += np.stack([ndimage.map_coordinates(rng.normal(0, 1.5, (6, 6, 6)), on_coarse, order=3,
                                                mode="nearest") for _ in range(3)])
    out = [ndimage.map_coordinates(m, coords, order=1).reshape(shape[0], slab, shape[2]) for m in maps]
    mask = out[3] > 0.5
    return [t * mask for t in out[:3]], mask, y0


def coil_field(kind: str, strength: float, shape: tuple, y0: int) -> np.ndarray:
    """1 + strength × a smooth shape: over the coronal plane (x, z, radial, saddle) or along y across the
    coronal band (each slice of a slab its own gain), for the slab of ``shape`` whose first slice is ``y0``."""
    x, y, z = np.meshgrid(np.linspace(-1, 1, shape[0]), (np.arange(y0, y0 + shape[1]) - np.mean(Y_BAND))
                          / (np.ptp(Y_BAND) / 2), np.linspace(-1, 1, shape[2]), indexing="ij")
    f = {"x": x, "y": y, "z": z, "radial": 1 - 2 * (x ** 2 + z ** 2), "saddle": x * z}[kind]
    return 1 + strength * f


def render(tissues, mask, y0: int, scanner: dict, rng: np.random.Generator | None) -> np.ndarray:
    """The scanner's image of an anatomy in [0, ~1]; ``rng`` None: its clean truth (tissue levels alone)."""
    img = sum(level * t for level, t in zip(scanner["levels"], tissues)).astype(np.float64)
    if rng is None:
        return img * mask
    effect = scanner["effect"]
    if effect == "blur":
        img = ndimage.gaussian_filter(img, (1.0, 0, 1.0))
    elif effect == "thick":  # 3 mm axial slices: block means along z, repeated
        n = img.shape[2] // 3 * 3
        img[:, :, :n] = np.repeat(img[:, :, :n].reshape(*img.shape[:2], -1, 3).mean(-1), 3, axis=2)
    elif effect == "sharpen":
        img = img + 0.7 * (img - ndimage.gaussian_filter(img, (1.5, 0, 1.5)))
    elif effect == "aniso":
        img = ndimage.gaussian_filter(img, (0.4, 0, 1.6))
    kind, strength = scanner["field"]
    img = img * coil_field(kind, strength * rng.uniform(0.7, 1.3), img.shape, y0) * rng.uniform(0.8, 1.25)
    sd, rician = scanner["noise"]
    sd *= rng.uniform(0.8, 1.2)
    noisy = img + rng.normal(0, sd, img.shape)
    img = np.hypot(noisy, rng.normal(0, sd, img.shape)) if rician else noisy
    return np.clip(img, 0, None) * mask


def save(vol: np.ndarray, affine: np.ndarray, y0: int, scanner: dict, path: Path) -> None:
    """Write a RAS slab placed at y0 in the scanner's storage: dtype, scale and orientation."""
    affine = affine.copy()
    affine[:3, 3] += y0 * affine[:3, 1]  # the slab's first slice is the grid's slice y0
    if scanner["las"]:  # the array's first x is the grid's last
        vol = vol[::-1]
        affine[:3, 3] += (vol.shape[0] - 1) * affine[:3, 0]
        affine[:3, 0] = 0.0 - affine[:3, 0]  # not -0.0 where 0
    dtype = np.dtype(scanner["dtype"])
    v = vol * scanner["scale"]
    if dtype.kind in "iu":  # integer storage saturates, as a scanner's export does
        v = np.clip(np.round(v), 0, np.iinfo(dtype).max)
    img = nib.Nifti1Image(v.astype(dtype), affine)
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = b"GMM-DRIT tissuesim scanner (not real data)"
    nib.save(img, str(path))


def build(out_dir: str | Path, n_train: int = 40, n_test: int = 10, slab: int = 4, seed: int = 2026,
          progress: bool = True) -> Path:
    """Write the set to ``out_dir`` (atomically; a folder holding this very set is reused) and return its
    CSV ``path,domain,subject,split,clean,rescan``: ``n_train`` anatomies per scanner, ``n_test`` seen by all."""
    out_dir = Path(out_dir)
    spec = dict(code=CODE_HASH, n_train=n_train, n_test=n_test, slab=slab, seed=seed, scanners=SCANNERS)
    csv = out_dir / "volumes.csv"
    if holds(out_dir, spec):
        return csv
    affine, maps = load_tissues()
    names = list(SCANNERS)
    jobs = [("train", k, i) for k in range(len(names)) for i in range(n_train)] + [("test", None, j)
                                                                                  for j in range(n_test)]
    with atomic_path(out_dir) as tmp:
        for sub in ("train", "test", "clean", "rescan"):
            (tmp / sub).mkdir(parents=True)

        def write(job) -> list[dict]:  # one anatomy as each scanner that sees it renders it: its CSV rows
            split, k, i = job
            tissues, mask, y0 = subject(maps, slab, np.random.default_rng([seed, int(split == "test"), k or 0, i]))
            rows = []
            for kk in ([k] if split == "train" else range(len(names))):
                sc, name = SCANNERS[names[kk]], names[kk]
                who = f"{name}-s{i:03d}" if split == "train" else f"trav-{i:03d}"
                file = f"{who}.nii.gz" if split == "train" else f"{who}_{name}.nii.gz"
                put = lambda folder, rng: save(render(tissues, mask, y0, sc, rng), affine, y0, sc, tmp / folder / file)
                put(split, np.random.default_rng([seed, 2, kk, i, int(split == "test")]))
                row = dict(path=f"{split}/{file}", domain=name, subject=who, split=split, clean="", rescan="")
                if split == "test":  # its clean truth (no nuisance) and a rescan (other nuisance)
                    put("clean", None)
                    put("rescan", np.random.default_rng([seed, 4, kk, i]))
                    row.update(clean=f"clean/{file}", rescan=f"rescan/{file}")
                rows.append(row)
            return rows

        done = thread_map(write, jobs, desc="simulating scanners (tissuesim)", progress=progress)
        write_index(tmp, done, spec, f"{SIMULATED_BY}tissuesim from nilearn's MNI152 2009a tissue maps.", names)
    return csv


def main(argv=None) -> Path:
    """``python -m nbutils.tissuesim OUT_DIR``: write the set and its CSV, for ``make run DATA=OUT_DIR/volumes.csv``."""
    ap = argparse.ArgumentParser(prog="python -m nbutils.tissuesim",
                                 description="Write a third simulated multi-scanner set (" + ", ".join(SCANNERS)
                                             + ": simulations, not real devices), rendered without "
                                             "nbutils.phantom's renderer, and its CSV.")
    ap.add_argument("out_dir", metavar="OUT_DIR", help="folder to write (reused when it already holds this very set)")
    csv = build(ap.parse_args(argv).out_dir)
    print(csv)
    return csv


if __name__ == "__main__":
    main()
