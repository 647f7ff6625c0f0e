"""The yardstick: scoring translations on traveling subjects, each score beside its ceiling
and its control.

In a traveling-subject split the same anatomy is seen by several scanners. A translation of
the source slice (scanner a) towards scanner b is scored inside the brain mask (SSIM, PSNR,
MAE) against two references of the same anatomy:

* **target scan** — what scanner b actually acquired, as real traveling-subject studies score
  harmonization. For a == b the target scan would be the input itself, so the *rescan* (the
  same anatomy on b again, fresh nuisance) takes its place;
* **clean truth** — b's clean rendering (its contrast curve only), which only the built-in
  simulated set has.

Neither can be reached exactly, so each has a ceiling, listed as a pseudo-method:

* ``RESCAN_CEILING`` — b's scan against b's rescan: what a perfect translator, whose output
  is just another acquisition on b, scores against the target scan;
* ``SCAN_CEILING`` — b's own scan against b's clean truth: what that perfect translator
  scores against the clean truth.

Scanner-free outputs are scored by *agreement*: the outputs of one anatomy from two scanners
should be the same image. Blurring alone raises agreement (it removes noise and artefacts),
so every agreement has a **blur control** beside it: the inputs smoothed to the outputs'
effective resolution (:func:`nbutils.metrics.effective_blur`). A harmonizer whose agreement
does not beat its blur control has not harmonized.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.ndimage import gaussian_filter
from tqdm.auto import tqdm

from . import metrics
from .baselines import histogram_match, reference_quantiles
from .data import Slices
from .parallel import thread_map
from .stats import bootstrap_mean

TARGET_SCAN, CLEAN_TRUTH = "target scan", "clean truth"
REFERENCES = (TARGET_SCAN, CLEAN_TRUTH)
RESCAN_CEILING = "ceiling: b rescanned"
SCAN_CEILING = "ceiling: b's own scan"
CEILINGS = {TARGET_SCAN: RESCAN_CEILING, CLEAN_TRUTH: SCAN_CEILING}
ORACLE = "global-remap oracle"
MEASURES = ("ssim", "psnr", "mae")
HIGHER_IS_BETTER = {"ssim": True, "psnr": True, "mae": False}


def has_traveling(test: Slices) -> bool:
    """Whether some anatomy of ``test`` is seen by two scanners (what paired scoring needs)."""
    m = test.manifest
    return bool((m.groupby(["subject", "slice_index"])["domain"].nunique() > 1).any())


def traveling_pairs(test: Slices) -> pd.DataFrame:
    """Every (source row, target row) pair showing the same anatomy and slice in two scanners,
    a == b included (then src == dst). Columns: src, dst, source, target."""
    if not has_traveling(test):
        raise ValueError("no anatomy of this split is seen by two scanners: paired scoring needs traveling "
                         "subjects (the built-in simulated test split, or a CSV whose subjects were scanned "
                         "on several scanners).")
    m = test.manifest.reset_index(drop=True).assign(row=lambda d: d.index)
    pairs = m.merge(m, on=["subject", "slice_index"], suffixes=("_src", "_dst"))
    return pd.DataFrame({"src": pairs["row_src"], "dst": pairs["row_dst"],
                         "source": pairs["domain_src"], "target": pairs["domain_dst"]}).reset_index(drop=True)


def _scores(out: metrics.Windowed, src: np.ndarray, ref: metrics.Windowed, dst: np.ndarray,
            masks: np.ndarray) -> dict[str, np.ndarray]:
    """SSIM, PSNR and MAE of images ``src`` of ``out`` against images ``dst`` of ``ref`` inside
    ``masks`` (one per pair)."""
    pairwise = lambda f: np.array([f(out.x[i], ref.x[j], m) for i, j, m in zip(src, dst, masks)])
    return dict(ssim=metrics.ssim_pairs(out, src, ref, dst, masks), psnr=pairwise(metrics.psnr),
                mae=pairwise(metrics.mae))


def score_outputs(test: Slices, to_target: dict[str, np.ndarray], ceilings: bool = True,
                  progress: bool = True) -> pd.DataFrame:
    """Score outputs computed beforehand: ``to_target[method]`` is a (K, N, H, W) array, the
    translation of every test slice to every scanner. One row per (method, pair, reference):
    method, source, target, reference, ssim, psnr, mae; with ``ceilings``, the two ceilings
    as pseudo-methods (each scored against its own reference only).

    A translation of row src towards row dst's scanner b is scored against dst's scan (for a ≠ b;
    for a == b its rescan) and dst's clean truth, where the data have them. Target by target,
    each image's local statistics are computed once for all its pairs (:class:`nbutils.metrics.Windowed`)."""
    pairs = traveling_pairs(test)
    src, dst = pairs["src"].to_numpy(), pairs["dst"].to_numpy()
    target = np.array([test.domains.index(t) for t in pairs["target"]])
    same = src == dst
    masks = np.asarray(test.masks, bool)
    images = {k: v for k, v in (("scan", test.images), ("rescan", test.rescan), ("clean", test.clean)) if v is not None}
    refs = [(name, applies, k) for name, applies, k in ((TARGET_SCAN, ~same, "scan"), (TARGET_SCAN, same, "rescan"),
                                                        (CLEAN_TRUTH, np.ones(len(pairs), bool), "clean")) if k in images]
    ceiling_refs = [(c, name, k) for c, name, k in ((RESCAN_CEILING, TARGET_SCAN, "rescan"),
                                                    (SCAN_CEILING, CLEAN_TRUTH, "clean")) if ceilings and k in images]
    found = {}  # (method, reference) -> {measure: one value per pair, "scored": whether the pair has that reference}

    def score(key, rows, out, out_rows, ref, ref_rows):
        values = found.setdefault(key, {m: np.full(len(pairs), np.nan) for m in MEASURES}
                                  | {"scored": np.zeros(len(pairs), bool)})
        for m, v in _scores(out, out_rows[rows], ref, ref_rows[rows], masks[dst[rows]]).items():
            values[m][rows] = v
        values["scored"][rows] = True

    for b in tqdm(np.unique(target), desc="scoring, target by target", disable=not progress):
        on_b = target == b
        rows_b = np.unique(dst[on_b])  # scanner b's slices: every reference of a translation to b is one of them
        at = np.zeros(len(test), int)
        at[rows_b] = np.arange(len(rows_b))
        at = at[dst]  # each pair's reference among them
        windowed = {k: metrics.Windowed(np.asarray(v[rows_b], np.float32)) for k, v in images.items()}
        for name, out in to_target.items():
            w_out = metrics.Windowed(np.asarray(out[b], np.float32))
            for ref_name, applies, k in refs:
                score((name, ref_name), np.flatnonzero(applies & on_b), w_out, src, windowed[k], at)
        for c, ref_name, k in ceiling_refs:  # b's scan against b's rescan and against b's clean truth
            score((c, ref_name), np.flatnonzero(on_b), windowed["scan"], at, windowed[k], at)
    rows = []
    for k, p in enumerate(pairs.itertuples()):
        key = dict(source=p.source, target=p.target)
        for name in list(to_target) + [c for c, _, _ in ceiling_refs]:
            rows += [dict(method=name, **key, reference=ref_name, **{m: float(v[m][k]) for m in MEASURES})
                     for ref_name in REFERENCES if (v := found.get((name, ref_name))) is not None and v["scored"][k]]
    return pd.DataFrame(rows)


