import functools
import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from nbutils.volumes import MNI_AFFINE, MNI_SHAPE


def blob_volume(seed: int = 0, shape=MNI_SHAPE, affine=MNI_AFFINE) -> nib.Nifti1Image:
    """A smooth ellipsoidal 'brain' with two tissue levels, on the given grid."""
    return nib.Nifti1Image(_blob(seed, tuple(shape)).copy(), affine)


@functools.lru_cache(maxsize=8)
def _blob(seed: int, shape: tuple) -> np.ndarray:
    rng = np.random.default_rng(seed)
    idx = np.indices(shape, dtype=np.float32)
    centre = np.array(shape, np.float32)[:, None, None, None] / 2
    radii = np.array([0.35, 0.4, 0.35])[:, None, None, None] * np.array(shape)[:, None, None, None]
    r = np.sqrt((((idx - centre) / radii) ** 2).sum(0))
    vol = np.where(r < 1, 300.0, 0.0) + np.where(r < 0.6, 400.0, 0.0)
    vol += rng.normal(0, 5, shape) * (r < 1)
    return vol.astype(np.float32)


def nifti_digest(folder: Path) -> dict[str, str]:
    """``{path under folder: sha256 of the voxel array}`` of every .nii.gz under ``folder``."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(
        np.asarray(nib.load(str(p)).dataobj).tobytes()).hexdigest() for p in sorted(folder.rglob("*.nii.gz"))}


@pytest.fixture
def write_volume(tmp_path: Path):
    """write_volume(name, img=None, seed=0) -> path of a .nii.gz in tmp_path."""
    def write(name: str, img: nib.Nifti1Image | None = None, seed: int = 0) -> Path:
        path = tmp_path / name
        nib.save(img if img is not None else blob_volume(seed), str(path))
        return path
    return write


@pytest.fixture
def small_csv(tmp_path: Path, write_volume):
    """A CSV of 2 domains x 3 subjects on the MNI grid."""
    lines = ["path,domain,subject"]
    for d in ("siteA", "siteB"):
        for s in range(3):
            name = f"{d}_{s}.nii"  # uncompressed: fast to write, and exercises plain .nii
            write_volume(name, seed=s)
            lines.append(f"{name},{d},{d}-{s}")
    csv = tmp_path / "volumes.csv"
    csv.write_text("\n".join(lines) + "\n")
    return csv


def site_csv(folder: Path, train: int = 3, test: int = 2, traveling: bool = True) -> Path:
    """A user's CSV ``path,domain,subject,split`` of synthetic NIfTI volumes from two sites that
    differ in contrast (a gamma curve): ``train`` subjects per site, and ``test`` held-out subjects,
    scanned at both sites when ``traveling`` (a traveling-subject study), else each at one site."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["path,domain,subject,split"]
    for site, gamma in (("siteA", 0.7), ("siteB", 1.4)):
        subjects = [(f"{site}-{s}", "train", s) for s in range(train)]
        subjects += [(f"trav-{s}" if traveling else f"{site}-t{s}", "test", 10 + s) for s in range(test)]
        for subject, split, seed in subjects:
            img = blob_volume(seed)
            data = (np.asarray(img.dataobj) / 700.0).clip(0, 1) ** gamma * 1000
            name = f"{subject}_{site}.nii"  # uncompressed: fast to write
            nib.save(nib.Nifti1Image(data.astype(np.int16), img.affine), str(folder / name))
            lines.append(f"{name},{site},{subject},{split}")
    csv = folder / "my-site.csv"
    csv.write_text("\n".join(lines) + "\n")
    return csv
