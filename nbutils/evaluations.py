"""The thesis's evaluations E2-E5 and E7 as tables of per-unit scores (docs/design.md, "Evaluation"), computed
from cached method outputs (:mod:`nbutils.outputs`). Every function returns a long
DataFrame with a ``method`` column and a unit id, ready for :func:`nbutils.stats.compare`.

* E2 structure: SSIM structure component between each input and its scanner-free output.
* E3 translation realism: SSIM luminance component between M random (real slice of scanner b,
  slice of another scanner translated to b) pairs, the same pairs for every method, beside
  M (real b, real b) pairs, the reference.
* E4 cross-scanner agreement: luminance SSIM between M random pairs of slices from two
  different scanners and (wherever the data have them) two different subjects, before (the
  inputs) and after (their scanner-free outputs), beside each model's contrast control
  (:func:`contrast_control`).
* E5 FID and KID in the frozen scanner classifier's feature space, with a split-half floor.
* E7 voxel intensities per scanner and their mean pairwise Wasserstein distance.
"""
from __future__ import annotations

import itertools
import warnings

import numpy as np
import pandas as pd
import torch

from .baselines import match_all, reference_quantiles
from .data import Slices
from .measures import BEFORE, FLOOR, OWN_SCANS, REAL_VS_REAL
from .methods import IDENTITY
from .metrics import Windowed, components_pairs, require_regions
from .outputs import Outputs


def _component(a: Windowed, ia, b: Windowed, ib, masks: np.ndarray, name: str) -> np.ndarray:
    require_regions(masks, len(masks), masks.shape[-2:])
    return components_pairs(a, ia, b, ib, masks, parts=(name,))[name]


def subjects(test: Slices) -> np.ndarray:
    """Each slice's subject: E2-E4's units are resampled by subject (:func:`nbutils.stats.compare`'s
    ``clusters``), since the slices of one anatomy, in every scanner, are not independent."""
    return test.manifest["subject"].astype(str).to_numpy()


def e2_structure(test: Slices, outs: dict[str, Outputs]) -> pd.DataFrame:
    images, masks = Windowed(np.asarray(test.images, np.float32)), np.asarray(test.masks, bool)
    every, subject = np.arange(len(images)), subjects(test)
    rows = [pd.DataFrame(dict(method=m, slice=every, scanner=test.manifest["domain"], subject=subject,
                              structure=_component(images, every, Windowed(o.scanner_free), every, masks, "structure")))
            for m, o in outs.items()]
    return pd.concat(rows, ignore_index=True)


def e3_pairs(labels: np.ndarray, m: int, seed: int = 0, groups: np.ndarray | None = None) -> pd.DataFrame:
    """M random (target b, real slice of b, translated slice from another scanner, second real
    slice of b) index quadruples for each target b (the thesis: M = 5000 per target). ``groups`` (one subject per slice): the translated slice and
    the second real slice come from another subject than the real slice wherever the data have
    one, as in an unpaired study; on traveling subjects a random pair would otherwise compare an
    anatomy with itself now and then (about 1 in 16 pairs with 16 test subjects), and more often
    in one row than in another."""
    rng = np.random.default_rng(seed)
    k = int(labels.max()) + 1
    by = [np.flatnonzero(labels == b) for b in range(k)]
    other = [np.flatnonzero(labels != b) for b in range(k)]
    if any(len(r) < 2 for r in by) or any(len(o) == 0 for o in other):
        raise ValueError("E3 needs at least two slices of every scanner and slices of another one")
    groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
    target = np.repeat(np.arange(k), m)
    real = np.array([rng.choice(by[b]) for b in target])
    real2 = np.array([_apart(rng, by[b][by[b] != r], r, groups) for b, r in zip(target, real)])
    source = np.array([_apart(rng, other[b], r, groups) for b, r in zip(target, real)])
    return pd.DataFrame(dict(pair=np.arange(len(target)), target=target, real=real, real2=real2, source=source))


def _apart(rng: np.random.Generator, candidates: np.ndarray, r: int, groups: np.ndarray) -> int:
    """One of ``candidates`` of another subject than slice ``r``, where there is one (else any)."""
    apart = candidates[groups[candidates] != groups[r]]
    return rng.choice(apart if len(apart) else candidates)


