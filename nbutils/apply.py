"""Harmonize your own volumes (notebook 10): which files, which target, where the outputs go.

Inputs are a folder of NIfTI volumes, a CSV with a ``path`` column (as the data CSV), or one
NIfTI file; every problem is a :class:`~nbutils.volumes.DataError` (or ``ValueError`` for a bad
setting) naming the input and the fix, raised before anything is written.
"""
from __future__ import annotations

import hashlib
import os
import re
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .config import resolve
from .data import nifti_stem, read_paths, resize_slices, volume_slices
from .volumes import DataError, load_volume

NIFTI = (".nii", ".nii.gz")
SCANNER_FREE = "scanner-free"


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI)


def find_volumes(inputs: str | Path) -> list[Path]:
    """The volumes named by ``inputs``: a folder (its .nii / .nii.gz files), a CSV (its ``path``
    column) or one NIfTI file. Each volume is opened and checked (``load_volume``)."""
    path = resolve(inputs)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and is_nifti(p))
        if not files:
            raise DataError(f"{path}: the folder holds no .nii or .nii.gz file; point `inputs` at a folder "
                            "of NIfTI volumes, a CSV with a path column, or one NIfTI file.")
    elif path.is_file() and path.suffix.lower() == ".csv":
        files = [Path(p) for p in read_paths(path, ("path",), "path[,domain,...]")["path"]]
    elif path.is_file() and is_nifti(path):
        files = [path]
    elif not path.exists():
        raise DataError(f"{path}: no such folder, CSV or NIfTI file.")
    else:
        raise DataError(f"{path}: not a folder, a .csv or a NIfTI file (.nii, .nii.gz).")
    for f in files:
        load_volume(f)  # a clear error for anything that is not a usable 3-D volume
    return files


def target_index(mode: str, domains: list[str]) -> int | None:
    """``None`` for scanner-free, else the index of the scanner called ``mode``."""
    if mode == SCANNER_FREE:
        return None
    if mode not in domains:
        raise ValueError(f"mode {mode!r} is neither {SCANNER_FREE!r} nor one of the model's scanners "
                         f"{domains}")
    return domains.index(mode)


def reference_slices(path: str | Path, size: tuple[int, int], n: int = 8) -> np.ndarray:
    """``n`` evenly spaced brain slices of a NIfTI volume of the target scanner, at the model's size."""
    path = resolve(path)
    if not path.is_file():
        raise DataError(f"{path}: the reference volume does not exist.")
    slices, _ = volume_slices(path, per_volume=n)
    if not len(slices):
        raise DataError(f"{path}: no brain slice found in the reference volume.")
    if size[0] != size[1]:
        raise ValueError(f"reference slices need a square model size, got {size}")
    return resize_slices(slices, size[0])


def file_label(mode: str, modes: Iterable[str] = ()) -> str:
    """``mode`` (``scanner-free`` or a scanner's name, which may hold spaces or a slash) as a file name's part: runs
    of characters other than letters, digits, ``.``, ``_`` and ``-`` become one ``-``. Where another of ``modes`` (the
    model's scanners) comes out the same but for letter case (``GE Signa``, ``GE/Signa``, ``GE signa``: one file on
    macOS and Windows), the label ends in six hex digits of the name's SHA-1, so the two never share a file, a figure
    or a record."""
    plain = lambda m: re.sub(r"[^A-Za-z0-9._-]+", "-", m).strip("-") or "-"
    label = plain(mode)
    if any(plain(m).lower() == label.lower() for m in {*modes, SCANNER_FREE} - {mode}):
        label += "-" + hashlib.sha1(mode.encode()).hexdigest()[:6]
    return label


