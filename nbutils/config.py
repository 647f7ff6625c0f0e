"""Profiles and run folders: the one place where every knob gets its value.

A *profile* fills every setting a notebook does not set itself (docs/design.md, "Profiles"):

========  ====================  ==========================================
profile   for                   budget
========  ====================  ==========================================
smoke     nbmake in CI          tiny images, a few iterations, ≤ ~60 s
quick     ``make run`` on a CPU  1 mm slices (182 px): 64 px crops, 64 px views for E^a; ≤ 30 min
paper     a GPU                 182 px whole slices, the thesis's hyper-parameters
========  ====================  ==========================================

Notebooks call :func:`setup` with their papermill parameters. An empty
``profile`` falls back to the environment variable ``NB_PROFILE`` (nbmake cannot
pass parameters) and then to ``quick``. Every path is resolved from the
repository root, never from the working directory: papermill runs kernels in the
caller's directory, nbmake in the notebook's.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .io import atomic_write_text, locked

ROOT = Path(os.environ.get("GMMDRIT_ROOT", Path(__file__).resolve().parents[1]))
DATA = ROOT / "data"
FIGURES = ROOT / "figures"
NOTEBOOKS = ROOT / "notebooks"


@dataclass(frozen=True)
class Profile:
    """Every setting that depends on the compute budget."""

    name: str
    image_size: int  # slices are stored at image_size x image_size (182 = native MNI 1 mm)
    crop: int  # stage 2 trains on random crop x crop windows of the slices (0 = whole slices)
    view: int  # the attribute encoders (GM-VAE, DRIT++'s E^a) read whole slices down-sampled to this (0 = as they are)
    # slicing of real or simulated volumes
    slices_per_volume: int  # evenly spaced coronal slices kept per volume (0 = all)
    min_brain_fraction: float  # keep slices whose brain area >= this x the volume's largest
    test_fraction: float  # subject-level test share when the CSV has no split column
    # built-in simulated traveling-subject set (docs/design.md, "Data")
    sim_train_subjects: int  # distinct anatomies per simulated scanner (unpaired)
    sim_test_subjects: int  # held-out anatomies rendered by every scanner
    sim_slab: int  # contiguous 1 mm coronal slices per simulated volume
    sim_paired_subjects: int  # training anatomies per scanner also rendered by every scanner (paired split)
    # stage 1: GM-VAE (loss weights and gaussian size are the thesis's, in gmvae.GMVAEConfig)
    gmvae_width: int  # encoder/decoder channels at full size
    gmvae_steps: int  # training iterations
    gmvae_batch: int  # batch size (the thesis: 64)
    checkpoint_every: int  # iterations between checkpoints (and at the end)
    # stage 2: GMM-DRIT and DRIT++ (loss weights in drit.DRITConfig)
    drit_width: int  # base channels of E^c, G and the discriminators
    drit_res: int  # residual blocks in E^c and in G
    drit_down: int  # stride-2 stages of E^c (DRIT: 2); see docs/experiments.md, "Stage 2"
    drit_steps: int  # training iterations (each: two batches, all four updates)
    drit_batch: int  # images per domain batch (DRIT++'s code: 2; any size works)
    drit_lr: float
    # evaluations (notebooks 05-09)
    clf_steps: int  # iterations of the scanner classifier (FID/KID features, residual-scanner probe)
    eval_pairs: int  # M random pairs of E3 (per target) and E4 (in all) (the thesis: 5000)
    # the supervised reference (paired translator, reads only the paired split)
    paired_width: int
    paired_steps: int


PROFILES: dict[str, Profile] = {
    "smoke": Profile("smoke", image_size=48, crop=32, view=32, slices_per_volume=2, min_brain_fraction=0.6,
                     test_fraction=0.25, sim_train_subjects=6, sim_test_subjects=3, sim_slab=2,
                     sim_paired_subjects=2,
                     gmvae_width=4, gmvae_steps=40, gmvae_batch=16, checkpoint_every=20,
                     drit_width=4, drit_res=1, drit_down=1, drit_steps=20, drit_batch=4, drit_lr=2e-4,
                     clf_steps=30, eval_pairs=300, paired_width=4, paired_steps=20),
    "quick": Profile("quick", image_size=182, crop=64, view=64, slices_per_volume=4, min_brain_fraction=0.6,
                     test_fraction=0.2, sim_train_subjects=80, sim_test_subjects=16, sim_slab=3,
                     sim_paired_subjects=12,
                     gmvae_width=8, gmvae_steps=600, gmvae_batch=64, checkpoint_every=400,
                     drit_width=8, drit_res=2, drit_down=1, drit_steps=1200, drit_batch=4, drit_lr=2e-4,
                     clf_steps=250, eval_pairs=5000, paired_width=8, paired_steps=1200),
    "paper": Profile("paper", image_size=182, crop=0, view=0, slices_per_volume=3, min_brain_fraction=0.6,
                     test_fraction=0.2, sim_train_subjects=240, sim_test_subjects=40, sim_slab=3,
                     sim_paired_subjects=60,
                     gmvae_width=32, gmvae_steps=20000, gmvae_batch=64, checkpoint_every=1000,
                     drit_width=64, drit_res=3, drit_down=2, drit_steps=100000, drit_batch=2, drit_lr=1e-4,
                     clf_steps=3000, eval_pairs=5000, paired_width=32, paired_steps=10000),
}


def get_profile(name: str = "") -> Profile:
    """The profile called ``name``; empty means ``$NB_PROFILE``, then ``quick``."""
    name = name or os.environ.get("NB_PROFILE", "") or "quick"
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}: choose one of {', '.join(PROFILES)} "
                         "(papermill -p profile NAME, or NB_PROFILE=NAME)")
    return PROFILES[name]


@dataclass(frozen=True)
class Run:
    """One pipeline run: its profile, seed and folder (everything it makes lives there)."""

    profile: Profile
    seed: int
    dir: Path

    @property
    def slices(self) -> Path:
        return self.dir / "slices"

    @property
    def checkpoints(self) -> Path:
        return self.dir / "checkpoints"

    @property
    def metrics_file(self) -> Path:
        return self.dir / "metrics.json"

    @property
    def is_default(self) -> bool:
        """The run ``make run`` makes on the built-in data: ``data/runs/quick`` or ``data/runs/paper``."""
        return self.profile.name != "smoke" and self.dir == default_run_dir(self.profile.name).resolve()

    @property
    def figures(self) -> Path:
        """Where this run's figures and tables go: ``<run>/figures/``, so that no run overwrites
        another's. The default run (:attr:`is_default`) writes the repository's ``figures/``,
        the figures and tables the README cites."""
        return FIGURES if self.is_default else self.dir / "figures"

    def require(self, path: Path, notebook: str) -> Path:
        """``path`` if it exists, else a clear error naming the notebook that makes it."""
        if not Path(path).exists():
            raise FileNotFoundError(
                f"{path} is missing: run notebook {notebook} first with the same run folder "
                f"({self.dir}) and profile ({self.profile.name}).")
        return Path(path)

    def record(self, key: str, values: dict) -> dict:
        """Add this notebook's headline numbers to ``metrics.json`` under ``key``."""
        with locked(self.metrics_file):  # the pipeline's two lanes may record at the same time
            metrics = read_metrics(self.dir)
            metrics[key] = _plain(values)
            atomic_write_text(self.metrics_file, json.dumps(metrics, indent=2, sort_keys=True))
        return metrics

    def set_aside(self) -> Path | None:
        """Move the run's data set and what the notebooks made from it into
        ``<run>/superseded/<UTC time>/``, and say so: the slices, the folders of :data:`MADE` and the
        results of ``metrics.json`` (it keeps only :data:`NOT_RESULTS`). Notebook 01 calls it just
        before other slices (other volumes, their contents, another seed or profile) replace the
        run's, so that no notebook loads a model trained on other data. Nothing else is moved: the
        executed notebooks and figures, which each notebook writes anew when it runs, and whatever
        else the folder holds (a run folder may be the user's own; the names of :data:`MADE` are the
        run's). Returns that folder; None, with nothing moved, when the run has made nothing from its
        slices yet (no results, and no slices or none of :data:`MADE`)."""
        with locked(self.metrics_file):
            metrics = read_metrics(self.dir)
            kept = {k: v for k, v in metrics.items() if k in NOT_RESULTS}
            made = [self.dir / name for name in MADE if (self.dir / name).exists()]
            if metrics == kept and not (made and self.slices.exists()):  # nothing made, or a new folder's own
                return None
            stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
            to, n = self.dir / SUPERSEDED / stamp, 1
            while to.exists():
                n += 1
                to = self.dir / SUPERSEDED / f"{stamp}-{n}"
            to.mkdir(parents=True)
            print(f"The run's slices are being replaced by other ones: moving the old slices and what was made "
                  f"from them to {to}; delete that folder once you no longer need it.", flush=True)
            for p in ([self.slices] if self.slices.exists() else []) + made:
                shutil.move(p, to / p.name)  # a rename, unless p is a mount point of its own
            if metrics != kept:
                atomic_write_text(to / self.metrics_file.name, json.dumps(metrics, indent=2, sort_keys=True))
                atomic_write_text(self.metrics_file, json.dumps(kept, indent=2, sort_keys=True))
        return to