def oracle_outputs(test: Slices) -> np.ndarray:
    """The global-remap oracle, (K, N, H, W): each slice histogram-matched to the very clean truth
    of its anatomy on the target scanner, the best any global intensity remap could do against
    the clean truth. It *cheats* (it reads the truth); what it leaves is the scanners' spatial part."""
    if test.clean is None:
        raise ValueError("the global-remap oracle needs the clean truth (the built-in simulated test split)")
    images, masks = np.asarray(test.images, np.float32), np.asarray(test.masks, bool)
    out = np.repeat(images[None], len(test.domains), axis=0)
    for p in traveling_pairs(test).itertuples():
        truth, mask = np.asarray(test.clean[p.dst], np.float32), masks[p.dst]
        out[test.domains.index(p.target), p.src] = histogram_match(images[p.src], masks[p.src],
                                                                   reference_quantiles(truth, mask))
    return out


def smooth_field(image: np.ndarray, truth: np.ndarray, mask: np.ndarray, order: int = 3,
                 tone_bins: int = 0) -> np.ndarray:
    """The smooth multiplicative field, exp of a polynomial of ``order`` in the pixel coordinates
    (order 0: a global gain), that best maps ``image`` onto ``truth`` inside ``mask``: least squares
    on the log ratio where both are above a few % of the range. With ``tone_bins`` the fit also
    has a free level per quantile bin of the truth's intensity (a contrast curve, fitted jointly
    and left out of the field), so that a contrast unlike the truth's is not read as a field (a
    field returned so is known up to its gain). An oracle: it reads the truth."""
    h, w = image.shape
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    basis = np.stack([xx**i * yy**j for i in range(order + 1) for j in range(order + 1 - i)], -1)
    ok = np.asarray(mask, bool) & (truth > 0.05) & (image > 0.02)
    if ok.sum() < basis.shape[-1] + tone_bins:
        return np.ones_like(image, np.float64)
    design = basis[ok]
    if tone_bins:
        edges = np.quantile(truth[ok], np.linspace(0, 1, tone_bins + 1)[1:-1])
        design = np.concatenate([design, np.eye(tone_bins)[np.searchsorted(edges, truth[ok])]], 1)
    coef, *_ = np.linalg.lstsq(design, np.log(image[ok] / truth[ok]), rcond=None)
    return np.exp(basis @ coef[:basis.shape[-1]])


