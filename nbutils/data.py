"""A data set of volumes → coronal slices, a manifest and compact slice arrays.

Input: a CSV ``path,domain[,subject][,split][,clean][,rescan]``. ``path`` (and the optional
renderings of the same acquisition the built-in simulated set provides for its test split:
``clean``, the ground truth, and ``rescan``, a second scan with fresh nuisance) are relative
to the CSV's folder unless absolute. Without ``subject`` each file is its own subject;
without ``split`` subjects are split train/test at the subject level (no subject in two
splits), stratified by scanner, the traveling subjects apart (:func:`subject_split`). A ``paired``
split (the same anatomies on several scanners, for a supervised translator only) is sliced like
the others.

Output (``<run>/slices/``, written atomically as one folder):

* ``{split}.npy`` float16 (N, H, W) in [0, 1] — memory-mappable;
* ``{split}_mask.npy`` bool (N, H, W) brain masks;
* ``{split}_clean.npy`` / ``{split}_rescan.npy`` float16 clean truth / rescan, when every
  volume of the split has one;
* ``manifest.csv`` one row per slice: split, index (row in the split's arrays),
  slice_id, domain, domain_index, subject, source, slice_index (MNI coronal y);
* ``info.json`` domains (ordered), image size and slicing settings.
"""
from __future__ import annotations

import filecmp
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from skimage.transform import resize
from tqdm.auto import tqdm

from .io import atomic_path, atomic_write_text
from .volumes import (DataError, brain_mask, check_header, coronal_slice, load_volume, robust_normalise,
                      to_mni_grid)

SPLITS = ("train", "test", "paired")
EXTRAS = ("clean", "rescan")  # optional renderings of the same anatomy, sliced at the same positions
MASK_THRESHOLD = 0.08  # on [0, 1] normalised intensities, after light smoothing


def read_paths(csv: str | Path, required: tuple[str, ...] = ("path",), header: str = "path[,...]") -> pd.DataFrame:
    """Read a CSV of volumes: checks that it exists, is not empty, has the ``required`` columns
    and that every file it names (``path``, and ``clean``/``rescan`` where given) exists; paths are made
    absolute (relative ones are taken from the CSV's folder; symlinks kept as named), rows without a path
    dropped (the index keeps each row's place in the file). Raises :class:`DataError`."""
    csv = Path(csv)
    if not csv.is_file():
        raise DataError(f"{csv}: no such CSV; give a CSV with columns {header}.")
    lines = csv.read_bytes().splitlines()
    lead = next((i for i, line in enumerate(lines) if line.strip(b" \t\xef\xbb\xbf")), len(lines))  # blank first lines
    try:
        table = pd.read_csv(csv, dtype=str, keep_default_na=False, skip_blank_lines=False, skiprows=lead)
    except pd.errors.EmptyDataError:
        raise DataError(f"{csv}: the CSV is empty; it needs a header {header} "
                        "and one row per volume.") from None
    table.index += lead  # the index is each row's line in the file - 2
    table.columns = [c.strip().lower() for c in table.columns]
    missing = set(required) - set(table.columns)
    if missing:
        raise DataError(f"{csv}: missing column(s) {', '.join(sorted(missing))} (found: "
                        f"{', '.join(table.columns) or 'none'}); the header must be {header}.")
    table = table[table["path"].str.strip() != ""]  # the index stays each row's place in the file (line - 2)
    if table.empty:
        raise DataError(f"{csv}: the CSV has a header but no rows; add one row per volume.")

    def absolute(p: str) -> str:  # symlinks kept as named: a file's name and folders are the user's
        p = Path(p.strip())
        return os.path.abspath(p if p.is_absolute() else csv.parent / p)

    table["path"] = table["path"].map(absolute)
    gone = [f"row {i + 2}: {p}" for i, p in table["path"].items() if not Path(p).is_file()]
    for extra in (e for e in EXTRAS if e in table.columns):
        table[extra] = table[extra].str.strip()
        has = table[extra] != ""
        table.loc[has, extra] = table.loc[has, extra].map(absolute)
        gone += [f"row {i + 2}: {p} ({extra})" for i, p in table.loc[has, extra].items()
                 if not Path(p).is_file()]
    if gone:
        more = f" and {len(gone) - 5} more" if len(gone) > 5 else ""
        raise DataError(f"{csv}: {len(gone)} file(s) named in the CSV do not exist: "
                        f"{'; '.join(gone[:5])}{more}. Fix the paths (relative to the CSV's folder).")
    return table