def e3_luminance(test: Slices, outs: dict[str, Outputs], m: int = 5000, seed: int = 0) -> pd.DataFrame:
    images = Windowed(np.asarray(test.images, np.float32), squares=False)  # luminance needs local means only
    subject = subjects(test)
    p = e3_pairs(test.labels, m, seed, groups=subject)
    mask = np.asarray(test.masks, bool)[p.real]
    name = np.asarray(test.domains)[p.target]
    # the subjects of the real slice and of the image set beside it (for the subject bootstrap)
    rows = [pd.DataFrame(dict(method=REAL_VS_REAL, pair=p.pair, target=name, subject_real=subject[p.real],
                              subject_other=subject[p.real2],
                              luminance=_component(images, p.real, images, p.real2, mask, "luminance")))]
    for meth, o in outs.items():
        luminance = np.empty(len(p))
        for b in np.unique(p.target):  # one target's translations at a time
            on_b = np.flatnonzero(p.target == b)
            fake = Windowed(np.asarray(o.to_target[b], np.float32), squares=False)
            luminance[on_b] = _component(images, p.real.to_numpy()[on_b], fake, p.source.to_numpy()[on_b], mask[on_b],
                                         "luminance")
        rows.append(pd.DataFrame(dict(method=meth, pair=p.pair, target=name, subject_real=subject[p.real],
                                      subject_other=subject[p.source], luminance=luminance)))
    return pd.concat(rows, ignore_index=True)


def e4_cross_scanner(test: Slices, outs: dict[str, Outputs], m: int = 5000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed + 1)
    labels = test.labels
    if len(np.unique(labels)) < 2:
        raise ValueError("E4 needs slices of at least two scanners")
    subject = subjects(test)
    # two scanners, and two subjects wherever the data have them, as in the thesis's unpaired data
    # (a traveling subject's own pair would compare an anatomy with itself, as E3's pairs avoid too)
    other = {b: np.flatnonzero(labels != b) for b in np.unique(labels)}
    i = rng.integers(0, len(labels), m)
    j = np.array([_apart(rng, other[labels[r]], r, subject) for r in i])
    images, masks = Windowed(np.asarray(test.images, np.float32), squares=False), np.asarray(test.masks, bool)
    mask = masks[i] & masks[j]
    pairs = dict(pair=np.arange(len(i)), subject_i=subject[i], subject_j=subject[j])
    rows = [pd.DataFrame(dict(method=BEFORE, **pairs, luminance=_component(images, i, images, j, mask, "luminance")))]
    for meth, o in outs.items():
        if meth == IDENTITY.name:
            continue  # identical to 'before'
        free = Windowed(o.scanner_free, squares=False)
        rows.append(pd.DataFrame(dict(method=meth, **pairs, luminance=_component(free, i, free, j, mask, "luminance"))))
    return pd.concat(rows, ignore_index=True)


def contrast_control(test: Slices, outputs: np.ndarray) -> np.ndarray:
    """The inputs, each histogram-matched inside its brain mask onto the pooled in-brain intensities
    of ``outputs``: harmonization by intensities alone, at the outputs' contrast. E4 pairs
    different anatomies, so its luminance term falls as tissue contrast rises whatever the scanners
    (local means of different tissues differ more): an output with more contrast than the inputs
    can score below them without keeping more of the scanner. Its E4 is read against this control."""
    images, masks = np.asarray(test.images, np.float32), np.asarray(test.masks, bool)
    return match_all(images, masks, reference_quantiles(outputs, masks))