def output_paths(out_dir: Path, volumes: list[Path], mode: str, modes: Iterable[str] = ()) -> list[Path]:
    """Where :func:`harmonize_all` writes each volume: ``<name>_harmonized-<mode>.nii.gz`` in
    ``out_dir`` (the mode through :func:`file_label` among ``modes``), the name being the file's without its NIfTI
    suffix; files of one name in different folders (``site1/T1.nii.gz``, ``site2/T1.nii.gz``) are
    named by their path below the folder they share (``site1_T1``). Raises ValueError when two
    volumes would still be written to one file, or a volume would be overwritten."""
    named = [Path(os.path.abspath(v)) for v in volumes]  # names as given (a symlink keeps its own name)
    stems = [nifti_stem(v) for v in named]
    if len(set(stems)) < len(stems):
        common = Path(os.path.commonpath([v.parent for v in named]))
        stems = ["_".join(v.parent.relative_to(common).parts + (s,)) for v, s in zip(named, stems)]
    label = file_label(mode, modes)
    outs = [Path(out_dir) / f"{s}_harmonized-{label}.nii.gz" for s in stems]
    inputs = {v.resolve() for v in named}
    seen: dict[Path, Path] = {}
    for v, out in zip(named, outs):
        real = out.resolve()
        if real in seen:
            raise ValueError(f"{seen[real]} and {v} would both be written to {out}: rename one, or "
                             "harmonize them into different folders")
        if real in inputs:
            raise ValueError(f"{out} would overwrite an input volume: choose another output folder")
        seen[real] = v
    return outs


def harmonize_all(harm, volumes: list[Path], out_dir: Path, mode: str, target: int | None = None,
                  reference: np.ndarray | None = None, seed: int = 0) -> pd.DataFrame:
    """Harmonize every volume into ``out_dir`` (named by :func:`output_paths`, all checked before
    any is written); one row per volume (input, output, shape and affine equal to the input's)."""
    from .harmonize import harmonize_volume

    rows = []
    for v, path in zip(tqdm(volumes, desc="volumes", unit="vol"), output_paths(out_dir, volumes, mode, harm.domains)):
        out = harmonize_volume(harm, v, path, mode="scanner-free" if target is None else "to-scanner",
                               target=target, reference=reference, seed=seed, progress=False)
        a, b = load_volume_header(v), load_volume_header(out)
        rows.append(dict(input=str(v), output=str(out), shape=b[0], same_shape=a[0] == b[0],
                         same_affine=bool(np.allclose(a[1], b[1]))))
    return pd.DataFrame(rows)


def load_volume_header(path) -> tuple[tuple, np.ndarray]:
    import nibabel as nib

    img = nib.load(str(path))
    return tuple(img.shape), img.affine


def builtin_test_volumes(manifest: pd.DataFrame, max_subjects: int = 0, csv: str | Path | None = None) -> pd.DataFrame:
    """The test-split volumes of a run (path, subject, domain), every scanner's rendering of
    ``max_subjects`` held-out anatomies (0: all), chosen among those seen by the most scanners first
    (traveling subjects, whose volumes :func:`agreement` compares), then by name, and listed by
    subject and scanner; with the data set's ``csv``, also each volume's ``clean`` truth where the
    CSV names one."""
    test = manifest[manifest["split"] == "test"][["source", "subject", "domain"]].drop_duplicates()
    scanners = test.groupby("subject")["domain"].nunique()
    subjects = sorted(scanners.index, key=lambda s: (-scanners[s], s))
    if max_subjects:
        subjects = subjects[:max_subjects]
    test = test[test["subject"].isin(subjects)].sort_values(["subject", "domain"])
    test = test.rename(columns={"source": "path"}).reset_index(drop=True)
    if csv is not None and Path(csv).is_file():
        table = read_paths(csv)
        if "clean" in table.columns:
            clean = dict(zip(table["path"], table["clean"].str.strip()))
            test["clean"] = [clean.get(p, "") for p in test["path"]]
    return test