def read_table(csv: str | Path, test_fraction: float = 0.2, seed: int = 0) -> pd.DataFrame:
    """Read and check a data CSV; return absolute paths, subjects and splits.

    Raises :class:`DataError` on an unreadable or empty CSV, missing columns, missing
    files, a file whose header is not a usable volume (:func:`~nbutils.volumes.check_header`;
    the voxels are read later, when slicing), a row without a domain, a file listed twice, unknown split names, subjects in two
    splits, fewer than two domains, or a domain without volumes to train on and to test on.
    A row without a subject is a subject of its own, named by its file's path (relative to the
    CSV's folder, without the NIfTI suffix), so that files of one name in different folders are
    not taken for one person.
    """
    table = read_paths(csv, ("path", "domain"), "path,domain[,subject][,split]")
    table["domain"] = table["domain"].str.strip()
    rows = lambda mask: ", ".join(str(i + 2) for i in table.index[mask][:5])  # the CSV's line numbers
    if (table["domain"] == "").any():
        raise DataError(f"{csv}: row(s) {rows(table['domain'] == '')} have no domain; give every volume its scanner.")
    twice = table["path"].map(lambda p: str(Path(p).resolve())).duplicated(keep=False)  # one file, two names too
    if twice.any():
        raise DataError(f"{csv}: rows {rows(twice)} name the same file(s) "
                        f"({', '.join(sorted(set(table.loc[twice, 'path']))[:3])}); list every volume once.")
    if table["domain"].nunique() < 2:
        raise DataError(f"{csv}: every volume is of domain {table['domain'].iloc[0]!r}; harmonization needs at "
                        "least two scanners.")
    counts = table["domain"].value_counts()
    few = counts[counts < 2]
    if len(few):
        raise DataError(f"{csv}: domain(s) {', '.join(f'{d!r} ({n} volume)' for d, n in few.items())} "
                        "have fewer than 2 volumes; every scanner needs at least 2 (one to train, "
                        "one to test). Add volumes or drop that domain.")
    own = table["subject"].str.strip() if "subject" in table.columns else pd.Series("", index=table.index)
    folder = Path(os.path.abspath(csv)).parent
    table["subject"] = own.where(own != "", [file_subject(p, folder) for p in table["path"]])
    if "split" in table.columns and (table["split"].str.strip() != "").any():
        table["split"] = table["split"].str.strip().str.lower()
        bad = sorted(set(table["split"]) - set(SPLITS))
        if bad:
            raise DataError(f"{csv}: unknown split value(s) {bad} (rows {rows(~table['split'].isin(SPLITS))}); "
                            f"use one of {list(SPLITS)} or leave the column out to split by subject automatically.")
        mixed = table.groupby("subject")["split"].nunique()
        if (mixed > 1).any():
            raise DataError(f"{csv}: subject(s) {list(mixed[mixed > 1].index[:5])} appear in more "
                            "than one split; a subject's volumes must all be in the same split.")
    else:
        table["split"] = subject_split(table, test_fraction, seed)
    for split in ("train", "test"):
        if lacking := lacking_domains(table["domain"], table["split"], split):
            raise DataError(f"{csv}: domain(s) {lacking} have no {split} volume; every scanner needs volumes to "
                            "train on and to test on, of different subjects (a subject's volumes stay in one "
                            "split): add subjects, or set the split column.")
    unusable = []  # every volume's header, before any is read: a bad file late in the CSV stops the run here
    for column in ("path", *(e for e in EXTRAS if e in table.columns)):
        for i, p in table.loc[table[column] != "", column].items():
            try:
                check_header(p)
            except DataError as exc:
                unusable.append(f"row {i + 2}{'' if column == 'path' else f' ({column})'}: {exc}")
    if unusable:
        more = f" (and {len(unusable) - 3} more)" if len(unusable) > 3 else ""
        raise DataError(f"{csv}: {len(unusable)} volume(s) cannot be used{more}: " + " | ".join(unusable[:3]))
    return table


def file_subject(path: str, folder: Path) -> str:
    """The subject of a volume whose row names none: its file's path relative to ``folder`` (else
    absolute), without the NIfTI suffix."""
    p = Path(path)
    p = p.relative_to(folder) if p.is_relative_to(folder) else p
    return (p.parent / nifti_stem(p)).as_posix()