class _Given(torch.nn.Module):
    """A torchmetrics feature extractor for features already computed (identity)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x):
        return x


@torch.no_grad()
def embed(features: torch.nn.Module, images: np.ndarray, batch_size: int = 64) -> torch.Tensor:
    """(N, D) float64 features of (N, H, W) [0, 1] images, computed in batches (whole 1 mm slices:
    the soft histogram holds H x W x bins values per image)."""
    out = [features(torch.from_numpy(np.asarray(images[s: s + batch_size], np.float32)).unsqueeze(1)).double()
           for s in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, features.num_features, dtype=torch.float64)


def fid_kid(features: torch.nn.Module, real, fake, subset: int = 50, seed: int = 0) -> dict[str, float]:
    """FID and KID (mean and sd over subsets) between two (N, H, W) [0, 1] image sets in the
    feature space of ``features`` (a torchmetrics custom extractor); either set may be given as
    its (N, D) features already (:func:`embed`), which :func:`e5_table` does to embed each real
    set once."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    real, fake = (x if torch.is_tensor(x) else embed(features, x) for x in (real, fake))
    n = min(len(real), len(fake))
    if n < 2:
        raise ValueError(f"FID/KID need at least two images on each side, got {len(real)} and {len(fake)}")
    torch.manual_seed(seed)
    given = _Given(features.num_features)
    fid = FrechetInceptionDistance(feature=given, normalize=True)
    with warnings.catch_warnings():  # "KID keeps every feature in memory": ours are small
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=given, normalize=True, subsets=50, subset_size=min(subset, n))
    for metric in (fid, kid):
        metric.update(real, real=True)
        metric.update(fake, real=False)
    kid_mean, kid_sd = kid.compute()
    return dict(fid=float(fid.compute()), kid=float(kid_mean), kid_sd=float(kid_sd), n_real=len(real), n_fake=len(fake))


def e5_table(features: torch.nn.Module, train: Slices, test: Slices, outs: dict[str, Outputs],
             seed: int = 0, floor_draws: int = 5) -> pd.DataFrame:
    """E5 per target scanner b and method: FID and KID between the real training slices of b and
    every test slice of another scanner translated to b, beside two controls: the split-half floor
    of the real set (method :data:`~nbutils.measures.FLOOR`: b's training slices split into two halves
    by subject, which the feature network was trained on; the mean over up to ``floor_draws``
    different splits (:func:`floor_splits`), whose FIDs' spread ``fid_draw_sd`` shows how much one
    draw of anatomies moves these distances; NaN with a single split; its ``kid_sd`` is the mean of
    the draws' spreads over KID's subsets) and b's own real test slices against its training slices
    (:data:`~nbutils.measures.OWN_SCANS`: unseen images of b, as a perfect translation of the test
    anatomies would be; fewer images than the translations, one scanner's share against the other
    scanners', so its FID carries more small-sample bias; KID does not). ``enough samples`` says
    whether both sets hold at least twice the feature dimension (below it FID's covariance is
    poorly estimated)."""
    rows = []
    for b, name in enumerate(test.domains):
        real = embed(features, np.asarray(train.domain(b)[0]))
        others = test.labels != b
        splits = floor_splits(subjects(train)[train.labels == b], floor_draws, seed)
        if splits:
            draws = pd.DataFrame([fid_kid(features, real[first], real[second], seed=seed) for first, second in splits])
            floor = draws.mean().to_dict() | draws[["n_real", "n_fake"]].min().to_dict()  # the smallest draw's sizes
            spread = draws["fid"].std() if len(draws) > 1 else np.nan
        else:
            warnings.warn(f"E5: {name}'s training slices are too few to split in two halves of 2 or more: no floor")
            floor, spread = dict(fid=np.nan, kid=np.nan, kid_sd=np.nan, n_real=0, n_fake=0), np.nan
        rows.append(dict(target=name, method=FLOOR, **floor, fid_draw_sd=spread))
        if (test.labels == b).sum() >= 2:
            own = np.asarray(test.images)[np.flatnonzero(test.labels == b)]
            rows.append(dict(target=name, method=OWN_SCANS, **fid_kid(features, real, own, seed=seed)))
        rows += [dict(target=name, method=method, **fid_kid(features, real, o.to_target[b][others], seed=seed))
                 for method, o in outs.items()]
    table = pd.DataFrame(rows)
    return table.assign(**{"enough samples": table[["n_real", "n_fake"]].min(axis=1) >= 2 * features.num_features})


