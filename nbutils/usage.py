"""Does a stage-2 model use what it should? Diagnostics of notebooks 03/04.

- **target sensitivity**: how much the translation of one image changes when only its target
  changes, divided by how much the same anatomy really differs between those scanners (the
  traveling subjects). 0: the generator ignores its target; about 1: it moves as far as the
  scans really differ, each scan's own noise included. Beside it the same ratio of the clean
  truths, a noise-free oracle's reading (not 1, and not a bound: :func:`target_sensitivity`).
- **code probes**: a cross-validated linear probe (folds by subject: an anatomy's slices, in every
  scanner that saw it, are held out together) that reads the scanner from the content map
  z^c (its 4 x 4 average-pooled map, a coarse spatial pattern, and, unless z^c is
  instance-normalised, each channel's spatial mean and spread, its gain and offset) and from the attribute
  code z^a that G is fed. z^c should not carry the scanner (chance), z^a should. For a model
  trained on windows (which also translates window by window) z^c is probed three times: encoded
  from the whole slice in one pass (normalised over a slice half of which is background, which G
  never reads), from the training-sized window at the slice's centre, and as G is fed it
  (``zc_fed``: every window the translation cuts, encoded and put back where it lies,
  :meth:`~nbutils.drit.Translator.content_as_fed`), with its scanner share.
- **scanner share**: the share of the variance of that same z^c summary (each feature
  standardised) that lies between the scanners that saw the same anatomy and slice (traveling
  subjects): 0 when z^c is the same whatever the scanner, 1 when only the scanner moves it; beside
  it the share of the inputs themselves, summarised the same way. On traveling subjects a linear
  probe reads any consistent difference, however small, between one anatomy's content maps (it
  is near 1 for every model here); the share says how large that difference is.
- **the probe's control**: the same z^c summary (and the inputs') with the scanner's part shrunk
  by a known factor on the traveling subjects, probed again: how small the scanner share must be
  before the probe falls to chance (:func:`probe_control`). It puts the probe's 1.00 beside what
  it would read for a content map a tenth or a hundredth as scanner-dependent.
- **discriminator accuracy**: how often D_c (on z^c) and the scanner heads of D_s1 / D_s2 (on
  real images) name the code each image was trained with, on whole slices and, for a model trained
  on windows, on the central training-sized window (``*_accuracy_window``), the kind of input they
  were trained on. D_c near chance with a probe near 1 means D_c cannot see what carries the scanner.

The learning curve (paired scores at each training snapshot) is :func:`nbutils.stage2.learning_curve`.
"""
from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pandas as pd
import torch

from .appearance import log_detail
from .clustering import beyond_chance, linear_probe, majority_chance
from .data import Slices
from .drit import Translator
from .measures import TRUTH_OF_TARGET
from .paired import traveling_pairs


def target_sensitivity(outputs: np.ndarray, test: Slices) -> dict[str, float]:
    """``outputs`` (K, N, H, W): each test image translated to each of the K targets.

    ``change`` = mean |out_b − out_b'| over images and target pairs; ``gap`` = mean |x_b − x_b'|
    over the same anatomy seen by scanners b and b' (brain mask, both); ``ratio`` = change / gap.
    ``oracle``: the ratio of the clean truths themselves, mean |clean_b − clean_b'| / gap, what a
    generator that draws each anatomy's noise-free rendering on the target reads. It is neither 1
    nor a bound: the scans' gap also holds each scan's own noise and nuisance (which raise it), and
    the clean truths' intensities need not spread between scanners as the scans' do (0.70 on the
    built-in set, 1.24 on a second simulated set). Without traveling subjects there is no gap to
    compare with: ``gap``, ``ratio`` and ``oracle`` are NaN; without a clean truth ``oracle`` is."""
    from .paired import has_traveling, traveling_pairs

    masks = np.asarray(test.masks, bool)
    k = outputs.shape[0]
    change = np.mean([np.abs(outputs[b] - outputs[c])[masks].mean() for b, c in itertools.combinations(range(k), 2)])
    nan = float("nan")
    if not has_traveling(test):
        return dict(change=float(change), gap=nan, ratio=nan, oracle=nan)
    pairs = traveling_pairs(test)
    pairs = pairs[pairs.source < pairs.target]
    apart = lambda images: np.mean([np.abs(images[s] - images[d])[masks[s] | masks[d]].mean()
                                    for s, d in zip(pairs.src, pairs.dst)])
    gap = apart(np.asarray(test.images, np.float32))
    oracle = nan if test.clean is None else apart(np.asarray(test.clean, np.float32)) / gap
    return dict(change=float(change), gap=float(gap), ratio=float(change / gap), oracle=float(oracle))