def nifti_stem(path: Path) -> str:
    """The file's name without its NIfTI suffix (``.nii.gz`` or ``.nii``)."""
    return path.name[: -len(".nii.gz")] if path.name.lower().endswith(".nii.gz") else path.stem


def subject_split(table: pd.DataFrame, test_fraction: float, seed: int, tries: int = 100) -> list[str]:
    """Subject-level train/test split, stratified: each scanner's subjects scanned once, and the traveling subjects
    (scanned on two or more scanners) together, are split alike. Of three or more traveling subjects at least two are
    kept for testing: notebooks 01 and 09 score translations on them, and the probes hold each subject out. A stratum
    of one subject stays in training. Where a draw leaves some scanner without training or test volumes (a scanner
    seen mostly through traveling subjects), the next of up to ``tries`` draws is taken; where every split of subjects
    scanned once covers the scanners, the first draw does, and it is the split a stratification by scanner alone
    gives them."""
    rng = np.random.default_rng(seed)
    scanners = table.groupby("subject", sort=True)["domain"].agg(["first", "nunique"])
    once = scanners.loc[scanners["nunique"] == 1, "first"]
    strata = [np.array(sorted(subjects.index)) for _, subjects in once.groupby(once)]
    strata.append(np.array(sorted(scanners.index[scanners["nunique"] > 1])))  # the traveling subjects, last
    sizes = []
    for i, names in enumerate(strata):
        n = int(round(test_fraction * len(names)))
        n = min(max(n, 1), len(names) - 1) if len(names) > 1 else 0
        sizes.append(max(n, 2) if i == len(strata) - 1 and len(names) >= 3 else n)
    for _ in range(tries):
        test = set().union(*(rng.choice(names, size=n, replace=False) for names, n in zip(strata, sizes)))
        split = ["test" if s in test else "train" for s in table["subject"]]
        if not any(lacking_domains(table["domain"], split, part) for part in ("train", "test")):
            break
    return split


def lacking_domains(domains: pd.Series, split, part: str) -> list[str]:
    """The scanners of ``domains`` with no row whose ``split`` is ``part`` (sorted)."""
    return sorted(set(domains) - set(domains[np.asarray(split) == part]))


def chosen_slices(area: np.ndarray, per_volume: int, min_fraction: float) -> np.ndarray:
    """Coronal indices to keep: brain area ≥ ``min_fraction`` x the largest, then
    ``per_volume`` evenly spaced among them (0 = all)."""
    if area.max() <= 0:
        return np.array([], int)
    ok = np.flatnonzero(area >= min_fraction * area.max())
    if per_volume and len(ok) > per_volume:
        ok = ok[np.round(np.linspace(0, len(ok) - 1, per_volume)).astype(int)]
    return ok