FIELD_ORDERS = (0, 1, 3)


def _random_cross_pairs(test: Slices, n_pairs: int, seed: int, what: str) -> pd.DataFrame:
    """``n_pairs`` random cross-scanner pairs (a ≠ b) of :func:`traveling_pairs`, in their order;
    ``what`` needs the clean truth, which only the built-in simulated test split has."""
    if test.clean is None:
        raise ValueError(f"{what} needs the clean truth (the built-in simulated test split)")
    pairs = traveling_pairs(test)
    pairs = pairs[pairs["source"] != pairs["target"]]
    return pairs.iloc[np.sort(np.random.default_rng(seed).choice(len(pairs), min(n_pairs, len(pairs)), replace=False))]


def field_out(order: int) -> str:
    """:func:`field_gap`'s column of the PSNR with the field of ``order`` divided out."""
    return f"field of order {order} divided out"


def field_gap(test: Slices, to_target: dict[str, np.ndarray], orders=FIELD_ORDERS, n_pairs: int = 200,
              seed: int = 0) -> pd.DataFrame:
    """How much of each method's PSNR against the clean truth is lost to a smooth multiplicative
    field: mean PSNR of ``n_pairs`` random cross-scanner translations (a ≠ b, the same pairs for
    every method) as made, and after dividing each by its :func:`smooth_field` of each order; the
    target scan itself (b's own scan, the ceiling) beside them. The simulated clean truth is a
    scanner's contrast curve without its coil field, which its scans have: a method that draws the
    target's field loses PSNR against the truth that this oracle gives back."""
    pairs = _random_cross_pairs(test, n_pairs, seed, "the field gap")
    masks = np.asarray(test.masks, bool)
    candidates = {name: lambda p, out=out: out[test.domains.index(p.target), p.src] for name, out in to_target.items()}
    candidates[SCAN_CEILING] = lambda p: test.images[p.dst]
    rows = []
    for name, made in candidates.items():
        values = {"as made": [], **{field_out(k): [] for k in orders}}
        for p in pairs.itertuples():
            image = np.asarray(made(p), np.float64)
            truth, mask = np.asarray(test.clean[p.dst], np.float64), masks[p.dst]
            values["as made"].append(metrics.psnr(image, truth, mask))
            for k in orders:
                values[field_out(k)].append(
                    metrics.psnr(image / smooth_field(image, truth, mask, k), truth, mask))
        rows.append({"method": name} | {k: float(np.mean(v)) for k, v in values.items()})
    return pd.DataFrame(rows)


