"""Every method's harmonized slices, computed once per run and cached for notebooks 05-09.

For a split (test or train) and each method, two arrays:

* ``scanner_free`` (N, H, W): the slice mapped to the common appearance (GMM-DRIT and DRIT++:
  z^a ~ N(0, I) from a fixed seed, c = 0; histogram matching: matched to the pooled histogram
  of every training scanner; identity: the input);
* ``to_target`` (K, N, H, W): the slice translated to each scanner (the models:
  reference-guided by training slices of the target; histogram matching: matched to the
  target's training histogram; identity: the input).

The cache lives in ``<run>/outputs/`` and is rebuilt when a model checkpoint is newer than it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from . import baselines, drit, stage2
from .config import Run
from .data import Slices
from .harmonize import Harmonizer
from .io import atomic_path

# method -> (checkpoint, notebook that makes it); the models first
MODELS = {"GMM-DRIT": ("gmm-drit.pt", "03_gmmdrit_training"), "DRIT++": ("dritpp.pt", "04_dritpp_baseline")}
BASELINES = ("histogram matching", "identity")
METHODS = (*MODELS, *BASELINES)


@dataclass
class Outputs:
    scanner_free: np.ndarray  # (N, H, W) float32 in [0, 1]
    to_target: np.ndarray  # (K, N, H, W)


def _stack(frames: list[np.ndarray], images: np.ndarray) -> np.ndarray:
    return np.stack(frames) if frames else np.zeros((0, *images.shape), np.float32)


def _model_outputs(model, images, train: Slices, targets: range, seed: int, desc: str) -> Outputs:
    harm = Harmonizer(model)
    codes, refs = stage2.scanner_codes(model, train), stage2.references(train, seed=seed)
    to = [stage2.to_scanner(harm, images, codes, refs, b)
          for b in tqdm(targets, desc=f"{desc}: to each scanner", leave=False)]
    return Outputs(harm.scanner_free(images, seed=seed), _stack(to, images))


def _histogram_outputs(images, masks, train: Slices, targets: range) -> Outputs:
    to = baselines.to_every_scanner(images, masks, train) if len(targets) else _stack([], images)
    pooled = baselines.reference_quantiles(train.images, train.masks)
    return Outputs(baselines.match_all(images, masks, pooled), to)


def method_outputs(run: Run, split: Slices, split_name: str, train: Slices, targets: bool = True,
                   seed: int = 0, progress: bool = True) -> dict[str, Outputs]:
    """``{method: Outputs}`` for every method of :data:`METHODS`, from the cache when it is up to date."""
    images = np.asarray(split.images, np.float32)
    masks = np.asarray(split.masks, bool)
    folder = run.dir / "outputs"
    folder.mkdir(exist_ok=True)
    k = len(train.domains)
    wanted = range(k if targets else 0)
    out = {}
    for method in tqdm(METHODS, desc=f"harmonizing the {split_name} split", disable=not progress):
        if method == "identity":
            out[method] = Outputs(images, np.broadcast_to(images, (len(wanted), *images.shape)))
            continue
        cache = folder / f"{split_name}_{method.replace(' ', '-').replace('+', 'p').lower()}.npz"
        source = run.checkpoints / MODELS[method][0] if method in MODELS else None
        if method in MODELS:
            run.require(source, MODELS[method][1])
        fresh = cache.exists() and (source is None or cache.stat().st_mtime > source.stat().st_mtime)
        if fresh:
            with np.load(cache) as z:
                if z["to_target"].shape[0] > 0 or not targets:
                    out[method] = Outputs(z["scanner_free"].astype(np.float32), z["to_target"].astype(np.float32))
                    continue
        if method in MODELS:
            result = _model_outputs(drit.from_checkpoint(source), images, train, wanted, seed, method)
        else:
            result = _histogram_outputs(images, masks, train, wanted)
        with atomic_path(cache) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, scanner_free=result.scanner_free.astype(np.float16),
                         to_target=result.to_target.astype(np.float16))
        out[method] = result
    return out


def evaluation_data(run: Run, targets: bool = True, progress: bool = True):
    """What notebooks 05-09 start from: (train split, test split, ``{method: Outputs}`` of the test split)."""
    from .data import load_slices

    slices = run.require(run.slices / "manifest.csv", "01_data_slicing").parent
    train, test = load_slices(slices, "train"), load_slices(slices, "test")
    return train, test, method_outputs(run, test, "test", train, targets, run.seed, progress)