def volume_slices(path: str | Path, ys: np.ndarray | None = None, per_volume: int = 0,
                  min_fraction: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """Normalised 182 x 182 coronal slices of one volume: (slices, coronal indices).

    With ``ys`` given, exactly those coronal indices (used to take a clean truth's
    slices at the same positions as its rendered image)."""
    img = load_volume(path)
    img = nib.Nifti1Image(robust_normalise(img.get_fdata(dtype=np.float32)), img.affine)
    vol = to_mni_grid(img, source=path)
    if ys is None:
        area = (vol > MASK_THRESHOLD).sum(axis=(0, 2))
        ys = chosen_slices(area, per_volume, min_fraction)
    if not len(ys):
        return np.zeros((0, 182, 182), np.float32), ys
    return np.stack([coronal_slice(vol, y) for y in ys]), ys


def resize_slices(slices: np.ndarray, size: int) -> np.ndarray:
    """Anti-aliased resize of (N, 182, 182) slices to (N, size, size)."""
    if slices.shape[-2:] == (size, size) or not len(slices):
        return slices.astype(np.float32).reshape(-1, size, size)
    return np.stack([resize(s, (size, size), order=1, anti_aliasing=True, preserve_range=True)
                     for s in slices]).astype(np.float32)


def slice_dataset(csv: str | Path, out_dir: str | Path, image_size: int, per_volume: int = 0,
                  min_fraction: float = 0.6, test_fraction: float = 0.2, seed: int = 0,
                  progress: bool = True, replacing: Callable[[], object] | None = None) -> pd.DataFrame:
    """Slice every volume of ``csv`` into ``out_dir`` (atomically); return the manifest.

    Slices equal byte for byte to those ``out_dir`` already holds leave it untouched, so that its
    arrays keep their modification times, which the caches of what is made from them read
    (:func:`array_files`); if only the volumes' paths differ (the data or the repository moved),
    only the manifest and ``info.json`` are rewritten. Otherwise ``replacing`` is called just
    before the new slices replace what ``out_dir`` holds, if anything
    (:meth:`nbutils.config.Run.set_aside`)."""
    table = read_table(csv, test_fraction, seed)
    domains = sorted(table["domain"].unique())
    rows, store = [], {s: {"image": [], "mask": [], **{e: [] for e in EXTRAS}} for s in SPLITS}
    for rec in tqdm(table.itertuples(), total=len(table), desc="slicing volumes", disable=not progress):
        slices, ys = volume_slices(rec.path, per_volume=per_volume, min_fraction=min_fraction)
        if not len(ys):
            raise DataError(f"{rec.path}: no coronal slice holds enough brain; check the volume "
                            "(is it skull-stripped and registered to MNI?).")
        extra = {e: (volume_slices(getattr(rec, e), ys=ys)[0] if getattr(rec, e, "") else None) for e in EXTRAS}
        clean = extra["clean"]
        # the mask comes from the clean truth when there is one (same anatomy in every scanner)
        masks = np.stack([brain_mask(s, MASK_THRESHOLD) for s in (clean if clean is not None else slices)])
        part = store[rec.split]
        start = sum(len(a) for a in part["image"])
        part["image"].append(resize_slices(slices, image_size))
        part["mask"].append(resize_slices(masks.astype(np.float32), image_size) > 0.5)
        for e, s in extra.items():
            part[e].append(None if s is None else resize_slices(s, image_size))
        for i, y in enumerate(ys):
            rows.append(dict(split=rec.split, index=start + i,
                             slice_id=f"{rec.subject}_{rec.domain}_y{y:03d}", domain=rec.domain,
                             domain_index=domains.index(rec.domain), subject=rec.subject,
                             source=rec.path, slice_index=int(y), has_clean=clean is not None))
    manifest = pd.DataFrame(rows)
    out_dir = Path(out_dir)
    with atomic_path(out_dir, optional=True) as tmp:
        tmp.mkdir(parents=True)
        for split, part in store.items():
            if not part["image"]:
                continue
            np.save(tmp / f"{split}.npy", np.concatenate(part["image"]).astype(np.float16))
            np.save(tmp / f"{split}_mask.npy", np.concatenate(part["mask"]))
            for e in EXTRAS:
                if all(c is not None for c in part[e]):
                    np.save(tmp / f"{split}_{e}.npy", np.concatenate(part[e]).astype(np.float16))
        manifest.to_csv(tmp / "manifest.csv", index=False)
        info = dict(domains=domains, image_size=image_size, per_volume=per_volume,
                    min_fraction=min_fraction, test_fraction=test_fraction, seed=seed,
                    source_csv=str(Path(csv).resolve()))
        atomic_write_text(tmp / "info.json", json.dumps(info, indent=2))
        found = compare_slices(tmp, out_dir)
        if found == "moved":
            for name in ("manifest.csv", "info.json"):
                os.replace(tmp / name, out_dir / name)
        if found != "other":
            shutil.rmtree(tmp)  # atomic_path leaves out_dir as it was
        elif replacing is not None:
            replacing()
    return manifest


def compare_slices(new: Path, old: Path) -> str:
    """How the sliced data set in folder ``new`` stands to ``old``'s: "same" (every file byte for
    byte), "moved" (the same arrays and slices; only the volumes' paths in the manifest and
    ``info.json`` differ) or "other" (also when ``old`` holds none or cannot be read). Hidden files
    are left out."""
    names = lambda d: sorted(p.name for p in d.iterdir() if p.is_file() and not p.name.startswith("."))
    same = lambda *files: all(filecmp.cmp(new / f, old / f, shallow=False) for f in files)
    if not (old / "manifest.csv").is_file() or names(new) != names(old):
        return "other"
    if not same(*[p.name for p in array_files(new)]):
        return "other"
    if same("manifest.csv", "info.json"):
        return "same"
    without_paths = lambda d: (pd.read_csv(d / "manifest.csv", dtype=str).drop(columns="source"),
                               {k: v for k, v in json.loads((d / "info.json").read_text()).items() if k != "source_csv"})
    try:
        (manifest_new, info_new), (manifest_old, info_old) = without_paths(new), without_paths(old)
    except (ValueError, KeyError, OSError):  # an old manifest or info.json damaged or of another layout
        return "other"
    return "moved" if manifest_new.equals(manifest_old) and info_new == info_old else "other"


def array_files(slice_dir: str | Path) -> list[Path]:
    """The arrays of a sliced data set (``*.npy``): its slices. :func:`slice_dataset` writes every
    one of them anew whenever it makes other slices, and rewrites only ``manifest.csv`` and
    ``info.json`` when just the volumes' paths changed, so the stamps of what is made from the slices
    read these files alone (:func:`nbutils.outputs.inputs_stamp`, :func:`nbutils.seeds.base_state`)."""
    return sorted(Path(slice_dir).glob("*.npy"))


@dataclass
class Slices:
    """One split of a sliced data set. ``images``/``clean``/``rescan`` are float16 memory maps;
    ``clean`` (ground truth) and ``rescan`` (the same acquisition with fresh nuisance) exist only
    for the built-in simulated test split."""

    images: np.ndarray
    masks: np.ndarray
    clean: np.ndarray | None
    manifest: pd.DataFrame
    domains: list[str]
    rescan: np.ndarray | None = None
    source_csv: str = ""  # the CSV of volumes the slices were cut from

    @property
    def labels(self) -> np.ndarray:
        return self.manifest["domain_index"].to_numpy()

    def __len__(self) -> int:
        return len(self.manifest)

    def take(self, rows) -> Slices:
        """The slices ``rows`` (in that order) as a split of their own, read into memory."""
        rows = np.asarray(rows, int)
        pick = lambda a: None if a is None else np.asarray(a[rows])
        return replace(self, images=pick(self.images), masks=pick(self.masks), clean=pick(self.clean),
                       rescan=pick(self.rescan), manifest=self.manifest.iloc[rows].reset_index(drop=True))

    def domain(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(images as float32, masks) of the slices of domain ``k``, read into memory."""
        rows = np.flatnonzero(self.labels == k)
        return np.asarray(self.images[rows], np.float32), np.asarray(self.masks[rows], bool)


def load_slices(slice_dir: str | Path, split: str) -> Slices:
    """Memory-map one split written by :func:`slice_dataset`."""
    slice_dir = Path(slice_dir)
    if not (slice_dir / "manifest.csv").is_file():
        raise FileNotFoundError(f"{slice_dir} holds no sliced data set: run notebook 01 first.")
    info = json.loads((slice_dir / "info.json").read_text())
    manifest = pd.read_csv(slice_dir / "manifest.csv", dtype={"subject": str})
    manifest = manifest[manifest["split"] == split].sort_values("index").reset_index(drop=True)
    if manifest.empty:
        raise DataError(f"{slice_dir}: the data set has no {split!r} slices.")
    extra = {e: slice_dir / f"{split}_{e}.npy" for e in EXTRAS}
    extra = {e: np.load(f, mmap_mode="r") if f.exists() else None for e, f in extra.items()}
    return Slices(images=np.load(slice_dir / f"{split}.npy", mmap_mode="r"),
                  masks=np.load(slice_dir / f"{split}_mask.npy", mmap_mode="r"),
                  manifest=manifest, domains=list(info["domains"]), source_csv=info.get("source_csv", ""), **extra)


def for_run(run, split: str) -> Slices:
    """One split of the run's sliced data set; a clear error naming notebook 01 when it is missing."""
    return load_slices(run.require(run.slices / "manifest.csv", "01_data_slicing").parent, split)


def counts_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """Slices and volumes per domain and split (rows: domains, plus a total)."""
    vols = manifest.groupby(["domain", "split"])["source"].nunique().unstack(fill_value=0)
    slices = manifest.groupby(["domain", "split"]).size().unstack(fill_value=0)
    out = pd.concat({"volumes": vols, "slices": slices}, axis=1)
    out.columns = [f"{kind} ({split})" for kind, split in out.columns]
    out.loc["total"] = out.sum()
    return out.reset_index().rename(columns={"index": "domain"})