def _batches(images: np.ndarray, model: Translator, size: int = 64):
    device = next(model.parameters()).device
    for s in range(0, len(images), size):
        yield torch.from_numpy(np.asarray(images[s: s + size], np.float32)).unsqueeze(1).to(device) * 2 - 1


def summarise(maps: torch.Tensor, moments: bool = True) -> torch.Tensor:
    """(N, C, H, W) maps -> (N, 18 C): each channel's spatial mean and standard deviation, then
    its 4 x 4 average-pooled map (what the probes read). ``moments`` False: the pooled map only
    (N, 16 C), for instance-normalised maps, whose means and deviations are the same constants in
    every image up to rounding, which standardising would blow up into noise features."""
    f = maps.float()
    pooled = torch.nn.functional.adaptive_avg_pool2d(f, 4).flatten(1)
    if not moments:
        return pooled
    return torch.cat([f.flatten(2).mean(2), f.flatten(2).std(2, correction=0), pooled], 1)


def _traveling_groups(test: Slices) -> list[np.ndarray]:
    """Row positions of each anatomy and slice seen by more than one scanner (empty without
    traveling subjects)."""
    m = test.manifest.reset_index(drop=True)
    return [g for g in m.groupby(["subject", "slice_index"]).indices.values() if m["domain"].iloc[g].nunique() > 1]


def _subject_folds(test: Slices) -> np.ndarray:
    """One integer per row: its subject (all slices of a subject, and on traveling subjects one
    anatomy in every scanner, go to one fold of the probes)."""
    return pd.factorize(test.manifest["subject"])[0]


def scanner_share(features: np.ndarray, test: Slices) -> float:
    """Share of the variance of ``features`` (one row per image of ``test``; each column
    standardised) that lies within the groups of images showing one anatomy and slice in
    different scanners: 0 when the features do not depend on the scanner, 1 when only the scanner
    moves them. Only groups seen by more than one scanner count (a subject scanned twice on one
    scanner says nothing about scanners). NaN without traveling subjects."""
    groups = _traveling_groups(test)
    if not groups:
        return float("nan")
    f = np.asarray(features, np.float64)[np.concatenate(groups)]  # the rows that count, group by group
    f = (f - f.mean(0)) / np.where(f.std(0) > 0, f.std(0), 1)
    within = sum(((g - g.mean(0)) ** 2).sum() for g in np.split(f, np.cumsum([len(g) for g in groups])[:-1]))
    total = (f ** 2).sum()
    if not np.isfinite(total):
        return float("nan")
    return float(within / total) if total > 0 else 0.0


def _group_means(x: np.ndarray, groups: list[np.ndarray]) -> np.ndarray:
    """Each row of ``x`` replaced by its group's mean (rows outside the groups: themselves)."""
    mean = x.copy()
    for g in groups:
        mean[g] = x[g].mean(0)
    return mean


def source_maps(images: np.ndarray, test: Slices) -> tuple[np.ndarray, dict[str, float]]:
    """Where each source scanner is left in ``images`` (one per test slice: the inputs, or a
    method's scanner-free outputs): on the traveling subjects, each image less the mean of its
    anatomy's images over the scanners that saw it, averaged per source scanner, zero outside the
    brain masks: (K, H, W) maps, all zero when nothing depends on the source; and per scanner the
    mean |map| inside the brain. (zeros, {}) without traveling subjects."""
    k = len(test.domains)
    groups = _traveling_groups(test)
    maps = np.zeros((k, *np.asarray(test.images[0]).shape))
    if not groups:
        return maps, {}
    rows = np.concatenate(groups)
    x = np.asarray(images, np.float64)
    labels = np.asarray(test.labels)[rows]
    counts = np.bincount(labels, minlength=k)
    np.add.at(maps, labels, (x - _group_means(x, groups))[rows])
    brain = np.asarray(test.masks, bool)[rows].any(0)
    maps = np.where(brain, maps / np.maximum(counts, 1)[:, None, None], 0.0)
    return maps, {test.domains[b]: float(np.abs(maps[b][brain]).mean()) for b in range(k) if counts[b]}


SCALES = (1.0, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01, 0.0)


