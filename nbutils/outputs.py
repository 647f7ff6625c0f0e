"""Every method's harmonized slices, computed once per run and cached for notebooks 05-09.

For a split (test or train) and each method, two arrays:

* ``scanner_free`` (N, H, W): the slice mapped to the common appearance (GMM-DRIT and DRIT++:
  z^a ~ N(0, I) from a fixed seed, c = 0; histogram matching: matched to the pooled histogram
  of every training scanner; identity: the input);
* ``to_target`` (K, N, H, W): the slice translated to each scanner (the models:
  reference-guided by training slices of the target; histogram matching: matched to the
  target's training histogram; identity: the input).

The cache lives in ``<run>/outputs/``. Each cached file records what it was computed from (the
model's checkpoint, every file of the run's slices and the seed, by size and modification time, and
the version of the code that makes them, ``MADE_BY``) and is recomputed when any of them changed:
retraining a model, slicing the data again or a new way of making them. A cached file
is checked and made under a lock (``io.locked``): a process that wants outputs another one is making
(``make run``'s lanes) waits for them and reads them instead of making them again.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import baselines, methods
from .config import Run
from .data import Slices, array_files
from .data import for_run as slices_for_run
from .harmonize import Harmonizer
from .io import atomic_path, file_stamp, locked


@dataclass
class Outputs:
    scanner_free: np.ndarray  # (N, H, W) float32 in [0, 1]
    to_target: np.ndarray  # (K, N, H, W)
    inputs: str = ""  # what they were made from (inputs_stamp); "" for identity's and outputs not cached


def _model_outputs(harm: Harmonizer, images, targets: range, seed: int, desc: str) -> Outputs:
    made = harm.outputs(images, seed, targets=len(targets) > 0, desc=f"{desc}: scanner-free and to each scanner")
    return Outputs(made["scanner-free"], made["reference-guided"])


def _histogram_outputs(images, masks, train: Slices, targets: range) -> Outputs:
    to = baselines.to_every_scanner(images, masks, train) if len(targets) else np.zeros((0, *images.shape), np.float32)
    pooled = baselines.reference_quantiles(train.images, train.masks)
    return Outputs(baselines.match_all(images, masks, pooled), to)


# how the outputs are made from their inputs: raised when that changes, so that caches made before are made
# again (2: GMM-DRIT's target codes matched to the scanners one to one, gmvae.scanner_components)
MADE_BY = 2


def checkpoint_id(path: Path) -> str:
    """A checkpoint file as its name, size and modification time: another training gives another id."""
    return f"{path.name} {file_stamp(path)}"


def models_scored(run: Run) -> dict[str, str]:
    """The stage-2 checkpoints a notebook's scores come from (:func:`checkpoint_id`, as notebooks 03/04
    record theirs under ``checkpoint``), for notebooks 05-09 to record beside their scores:
    :func:`nbutils.report.stale_sections` then finds scores made from other models."""
    files = {m.name: run.checkpoints / m.checkpoint() for m in methods.MODELS}
    return {name: checkpoint_id(f) for name, f in files.items() if f.exists()}


def inputs_stamp(run: Run, method: methods.Method) -> str:
    """What ``method``'s outputs are computed from, as a string that changes when any of it
    changes: the seed, the size and modification time of the run's slice arrays
    (:func:`nbutils.data.array_files`) and (models) of the checkpoint, and :data:`MADE_BY`."""
    files = array_files(run.slices)
    if method.is_model:
        files.append(run.checkpoints / method.checkpoint())
    stat = {}
    for f in files:
        try:
            s = f.stat()  # one call: size and time of the same version of the file
        except FileNotFoundError:
            continue
        stat[str(f.relative_to(run.dir))] = [s.st_size, s.st_mtime_ns]
    return json.dumps(dict(seed=run.seed, files=stat, made_by=MADE_BY), sort_keys=True)


def _cached(cache: Path, stamp: str, targets: bool) -> Outputs | None:
    if not cache.exists():
        return None
    with np.load(cache) as z:
        if "inputs" not in z or str(z["inputs"]) != stamp or (targets and z["to_target"].shape[0] == 0):
            return None
        return Outputs(z["scanner_free"].astype(np.float32), z["to_target"].astype(np.float32), stamp)


def method_outputs(run: Run, split: Slices, split_name: str, train: Slices, targets: bool = True,
                   progress: bool = True) -> dict[str, Outputs]:
    """``{method name: Outputs}`` for every method of :data:`nbutils.methods.COMPARED`, from the
    cache when it is up to date (waiting for another process that is making them)."""
    images = np.asarray(split.images, np.float32)
    masks = np.asarray(split.masks, bool)
    wanted = range(len(train.domains) if targets else 0)
    out = {}
    for method in tqdm(methods.COMPARED, desc=f"harmonizing the {split_name} split", disable=not progress):
        if method == methods.IDENTITY:
            out[method.name] = Outputs(images, np.broadcast_to(images, (len(wanted), *images.shape)))
            continue
        cache = _cache_path(run, split_name, method)
        if method.is_model:
            run.require(run.checkpoints / method.checkpoint(), method.notebook)
        with locked(cache):  # another process making them: wait, then read them
            stamp = inputs_stamp(run, method)
            result = _cached(cache, stamp, targets)
            if result is None:
                if method.is_model:
                    result = _model_outputs(Harmonizer.from_run(run, method), images, wanted, run.seed, method.name)
                else:
                    result = _histogram_outputs(images, masks, train, wanted)
                result = _store(cache, stamp, result)
        out[method.name] = result
    return out


def _cache_path(run: Run, split_name: str, method: methods.Method) -> Path:
    return run.dir / "outputs" / f"{split_name}_{method.slug}.npz"


def _store(cache: Path, stamp: str, result: Outputs) -> Outputs:
    """Write ``result`` to ``cache`` (in float16); return what a reader of the cache gets, so that
    what :func:`method_outputs` returns does not depend on who made the outputs."""
    cache.parent.mkdir(exist_ok=True)
    stored = Outputs(result.scanner_free.astype(np.float16), result.to_target.astype(np.float16))
    with atomic_path(cache) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, scanner_free=stored.scanner_free, to_target=stored.to_target, inputs=np.array(stamp))
    return Outputs(stored.scanner_free.astype(np.float32), stored.to_target.astype(np.float32), stamp)


def remember(run: Run, method: methods.Method, split_name: str, result: Outputs) -> None:
    """Cache ``result``: the outputs of the run's trained ``method`` (its checkpoint) on the split
    ``split_name``, made as :func:`method_outputs` makes them (the run's training slices as
    references, the run's seed, on the CPU), from the inputs ``result.inputs`` (:func:`inputs_stamp`,
    taken when the model and slices were loaded, so that what changed on disk since is not taken
    for what made them). Notebooks 03/04 make exactly these to score their model on traveling
    subjects; kept, notebooks 05-09 do not translate the test split again."""
    if not result.inputs:
        raise ValueError("outputs to cache must say what they were made from (Outputs.inputs)")
    cache = _cache_path(run, split_name, method)
    with locked(cache):
        _store(cache, result.inputs, result)


def evaluation_data(run: Run, targets: bool = True, progress: bool = True):
    """What notebooks 05-09 start from: (train split, test split, ``{method: Outputs}`` of the test split),
    said in a line (``progress``)."""
    train, test = slices_for_run(run, "train"), slices_for_run(run, "test")
    outs = method_outputs(run, test, "test", train, targets, progress)
    if progress:
        print(f"profile {run.profile.name}: {len(test)} test slices of {len(test.domains)} scanners; "
              f"methods: {', '.join(outs)}")
    return train, test, outs
