"""Scoring against ground truth on the simulated traveling subjects (DESIGN §6, beyond the thesis).

In the built-in TEST split every held-out anatomy is rendered by every simulated
scanner, and each scanner's clean rendering is kept. A translation of the source
image (scanner a) towards scanner b can therefore be compared with b's clean truth of
the same anatomy, which no real multi-site study can offer.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from . import metrics
from .baselines import histogram_match, reference_quantiles
from .data import Slices

# method(image, mask, target_domain_index) -> translated image
Method = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


def traveling_pairs(test: Slices) -> pd.DataFrame:
    """Every (source row, target row) pair showing the same anatomy and slice in two scanners
    (including a == b, the nuisance floor). Columns: src, dst, source, target."""
    if test.clean is None:
        raise ValueError("this split has no clean truth: paired scoring needs the built-in "
                         "simulated traveling-subject test split (notebook 01 with data_csv='').")
    m = test.manifest.reset_index(drop=True).assign(row=lambda d: d.index)
    pairs = m.merge(m, on=["subject", "slice_index"], suffixes=("_src", "_dst"))
    return pd.DataFrame({"src": pairs["row_src"], "dst": pairs["row_dst"],
                         "source": pairs["domain_src"], "target": pairs["domain_dst"]})


ORACLE = "global-remap oracle"


def score_translations(test: Slices, methods: dict[str, Method], oracle: bool = True,
                       progress: bool = True) -> pd.DataFrame:
    """SSIM / PSNR / MAE inside the brain mask of each method's a→b output against b's clean truth.

    With ``oracle`` a reference method is added that *cheats*: it histogram-matches the
    source to the very truth it is scored against, the best any global intensity remap
    could do. What it leaves is the spatial part of the scanners (resolution, bias
    field, noise, artefact). Returns one row per (method, pair)."""
    if oracle:
        methods = {**methods, ORACLE: None}
    pairs = traveling_pairs(test)
    rows = []
    for p in tqdm(pairs.itertuples(), total=len(pairs), desc="scoring pairs", disable=not progress):
        src = np.asarray(test.images[p.src], np.float32)
        mask = np.asarray(test.masks[p.dst], bool)
        truth = np.asarray(test.clean[p.dst], np.float32)
        target = test.domains.index(p.target)
        for name, method in methods.items():
            if method is None:  # the oracle
                out = histogram_match(src, np.asarray(test.masks[p.src], bool),
                                      reference_quantiles(truth, mask))
            else:
                out = method(src, np.asarray(test.masks[p.src], bool), target)
            rows.append(dict(method=name, source=p.source, target=p.target, **_against_truth(out, truth, mask)))
    return pd.DataFrame(rows)


def _against_truth(out: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    return dict(ssim=metrics.ssim(out, truth, mask), psnr=metrics.psnr(out, truth, mask), mae=metrics.mae(out, truth, mask))


def score_outputs(test: Slices, to_target: dict[str, np.ndarray], progress: bool = True) -> pd.DataFrame:
    """As :func:`score_translations`, for outputs computed beforehand: ``to_target[method]`` is a
    (K, N, H, W) array, the translation of every test slice to every scanner."""
    pairs = traveling_pairs(test)
    rows = []
    for p in tqdm(pairs.itertuples(), total=len(pairs), desc="scoring pairs", disable=not progress):
        mask = np.asarray(test.masks[p.dst], bool)
        truth = np.asarray(test.clean[p.dst], np.float32)
        b = test.domains.index(p.target)
        for name, out in to_target.items():
            rows.append(dict(method=name, source=p.source, target=p.target,
                             **_against_truth(np.asarray(out[b][p.src], np.float32), truth, mask)))
    return pd.DataFrame(rows)


def pair_matrix(scores: pd.DataFrame, method: str, metric: str) -> pd.DataFrame:
    """Mean ``metric`` of ``method`` as a source x target matrix."""
    sub = scores[scores["method"] == method]
    return sub.pivot_table(index="source", columns="target", values=metric, aggfunc="mean")


def scanner_free_scores(test: Slices, outputs: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    """How scanner-free the scanner-free ``outputs`` (one per test slice) are, on the traveling
    subjects: for every pair of scanners seeing the same anatomy, SSIM between the two inputs
    and between the two outputs (they should agree); and for every slice, the SSIM structure
    component between input and output (the anatomy should survive). Both in the brain mask."""
    pairs = traveling_pairs(test)
    pairs = pairs[pairs["source"] < pairs["target"]]
    rows = []
    for p in pairs.itertuples():
        mask = np.asarray(test.masks[p.src], bool)
        rows.append(dict(source=p.source, target=p.target,
                         inputs=metrics.ssim(test.images[p.src], test.images[p.dst], mask),
                         outputs=metrics.ssim(outputs[p.src], outputs[p.dst], mask)))
    structure = [dict(domain=test.manifest["domain"].iloc[i],
                      structure=metrics.ssim_components(test.images[i], outputs[i], test.masks[i])["structure"])
                 for i in range(len(test))]
    return pd.DataFrame(rows), pd.DataFrame(structure)
