"""What notebooks 03 (GMM-DRIT) and 04 (DRIT++) share: build and train the model from the run's
profile, the translation grid, and the headline scores on the simulated traveling subjects."""
from __future__ import annotations

import numpy as np
import pandas as pd

from . import baselines, drit, gmvae, paired, plots
from .config import Run
from .data import Slices
from .harmonize import Harmonizer


def train_variant(run: Run, train_set: Slices, variant: str, known_labels: bool = False, retrain: bool = False):
    """Train (or load) ``variant`` with the profile's settings; returns (model, history)."""
    p = run.profile
    name = variant.replace("+", "p") + ("-known" if known_labels else "")
    checkpoint = run.checkpoints / f"{name}.pt"
    if retrain and checkpoint.exists():
        checkpoint.unlink()
    gm = None
    k = len(train_set.domains)
    if variant == "gmm-drit":
        gm = gmvae.from_checkpoint(run.require(run.checkpoints / "gmvae.pt", "02_gmvae_pretraining"))
        k = gm.cfg.k
    cfg = drit.DRITConfig(image_shape=tuple(train_set.images.shape[1:]), k=k, variant=variant,
                          width=p.drit_width, n_res=p.drit_res, lr=p.drit_lr, known_labels=known_labels,
                          attr=gm.cfg.gaussian_size if gm else 64)
    return drit.train_drit(train_set.images, train_set.labels, cfg, checkpoint, gmvae=gm, steps=p.drit_steps,
                           batch_size=p.drit_batch, every=p.checkpoint_every, seed=run.seed)


def scanner_codes(model: drit.Translator, train_set: Slices) -> pd.DataFrame:
    """For each scanner: the code c to condition G on and the GM-VAE component to sample z^a
    from. With known labels (and for DRIT++) the code is the scanner itself; with inferred
    codes (GMM-DRIT) it is the component most of that scanner's training slices fall in."""
    rows = []
    comps = None
    if model.cfg.variant == "gmm-drit":
        comps = gmvae.encode_all(model.attribute.gmvae, train_set.images)["prob"].argmax(1)
    for b, name in enumerate(train_set.domains):
        comp = int(np.bincount(comps[train_set.labels == b], minlength=model.cfg.k).argmax()) if comps is not None else None
        code = b if (model.cfg.variant == "drit++" or model.cfg.known_labels) else comp
        rows.append(dict(scanner=name, code=code, component=comp))
    return pd.DataFrame(rows)


def references(train_set: Slices, n: int = 16, seed: int = 0) -> dict[int, np.ndarray]:
    """``n`` random training slices of each scanner, for reference-guided translation."""
    rng = np.random.default_rng(seed)
    out = {}
    for b in range(len(train_set.domains)):
        rows = np.flatnonzero(train_set.labels == b)
        out[b] = np.asarray(train_set.images[np.sort(rng.choice(rows, min(n, len(rows)), replace=False))], np.float32)
    return out


def to_scanner(harm: Harmonizer, images: np.ndarray, codes: pd.DataFrame, refs: dict[int, np.ndarray],
               b: int) -> np.ndarray:
    """``images`` translated to scanner ``b``, guided by its reference slices, with its code."""
    return harm.to_scanner(images, int(codes.code[b]), reference=refs[b])


def methods(harm: Harmonizer, codes: pd.DataFrame, refs: dict[int, np.ndarray], seed: int = 0) -> dict:
    """The model's two domain-to-domain modes as ``paired`` methods (image, mask, target) -> image."""
    def guided(img, _mask, b):
        return to_scanner(harm, img, codes, refs, b)[0]

    def sampled(img, _mask, b):
        comp = codes.component[b]
        return harm.to_scanner(img, int(codes.code[b]), component=None if pd.isna(comp) else int(comp), seed=seed)[0]

    return {"reference-guided": guided, "sampled": sampled}


def headline(test: Slices, train_set: Slices, model: drit.Translator, label: str, seed: int = 0):
    """Scores on the traveling subjects (simulated): domain-to-domain vs clean truth (with the
    identity and histogram-matching baselines), scanner-free agreement and structure."""
    harm = Harmonizer(model)
    codes = scanner_codes(model, train_set)
    refs = references(train_set, seed=seed)
    quantiles = {b: baselines.reference_quantiles(train_set.images[train_set.labels == b],
                                                  train_set.masks[train_set.labels == b])
                 for b in range(len(train_set.domains))}
    meths = {f"{label} {k}": f for k, f in methods(harm, codes, refs, seed).items()}
    meths |= {"identity": baselines.identity,
              "histogram matching": lambda img, mask, b: baselines.histogram_match(img, mask, quantiles[b])}
    scores = paired.score_translations(test, meths, oracle=False)
    cross = scores[scores["source"] != scores["target"]]
    d2d = cross.groupby("method", sort=False)[["ssim", "psnr", "mae"]].mean()
    sf = harm.scanner_free(np.asarray(test.images, np.float32), seed=seed)
    agree, structure = paired.scanner_free_scores(test, sf)
    return dict(scores=scores, d2d=d2d, codes=codes, scanner_free=sf, agreement=agree, structure=structure)


def summary(result: dict, label: str) -> dict:
    """Headline numbers for ``metrics.json``."""
    d2d, agree = result["d2d"], result["agreement"]
    out = {}
    for method, row in d2d.iterrows():
        key = (method[len(label):] if method.startswith(label) else method).strip().replace(" ", "_").replace("-", "_")
        for m in ("ssim", "psnr", "mae"):
            out[f"d2d_{key}_{m}"] = row[m]
    out |= {"sf_agreement_outputs_ssim": agree["outputs"].mean(), "sf_agreement_inputs_ssim": agree["inputs"].mean(),
            "sf_structure_ssim": result["structure"]["structure"].mean()}
    return out


def translation_grid(test: Slices, model: drit.Translator, codes: pd.DataFrame, refs, title: str,
                     anatomy: int = 0, seed: int = 0):
    """One traveling-subject anatomy: rows are source scanners; columns the input, the
    scanner-free output and the reference-guided translation to each scanner."""
    harm = Harmonizer(model)
    rows = plots.anatomy_rows(test.manifest, anatomy)
    images = np.asarray(test.images[rows], np.float32)
    sf = harm.scanner_free(images, seed)
    to = [to_scanner(harm, images, codes, refs, b) for b in range(len(test.domains))]
    sources = [test.domains[test.labels[r]] for r in rows]
    idx = np.arange(len(rows))
    return plots.translation_montage(images, sf, to, idx, sources, test.domains, title)