def probe_control(features: dict[str, np.ndarray], test: Slices, scales=SCALES) -> pd.DataFrame:
    """The probe's control: how it answers as the scanner's part of each feature set shrinks.

    On traveling subjects all that the scanner moves is each anatomy-and-slice group's deviation
    from its own mean; multiplying those deviations by ``scale`` (the group means kept) gives
    features with the same anatomy and a known, smaller scanner part: scale 1 the features as
    they are, 0 features that do not depend on the scanner, where the probe reads chance. One row
    per feature set and scale: the scanner share and the probe (folds by subject) at that scale,
    and ``chance`` (the largest scanner's share of those rows). Only rows in groups seen by more
    than one scanner are used; empty without traveling subjects."""
    groups = _traveling_groups(test)
    if not groups:
        return pd.DataFrame(columns=["code", "scale", "share", "probe", "chance"])
    rows = np.concatenate(groups)
    labels = np.asarray(test.labels)[rows]
    folds = _subject_folds(test)[rows]
    chance = majority_chance(labels)
    out = []
    for name, f in features.items():
        f = np.asarray(f, np.float64)
        mean = _group_means(f, groups)
        for scale in scales:
            shrunk = mean + scale * (f - mean)
            out.append(dict(code=name, scale=float(scale), share=scanner_share(shrunk, test),
                            probe=linear_probe(shrunk[rows], labels, groups=folds), chance=chance))
    return pd.DataFrame(out)


# a probe "at chance": within a fifth of the way from chance to 1 (0.40 for four balanced scanners, as the bar
# was first set; clustering.beyond_chance)
PROBE_SHARE = Fraction(1, 5)


def probe_bar(chance: float) -> float:
    """The z^c probe's bar: :data:`PROBE_SHARE` of the way from ``chance`` (the largest scanner's share) to 1."""
    return beyond_chance(chance, PROBE_SHARE)


def share_at_probe(control: pd.DataFrame, code: str, bar: float) -> float:
    """How small the scanner's part of ``code`` must be for the probe to fall to ``bar``: on
    ``control``'s curve, where the probe first rises above ``bar`` as the share grows (a dip above
    that crossing does not count), interpolated between the two scales around it, linearly in the
    logarithm of the share (the scales are a coarse grid: the shares of neighbouring scales differ
    4-6 fold; linearly where the smaller share is 0); the largest share if the probe never rises
    above ``bar``; NaN if it is above ``bar`` even at the smallest share."""
    c = control[control.code == code].sort_values("share")
    share, probe = c.share.to_numpy(float), c.probe.to_numpy(float)
    above = np.flatnonzero(~(probe <= bar))
    if not len(above):
        return float(share[-1]) if len(share) else float("nan")
    hi = above[0]
    if hi == 0:
        return float("nan")
    lo = hi - 1
    t = (bar - probe[lo]) / (probe[hi] - probe[lo])
    if share[lo] <= 0:
        return float(share[lo] + t * (share[hi] - share[lo]))
    return float(np.exp(np.log(share[lo]) + t * (np.log(share[hi]) - np.log(share[lo]))))