SUPERSEDED = "superseded"  # Run.set_aside's folder in a run
# what the notebooks make in a run folder from its slices besides metrics.json (set_aside)
MADE = ("checkpoints", "outputs", "harmonized", "seeds")
NOT_RESULTS = ("environment",)  # metrics.json's record of the machine (nbutils.pipeline), kept by set_aside


def setup(profile: str = "", run_dir: str = "", seed: int = 0) -> Run:
    """Resolve a notebook's parameters into a :class:`Run`, seed every RNG, make the folder."""
    prof = get_profile(profile)
    path = resolve(run_dir) if run_dir else default_run_dir(prof.name)
    path.mkdir(parents=True, exist_ok=True)
    seed_everything(seed)
    run = Run(prof, int(seed), path.resolve())
    run.figures.mkdir(parents=True, exist_ok=True)
    source = source_csv(run.dir)
    if source:  # label this run's figures by where its volumes came from
        from .plots import describe_data

        describe_data(source)
    return run


def source_csv(run_dir: str | Path) -> str:
    """The CSV of volumes a run's slices were made from (notebook 01's ``info.json``; empty before)."""
    info = resolve(run_dir) / "slices" / "info.json"
    return json.loads(info.read_text()).get("source_csv", "") if info.is_file() else ""


def default_run_dir(name: str) -> Path:
    """``data/runs/<name>``: a profile's default run folder, or a named run's (``make run RUN=name``)."""
    return DATA / "runs" / name


def resolve(path: str | Path) -> Path:
    """An absolute path; relative ones are taken from the repository root, not the working
    directory (which differs between JupyterLab, papermill and nbmake)."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else ROOT / path


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency, but keep config light
        return
    torch.manual_seed(seed)


def read_metrics(run_dir: str | Path) -> dict:
    path = Path(run_dir) / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _plain(value):
    """Make numpy scalars, arrays, paths and dataclasses JSON-serialisable."""
    if dataclasses.is_dataclass(value):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