OWN_SCAN = "b's own scan"


def field_transfer(test: Slices, to_target: dict[str, np.ndarray], order: int = 3, tone_bins: int = 16,
                   n_pairs: int = 200, seed: int = 0, sigma: float = 2.0) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Whose coil field does a translation a → b carry, b's or a's? On ``n_pairs`` random
    cross-scanner pairs (the same for every method), each translation's log :func:`smooth_field`
    against b's clean truth (order ``order``, fitted jointly with a contrast curve of ``tone_bins``
    levels, so that a contrast unlike the truth's is not read as a field) is compared inside the
    brain with the log field of b's own scan against that truth (the target's field) and of a's
    scan against a's truth (the source's): the RMS of the difference less its mean (the shape; a
    gain belongs to the contrast curve), against b's and against a's, and the share of pairs whose
    field is nearer b's than a's (a tie counts as a's; an output with no field is nearer the weaker
    of the two, 0.5 on average over pairs drawn both ways). b's rescan (another acquisition on b, with its own
    random field strength and b's blur and artefacts, which bias the fit as they do the scan's) is
    the ceiling. Images and truth are smoothed inside the brain (Gaussian ``sigma`` pixels) before
    the fit, so that noise biases it less. Log units: 0.1 is about 10 % of the intensity. An oracle
    read of the simulation: the clean truth has no field.

    Also returns each method's log field, less its mean in the brain, averaged per target (K, H,
    W; NaN where no pair's brain reaches), with :data:`OWN_SCAN`'s first."""
    pairs = _random_cross_pairs(test, n_pairs, seed, "the field transfer")
    masks = np.asarray(test.masks, bool)
    k, shape = len(test.domains), masks.shape[1:]

    def log_field(image, row):
        weight = np.maximum(gaussian_filter(masks[row].astype(np.float64), sigma), 1e-6)
        smooth = lambda x: gaussian_filter(np.asarray(x, np.float64) * masks[row], sigma) / weight
        return np.log(smooth_field(smooth(image), smooth(test.clean[row]), masks[row], order, tone_bins))

    own = {row: log_field(test.images[row], row) for row in np.unique(pairs[["src", "dst"]].to_numpy())}
    candidates = {name: lambda p, out=out: out[test.domains.index(p.target), p.src] for name, out in to_target.items()}
    if test.rescan is not None:
        candidates[RESCAN_CEILING] = lambda p: test.rescan[p.dst]
    rows, fields = [], {}
    for name in (OWN_SCAN, *candidates):  # b's own scan: for the mean fields only
        to_b, to_a = [], []
        total, count = np.zeros((k, *shape)), np.zeros((k, *shape))
        for p in pairs.itertuples():
            b, mask = test.domains.index(p.target), masks[p.dst] & masks[p.src]
            field = own[p.dst] if name == OWN_SCAN else log_field(candidates[name](p), p.dst)
            diff_b, diff_a = ((field - own[r])[mask] for r in (p.dst, p.src))
            to_b.append(np.sqrt(np.mean((diff_b - diff_b.mean()) ** 2)))
            to_a.append(np.sqrt(np.mean((diff_a - diff_a.mean()) ** 2)))
            total[b] += (field - field[mask].mean()) * mask
            count[b] += mask
        fields[name] = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        if name != OWN_SCAN:
            rows.append({"method": name, "RMS to b's field": float(np.mean(to_b)), "RMS to a's field": float(np.mean(to_a)),
                         "nearer b's in": float(np.mean(np.array(to_b) < np.array(to_a)))})
    return pd.DataFrame(rows), fields


def summary(scores: pd.DataFrame, cross: bool = True) -> pd.DataFrame:
    """Mean of each measure per method (rows, in order of appearance) and reference (column
    groups); ``cross`` keeps only pairs of two different scanners."""
    if cross:
        scores = scores[scores["source"] != scores["target"]]
    table = scores.pivot_table(index="method", columns="reference", values=list(MEASURES), aggfunc="mean", sort=False)
    table = table.reindex(columns=[(m, r) for m in MEASURES for r in REFERENCES if (m, r) in table.columns])
    return table.reindex(list(dict.fromkeys(scores["method"])))


def flat(table: pd.DataFrame) -> pd.DataFrame:
    """A (measure, reference) column table with flat 'measure vs reference' names, method as a column."""
    out = table.copy()
    out.columns = [f"{m} vs {r}" for m, r in out.columns]
    return out.rename_axis("method").reset_index()


def numbers(table: pd.DataFrame, prefix: str = "", strip: str = "") -> dict[str, float]:
    """A :func:`summary` table as flat ``metrics.json`` keys
    ``<prefix><method>_<measure>_vs_<reference>`` (``strip`` removed from the method's start)."""
    out = {}
    for method, row in table.iterrows():
        slug = method.removeprefix(strip).strip()
        for ch, new in ((" ", "_"), ("-", "_"), ("'", ""), (":", "")):
            slug = slug.replace(ch, new)
        out |= {f"{prefix}{slug}_{measure}_vs_{ref.replace(' ', '_')}": v
                for (measure, ref), v in row.items() if pd.notna(v)}
    return out


def pair_matrix(scores: pd.DataFrame, measure: str, reference: str) -> pd.DataFrame:
    """Mean ``measure`` against ``reference``: methods (rows, ceilings included) x 'source → target'
    (columns, same-scanner pairs included)."""
    sub = scores[scores["reference"] == reference].assign(pair=lambda d: d["source"] + " → " + d["target"])
    mat = sub.pivot_table(index="method", columns="pair", values=measure, aggfunc="mean", sort=False)
    return mat.reindex(list(dict.fromkeys(sub["method"])))


# --------------------------------------------------------------------------- scanner-free
DARK_COLUMNS = ("dark_overlap", "dark_overlap_inputs", "dark_overlap_blur_control")  # outputs, inputs, control


def scanner_free_scores(test: Slices, outputs: np.ndarray, control: np.ndarray | None = None
                        ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """How scanner-free the scanner-free ``outputs`` (one per test slice) are, on the traveling
    subjects: for every pair of scanners seeing the same anatomy, SSIM between the two inputs,
    between the two outputs and (given ``control``, e.g. the blurred inputs of
    :func:`blur_control`) between the two control images; and for every slice, the SSIM
    structure component between input and output (the anatomy should survive), beside the same
    between input and control and, when the data have one, between input and clean truth: at
    1 mm the input's noise is local structure too, so an output that removes it cannot reach 1,
    and the clean truth shows how far a perfect harmonizer would get. With a clean truth also the
    :func:`nbutils.metrics.dark_overlap` of output, input and control with it. Brain mask."""
    pairs = traveling_pairs(test)
    pairs = pairs[pairs["source"] < pairs["target"]]
    src, dst = pairs["src"].to_numpy(), pairs["dst"].to_numpy()
    anatomy = test.manifest["subject"].astype(str) + "/" + test.manifest["slice_index"].astype(str)
    masks = np.asarray(test.masks, bool)
    inputs, outs = metrics.Windowed(test.images), metrics.Windowed(outputs)
    control = None if control is None else metrics.Windowed(control)
    agree = lambda w: metrics.ssim_pairs(w, src, w, dst, masks[src])
    agreement = pd.DataFrame(dict(anatomy=anatomy.to_numpy()[src], subject=test.manifest["subject"].to_numpy()[src],
                                  source=pairs["source"].to_numpy(),
                                  target=pairs["target"].to_numpy(), inputs=agree(inputs), outputs=agree(outs)))
    every = np.arange(len(test))
    kept = lambda w: metrics.components_pairs(inputs, every, w, every, masks, parts=("structure",))["structure"]
    structure = pd.DataFrame(dict(domain=test.manifest["domain"].to_numpy(), structure=kept(outs)))
    if control is not None:
        agreement["blur_control"] = agree(control)
        structure["structure_blur_control"] = kept(control)  # what blurring alone keeps of the input's local structure
    if test.clean is not None:  # what a perfect harmonizer (the clean truth) keeps of it
        structure["structure_clean_truth"] = kept(metrics.Windowed(test.clean))
        # are the darkest pixels (ventricles, sulci) where the anatomy's are? 1 for any contrast curve of the
        # truth. The brain mask reaches a little background (about 4 % of it in the built-in set), 0 in the
        # truth and kept 0 by every method: left out, or it would fill most of the darkest 5 % alike
        tissue = masks & (np.asarray(test.clean) > 0)
        for column, images in zip(DARK_COLUMNS, (outputs, test.images, None if control is None else control.x)):
            if images is not None:
                structure[column] = metrics.dark_overlap(images, test.clean, tissue)
    return agreement, structure


def blur_control(test: Slices, outputs: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
    """({scanner: sigma}, the inputs blurred by their scanner's sigma): the inputs brought to the
    effective resolution of ``outputs``, one sigma per source scanner (scanners differ in native
    resolution); the control every agreement of those outputs must beat."""
    images, masks = np.asarray(test.images, np.float32), np.asarray(test.masks, bool)
    outputs = np.asarray(outputs, np.float32)
    control, sigmas = np.empty_like(images), {}
    scanners = [(name, rows) for b, name in enumerate(test.domains) if len(rows := np.flatnonzero(test.labels == b))]

    def one(scanner):  # each scanner's search alone, in threads (SciPy's filters release the GIL)
        _, rows = scanner
        sigma = metrics.effective_blur(images[rows], outputs[rows], masks[rows])
        return sigma, metrics.blur(images[rows], sigma)

    for (name, rows), (sigma, blurred) in zip(scanners, thread_map(one, scanners)):
        sigmas[name], control[rows] = sigma, blurred
    return sigmas, control


def agreement_table(test: Slices, scanner_free: dict[str, np.ndarray], seed: int = 0) -> pd.DataFrame:
    """Scanner-free agreement of each method beside its controls: one row per method with the
    inputs' agreement, its blur control (and the sigma per scanner, pixels), the outputs'
    agreement, the margin of the outputs over the stronger control (the mean over anatomies) with
    its 95 % bootstrap CI (whole subjects resampled, as everywhere else: an anatomy's scanner pairs
    are not independent, nor are a subject's adjacent slices), whether that CI lies above 0
    (``beats_inputs_and_blur``), and the structure SSIM input vs output beside input vs blur control
    and input vs clean truth, and (with a clean truth) where the darkest pixels of the outputs, the
    inputs and the blur control lie against the truth's (``dark_overlap``: :func:`scanner_free_scores`)."""
    rows = []
    for method, out in scanner_free.items():
        sigmas, control = blur_control(test, out)
        agree, structure = scanner_free_scores(test, out, control)
        per = agree.groupby("anatomy").agg(dict(subject="first", inputs="mean", blur_control="mean", outputs="mean"))
        stronger = "blur_control" if per["blur_control"].mean() >= per["inputs"].mean() else "inputs"
        d, lo, hi = bootstrap_mean(per["outputs"] - per[stronger], groups=per["subject"], seed=seed)
        rows.append(dict(method=method, n_pairs=len(agree), n_anatomies=len(per), inputs=per["inputs"].mean(),
                         blur_control=per["blur_control"].mean(),
                         blur_sigma_px=" / ".join(f"{v:g}" for v in sigmas.values()),
                         outputs=per["outputs"].mean(), margin=d, margin_ci_low=lo, margin_ci_high=hi,
                         beats_inputs_and_blur=bool(lo > 0), structure=structure["structure"].mean(),
                         structure_blur_control=structure["structure_blur_control"].mean(),
                         structure_clean_truth=structure.get("structure_clean_truth", pd.Series(dtype=float)).mean())
                    | {c: structure[c].mean() for c in DARK_COLUMNS if c in structure})
    return pd.DataFrame(rows)