def split_half(images: np.ndarray, groups: np.ndarray | None = None, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """Two random halves of a set of real images: their FID/KID is the floor a perfect method
    would reach with samples this small. With ``groups`` (each image's subject), whole subjects
    go to one half or the other (half of them each, an odd one left out), so that the halves, like
    a method's translations against the real set, show different anatomies, not neighbouring
    slices of one. With fewer than two subjects, the slices are split one by one, with a warning
    (the floor is then lower than a perfect method's)."""
    first, second = _halves(_split_groups(groups, len(images)), seed)
    return images[first], images[second]


def floor_splits(groups: np.ndarray, draws: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Up to ``draws`` different subject splits of a real set (:func:`split_half`'s, as index arrays,
    the larger half first), drawn with seeds ``(seed, k)``: a split and its swap are one split, so a
    scanner of two subjects has one, of three or four subjects three. A split with a half of fewer
    than two images, which FID/KID cannot compare, is left out (none may remain)."""
    if draws < 1:
        raise ValueError(f"the floor needs at least one split, got draws={draws}")
    groups = _split_groups(groups, len(groups))
    seen, splits = set(), []
    for k in range(20 * draws):
        pair = sorted(_halves(groups, (seed, k)), key=len, reverse=True)
        key = frozenset(tuple(p) for p in pair)
        if key not in seen and len(pair[1]) >= 2:
            splits.append(tuple(pair))
        seen.add(key)
        if len(splits) == draws:
            break
    return splits


def _split_groups(groups: np.ndarray | None, n: int) -> np.ndarray:
    """Each image's group for :func:`_halves`: its subject, or itself (no subjects, or only one: then
    with a warning, as the halves share an anatomy)."""
    if groups is not None and len(np.unique(groups)) < 2:
        warnings.warn("the split-half floor's real set holds one subject: its halves are split slice by slice, "
                      "so they share an anatomy and the floor reads lower than a perfect method would")
        groups = None
    return np.arange(n) if groups is None else np.asarray(groups)


def _halves(groups: np.ndarray, seed) -> tuple[np.ndarray, np.ndarray]:
    """The indices of two halves of the groups (an odd one left out)."""
    names = np.random.default_rng(seed).permutation(np.unique(groups))
    half = len(names) // 2
    return np.flatnonzero(np.isin(groups, names[:half])), np.flatnonzero(np.isin(groups, names[half:2 * half]))


def e7_intensities(test: Slices, outs: dict[str, Outputs], per_scanner: int = 20000, seed: int = 0):
    """In-brain voxel intensities of the scanner-free outputs, per source scanner (a sample of
    ``per_scanner`` each: the same voxels for every method), and per method the mean and largest
    pairwise 1-Wasserstein distance between scanners (the inputs: method 'identity') beside its
    ``sampling_floor``: the mean over scanners of the distance between that sample and a second,
    disjoint one of the same scanner's voxels, what samples of this size read where the
    distributions are one."""
    from scipy.stats import wasserstein_distance

    rng = np.random.default_rng(seed)
    masks = np.asarray(test.masks, bool)
    picks = {}  # per scanner: the sampled voxels and a disjoint second sample (when there are enough)
    for b, name in enumerate(test.domains):
        n = int(masks[test.labels == b].sum())
        order = rng.permutation(n)
        size = min(per_scanner, n)
        picks[name] = order[:size], order[size: 2 * size] if n >= 2 * size else None
    values, rows = {}, []
    for meth, o in outs.items():
        values[meth], floors = {}, []
        for b, name in enumerate(test.domains):
            v = o.scanner_free[test.labels == b][masks[test.labels == b]]
            first, second = picks[name]
            values[meth][name] = v[first]
            if second is not None:
                floors.append(wasserstein_distance(v[first], v[second]))
        dists = [wasserstein_distance(values[meth][a], values[meth][b])
                 for a, b in itertools.combinations(test.domains, 2)]
        rows.append(dict(method=meth, mean_pairwise_wasserstein=float(np.mean(dists)),
                         max_pairwise_wasserstein=float(np.max(dists)),
                         sampling_floor=float(np.mean(floors)) if floors else float("nan")))
    return values, pd.DataFrame(rows)