@torch.no_grad()
def codes(model: Translator, images: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Per image: z^c summarised (:func:`summarise`: its 4 x 4 average-pooled map, and each channel's mean
    and std unless z^c is instance-normalised; for a window-trained model also that
    of the central training-sized window and that of the map G is fed, window by window), the z^a G
    is fed (the posterior mean, as at inference), the training code c, and the argmax of D_c,
    D_s1, D_s2 (for a window-trained model also on that central window, as they were trained)."""
    model.eval()
    out = {k: [] for k in ("zc", "zc_window", "zc_fed", "za", "c", "dc", "ds1", "ds2", "dc_window", "ds1_window",
                           "ds2_window")}
    (th, tw), windowed = model.cfg.image_shape, tuple(model.cfg.image_shape) != model.cfg.slices
    moments = not model.cfg.content_norm
    labels = torch.from_numpy(np.array(labels, dtype=np.int64))
    start = 0
    for x in _batches(images, model):
        lab = labels[start: start + len(x)].to(x.device)
        start += len(x)
        za, c, _ = model.attributes(x, lab, sample=False)
        zc = model.encode(x, (za, c))
        out["zc"].append(summarise(zc, moments))
        if windowed:
            y0, x0 = (x.shape[-2] - th) // 2, (x.shape[-1] - tw) // 2
            corner = torch.tensor([[y0, x0]] * len(x), device=x.device, dtype=torch.float32)
            xw = x[..., y0: y0 + th, x0: x0 + tw]
            window = model.encode(xw, (za, c), corner, tuple(x.shape[-2:]))
            out["zc_window"].append(summarise(window, moments))
            out["zc_fed"].append(summarise(model.content_as_fed(x), moments))
            # the discriminators on what they were trained on: windows (D_c told where its cells lie)
            out["dc_window"].append(model.dc(window, model.content_grid(corner, window.shape[-2:])).argmax(1))
            out["ds1_window"].append(model.ds1(xw)[1].argmax(1))
            out["ds2_window"].append(model.ds2(xw)[1].argmax(1))
        out["za"].append(za.float())
        out["c"].append(c.argmax(1))
        out["dc"].append(model.dc(zc).argmax(1))
        out["ds1"].append(model.ds1(x)[1].argmax(1))
        out["ds2"].append(model.ds2(x)[1].argmax(1))
    return {k: torch.cat(v).cpu().numpy() for k, v in out.items() if v}


DETAIL_SIGMA = 16.0  # px: the log high-pass the scans' detail is read after (appearance.log_detail)
DETAIL_BOXES = (3, 7, 15)  # px: the scales of detail() (box means of these sizes)


def detail(images: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) images in [-1, 1] -> (N, 16 x 3): how much fine detail each cell of a 4 x 4 grid holds at three
    scales, the mean |x − its k x k box mean| for k in :data:`DETAIL_BOXES` over the pixels whose whole box lies in
    the head (so neither the head's outline nor the background counts; 0 for a cell without any), read after the
    log high-pass (:func:`nbutils.appearance.log_detail`, :data:`DETAIL_SIGMA` px) has taken a smooth field and a
    gain away: the strength of the edges inside the head, the noise and the sharpness, whatever the mean intensity.
    What a content map that keeps the scans' detail can pass on."""
    f = torch.nn.functional
    x, head = log_detail(images.float(), DETAIL_SIGMA), (images > -1).float()
    out = []
    for k in DETAIL_BOXES:
        inner = (f.avg_pool2d(head, k, 1, k // 2, count_include_pad=True) > 1 - 1e-6).float()
        away = (x - f.avg_pool2d(x, k, 1, k // 2)).abs() * inner
        out.append((f.adaptive_avg_pool2d(away, 4) / f.adaptive_avg_pool2d(inner, 4).clamp(min=1e-6)).flatten(1))
    return torch.cat(out, 1)


def features(model: Translator, test: Slices) -> dict[str, np.ndarray]:
    """:func:`codes` of the test split, and two readings of its images that need no model, the probe's controls:
    ``inputs``, the images summarised as z^c is (their 4 x 4 pooled map, and each image's mean and spread unless
    z^c is instance-normalised, which takes its maps' own away; as the model reads them: in [-1, 1], an affine map
    that standardising undoes), and ``inputs_detail``, their :func:`detail`."""
    c = codes(model, test.images, np.asarray(test.labels))
    read = _readings(test.images, moments=not model.cfg.content_norm)
    return c | {"inputs": read["summary"], "inputs_detail": read["detail"]}


@torch.no_grad()
def _readings(images: np.ndarray, masks: np.ndarray | None = None, size: int = 64,
              moments: bool = True) -> dict[str, np.ndarray]:
    """Images in [0, 1], read as the probes' controls read them (in [-1, 1], batch by batch): :func:`summarise`
    (``moments`` as there) and :func:`detail`. With ``masks`` each image is set to the background outside its mask and kept above it inside
    (:func:`detail` takes any pixel at the background's value for background)."""
    out = {"summary": [], "detail": []}
    for s in range(0, len(images), size):
        x = torch.from_numpy(np.asarray(images[s: s + size], np.float32)).unsqueeze(1) * 2 - 1
        if masks is not None:
            x = torch.where(torch.from_numpy(np.asarray(masks[s: s + size], bool)).unsqueeze(1), x.clamp(min=-1 + 1e-3),
                            -1.0)
        out["summary"].append(summarise(x, moments))
        out["detail"].append(detail(x))
    return {k: torch.cat(v).numpy() for k, v in out.items()}


SOURCE_PROBE_NEEDS = ("a target scanner that saw the anatomies of two or more traveling test subjects of each of two "
                      "or more source scanners, the target itself counting as one (folds by subject hold each subject "
                      "out)")


def source_probe(test: Slices, to_target: dict[str, np.ndarray]) -> pd.DataFrame:
    """Does a translation toward b still name its source a? The outputs, not a code, read by a probe as z^c is.

    For each target b: the translations toward b of every traveling test slice whose anatomy b saw (from every scanner
    that saw it, b's own included: a = b too), each set to the background outside b's brain mask of that anatomy (one
    mask per anatomy, so its outline cannot name the source), read twice: summarised (:func:`summarise`: each image's
    mean, spread and 4 x 4 pooled map) and for their :func:`detail`; a linear probe (folds by subject) predicts the source scanner from each reading. Sources
    with fewer than two subjects toward b are left out there (folds by subject need two). A translation that depends
    on the anatomy and b alone reads about chance (exactly where every source saw every anatomy), as
    ``TRUTH_OF_TARGET`` does (b's clean truth of the anatomy, the same image for every source; with the data's clean
    truths): the reference row. The source scans (identity's outputs) read what the scanners leave.
    ``to_target[method]``: (K, N, H, W) in [0, 1], every test slice toward every scanner. One row per method and the
    reference row (column ``method``): each reading's probe, and chance (the largest source's share), averaged over the
    targets; empty where no target has two or more sources each with two or more traveling subjects (anatomies that
    target also saw): :data:`SOURCE_PROBE_NEEDS`."""
    pairs = traveling_pairs(test)
    traveling = np.zeros(len(test), bool)
    traveling[np.concatenate(_traveling_groups(test))] = True
    labels, folds, masks = np.asarray(test.labels), _subject_folds(test), np.asarray(test.masks, bool)
    clean = None if test.clean is None else np.asarray(test.clean)
    sets = ({TRUTH_OF_TARGET: None} if clean is not None else {}) | dict(to_target)
    rows = {name: {"summary": [], "detail": []} for name in sets}
    chance = []
    for b, domain in enumerate(test.domains):
        p = pairs[(pairs.target == domain) & traveling[pairs.src]]
        subjects = pd.Series(folds[p.src]).groupby(labels[p.src]).nunique()
        p = p[np.isin(labels[p.src], subjects.index[subjects >= 2])]
        src, dst = p.src.to_numpy(), p.dst.to_numpy()
        if len(np.unique(labels[src])) < 2:
            continue
        chance.append(majority_chance(labels[src]))
        for name, out in sets.items():
            read = _readings(clean[dst] if out is None else np.asarray(out[b])[src], masks[dst])
            for reading, f in read.items():
                rows[name][reading].append(linear_probe(f, labels[src], groups=folds[src]))
    if not chance:  # e.g. one traveling test subject: nothing the folds by subject can read
        return pd.DataFrame(columns=["method", "summary", "detail", "chance"])
    return pd.DataFrame([{"method": name, **{k: float(np.mean(v)) for k, v in r.items()},
                          "chance": float(np.mean(chance))} for name, r in rows.items()])


def report(model: Translator, test: Slices, outputs: np.ndarray) -> dict[str, float]:
    """All diagnostics on the test split: target sensitivity of ``outputs`` (K, N, H, W), the
    probes from z^c and z^a against the scanner labels, the scanner share of z^c and of the
    inputs (NaN without traveling subjects), the discriminators' accuracy against
    the codes the images were trained with, chance (the largest scanner's share) and the z^c
    probe's bar (:func:`probe_bar`), which need no traveling subjects."""
    labels = np.asarray(test.labels)
    c = features(model, test)
    inputs = c["inputs"]
    sens = target_sensitivity(outputs, test)
    # all slices of one subject (and, traveling, of one anatomy in every scanner) in one fold
    groups = _subject_folds(test)
    probe = lambda f: linear_probe(f, labels, groups=groups)
    chance = majority_chance(labels)
    return dict(target_change=sens["change"], scanner_gap=sens["gap"], target_sensitivity=sens["ratio"],
                target_sensitivity_oracle=sens["oracle"],
                share_zc=scanner_share(c["zc"], test), share_inputs=scanner_share(inputs, test),
                probe_zc=probe(c["zc"]), probe_za=probe(c["za"]),
                probe_zc_window=probe(c["zc_window"]) if "zc_window" in c else float("nan"),
                probe_zc_fed=probe(c["zc_fed"]) if "zc_fed" in c else float("nan"),
                share_zc_fed=scanner_share(c["zc_fed"], test) if "zc_fed" in c else float("nan"),
                chance=chance, probe_bar=probe_bar(chance),
                **{f"{d}_accuracy{w}": float((c[d + w] == c["c"]).mean()) if d + w in c else float("nan")
                   for w in ("", "_window") for d in ("dc", "ds1", "ds2")})