def matched_slices(a: str | Path, b: str | Path, n: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Normalised coronal brain slices of two volumes at the same positions (those chosen in ``a``)."""
    sa, ys = volume_slices(a, per_volume=n)
    sb, _ = volume_slices(b, ys=ys)
    return sa, sb


def _mean_ssim(a: np.ndarray, b: np.ndarray, masks: np.ndarray) -> float:
    from .metrics import ssim

    return float(np.mean([ssim(x, y, m) for x, y, m in zip(a, b, masks)]))


AREA_SHARE = 0.5  # agreement: a slice is read where every volume's brain covers at least this share of the first's


def agreement(volumes: pd.DataFrame, outputs: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Do the harmonized volumes of one anatomy agree across scanners (the traveling subjects of
    the built-in set)? Each volume is read at 1 mm on the coronal brain slices of its anatomy
    (those of the subject's first volume where every volume of the anatomy has a brain of at least
    :data:`AREA_SHARE` of the first one's area), inside that volume's brain.

    Returns (pairs, volumes). ``pairs``: for every two scanners seeing the same anatomy, SSIM
    between the two inputs, between their **blur control** (each input blurred to the effective
    resolution of its own output, :func:`nbutils.metrics.effective_blur`: blurring alone makes
    scans agree, so outputs must beat this) and between the two outputs. ``volumes``: each
    volume's blur sigma (pixels) and sharpness (mean gradient magnitude inside the brain, eroded
    by 2 px) of input, output and, where the table has a ``clean`` column, the clean truth."""
    from scipy.ndimage import binary_erosion

    from .data import MASK_THRESHOLD
    from .metrics import blur, effective_blur, sharpness

    v = volumes.assign(output=outputs).reset_index(drop=True)
    pairs, rows = [], []
    for subject, g in v.groupby("subject", sort=False):
        first, ys = volume_slices(g.path.iloc[0])
        read = lambda path: (first if path == g.path.iloc[0] else volume_slices(path, ys=ys)[0]).astype(np.float32)
        inputs = {r.path: read(r.path) for r in g.itertuples()}
        # the slices where every volume of the anatomy has a brain, at least half the first one's there (a volume that
        # covers less of the anatomy has none, or only a faint edge, elsewhere)
        areas = [(x > MASK_THRESHOLD).sum(axis=(1, 2)) for x in inputs.values()]
        kept = np.all([a >= AREA_SHARE * areas[0] for a in areas], axis=0) & (areas[0] > 0)
        if not kept.any():
            warnings.warn(f"{subject}: its volumes share no coronal brain slice; left out of the agreement", stacklevel=2)
            continue
        seen = {}
        for r in g.itertuples():
            x, y = inputs[r.path][kept], read(r.output)[kept]
            mask = x > MASK_THRESHOLD
            sigma = effective_blur(x, y, mask)
            inner = np.stack([binary_erosion(m, iterations=2) for m in mask])
            sharp = lambda s: float(np.mean([sharpness(a, m) for a, m in zip(s, inner)]))
            row = dict(subject=subject, domain=r.domain, blur_sigma_px=sigma,
                       sharpness_input=sharp(x), sharpness_output=sharp(y))
            clean = getattr(r, "clean", "")
            if isinstance(clean, str) and clean:
                row["sharpness_clean"] = sharp(read(clean)[kept])
                row["output_to_clean_sharpness"] = row["sharpness_output"] / row["sharpness_clean"]
            rows.append(row)
            seen[r.domain] = (x, y, blur(x, sigma), mask)
        names = list(seen)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                (xa, ya, ca, ma), (xb, yb, cb, _) = seen[a], seen[b]
                pairs.append(dict(subject=subject, a=a, b=b, inputs=_mean_ssim(xa, xb, ma),
                                  blur_control=_mean_ssim(ca, cb, ma), outputs=_mean_ssim(ya, yb, ma)))
    return (pd.DataFrame(pairs, columns=["subject", "a", "b", "inputs", "blur_control", "outputs"]),
            pd.DataFrame(rows))
