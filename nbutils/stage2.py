"""What notebooks 03 (GMM-DRIT) and 04 (DRIT++) share: build and train the model from the run's
profile, the translation grid, and the headline scores on the simulated traveling subjects."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd

from . import baselines, drit, gmvae, paired, plots, usage
from .config import Run, read_metrics
from .data import Slices
from .harmonize import Harmonizer
from .train import snapshot_folder


def checkpoint_path(run: Run, variant: str, known_labels: bool = False):
    """Where the run keeps the stage-2 checkpoint of ``variant``."""
    return run.checkpoints / (variant.replace("+", "p") + ("-known" if known_labels else "") + ".pt")


def train_variant(run: Run, train_set: Slices, variant: str, known_labels: bool = False, retrain: bool = False):
    """Train (or load) ``variant`` with the profile's settings; returns (model, history)."""
    p = run.profile
    checkpoint = checkpoint_path(run, variant, known_labels)
    if retrain:
        checkpoint.unlink(missing_ok=True)
        shutil.rmtree(snapshot_folder(checkpoint), ignore_errors=True)
    gm = None
    k = len(train_set.domains)
    if variant == "gmm-drit":
        gm = gmvae.from_checkpoint(run.require(run.checkpoints / "gmvae.pt", "02_gmvae_pretraining"))
        k = gm.cfg.k
    cfg = drit.DRITConfig(image_shape=tuple(train_set.images.shape[1:]), k=k, variant=variant,
                          width=p.drit_width, n_res=p.drit_res, down=p.drit_down, lr=p.drit_lr, known_labels=known_labels,
                          attr=gm.cfg.gaussian_size if gm else 64)
    return drit.train_drit(train_set.images, train_set.labels, cfg, checkpoint, gmvae=gm, steps=p.drit_steps,
                           batch_size=p.drit_batch, every=p.checkpoint_every, seed=run.seed, snapshots=True)


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


def guided(harm: Harmonizer, images: np.ndarray, codes: pd.DataFrame, refs: dict[int, np.ndarray]) -> np.ndarray:
    """``images`` translated to every scanner, reference-guided: (K, N, H, W)."""
    return np.stack([to_scanner(harm, images, codes, refs, b) for b in range(len(codes))])


def model_outputs(harm: Harmonizer, images: np.ndarray, codes: pd.DataFrame, refs: dict[int, np.ndarray],
                  seed: int = 0) -> dict[str, np.ndarray]:
    """The model's two domain-to-domain modes on every image and target: {mode: (K, N, H, W)}."""
    k = len(codes)

    def sampled(b):
        comp = codes.component[b]
        return harm.to_scanner(images, int(codes.code[b]), component=None if pd.isna(comp) else int(comp), seed=seed)

    return {"reference-guided": guided(harm, images, codes, refs),
            "sampled": np.stack([sampled(b) for b in range(k)])}


def headline(test: Slices, train_set: Slices, model: drit.Translator, label: str, seed: int = 0):
    """Scores on the traveling subjects (simulated), each beside its ceiling and control:
    domain-to-domain against the target's observed scan and its clean truth (with the identity
    and histogram-matching baselines and both ceilings), scanner-free agreement beside the
    inputs' and the blur control's, and the structure kept."""
    harm = Harmonizer(model)
    codes = scanner_codes(model, train_set)
    refs = references(train_set, seed=seed)
    images, masks = np.asarray(test.images, np.float32), np.asarray(test.masks, bool)
    outs = {f"{label} {mode}": o for mode, o in model_outputs(harm, images, codes, refs, seed).items()}
    outs |= baselines.to_every_scanner_outputs(images, masks, train_set)
    scores = paired.score_outputs(test, outs, progress=False)
    sf = harm.scanner_free(images, seed=seed)
    agreement = paired.agreement_table(test, {label: sf})
    return dict(scores=scores, d2d=paired.summary(scores), codes=codes, scanner_free=sf, agreement=agreement,
                guided=outs[f"{label} reference-guided"])


def summary(result: dict, label: str) -> dict:
    """Headline numbers for ``metrics.json``: every (method, measure, reference) of the
    domain-to-domain table, ceilings included, and the scanner-free agreement with its controls."""
    out = paired.numbers(result["d2d"], prefix="d2d_", strip=label)
    a = result["agreement"].iloc[0]
    out |= {"sf_agreement_outputs_ssim": a["outputs"], "sf_agreement_inputs_ssim": a["inputs"],
            "sf_agreement_blur_control_ssim": a["blur_control"], "sf_blur_sigma_px": a["blur_sigma_px"],
            "sf_agreement_margin": a["margin"], "sf_agreement_margin_ci_low": a["margin_ci_low"],
            "sf_beats_inputs_and_blur": a["beats_inputs_and_blur"], "sf_structure_ssim": a["structure"]}
    return out


def translation_grid(test: Slices, model: drit.Translator, codes: pd.DataFrame, refs, title: str,
                     anatomy: int = 0, seed: int = 0):
    """One traveling-subject anatomy: rows are source scanners; columns the input, the
    scanner-free output and the reference-guided translation to each scanner."""
    harm = Harmonizer(model)
    rows = plots.anatomy_rows(test.manifest, anatomy)
    images = np.asarray(test.images[rows], np.float32)
    sf = harm.scanner_free(images, seed)
    to = guided(harm, images, codes, refs)
    sources = [test.domains[test.labels[r]] for r in rows]
    idx = np.arange(len(rows))
    return plots.translation_montage(images, sf, to, idx, sources, test.domains, title)


def record_headline(run: Run, result: dict, label: str, key: str, steps: int) -> dict:
    """Save the headline tables of notebooks 03/04 (domain-to-domain with both references and
    ceilings; scanner-free agreement with its controls), add the numbers to ``metrics.json``
    under ``key`` and return them."""
    plots.save_table(paired.flat(result["d2d"]).round(4), key + "_domain_to_domain", run.figures,
                     note="Cross-scanner translations (a ≠ b) against the target's observed scan (a == b: its "
                          "rescan) and its clean truth, brain mask; ceilings: b rescanned, b's own scan; "
                          + plots.SIMULATED + ".")
    plots.save_table(result["agreement"].round(4), key + "_scanner_free_agreement", run.figures,
                     note="SSIM between scanner-free outputs of the same anatomy from two scanners, beside the "
                          "inputs' agreement and the blur control (inputs blurred to the outputs' effective "
                          "resolution), brain mask; " + plots.SIMULATED + ".")
    headline = summary(result, label) | {"steps": steps}
    run.record(key, headline)
    return headline


def verdict(result: dict, label: str) -> str:
    """One paragraph: the model against the baselines and the ceilings (for each reference the
    data have), and the scanner-free agreement against its controls."""
    d = result["d2d"]
    guided = f"{label} reference-guided"
    lines = []
    for ref, ceiling in paired.CEILINGS.items():
        if ("ssim", ref) not in d.columns:
            continue
        ssim = lambda m: f"{d.loc[m, ('ssim', ref)]:.3f}" if m in d.index else "n/a"
        lines.append(f"SSIM vs {ref} (a ≠ b): {label} {ssim(guided)}, histogram matching "
                     f"{ssim('histogram matching')}, identity {ssim('identity')}, ceiling {ssim(ceiling)}")
    a = result["agreement"].iloc[0]
    beats = "beats" if a["beats_inputs_and_blur"] else "does NOT beat"
    lines.append(f"scanner-free agreement: outputs {a['outputs']:.3f}, inputs {a['inputs']:.3f}, blur control "
                 f"{a['blur_control']:.3f} (σ per scanner {a['blur_sigma_px']} px): {beats} both (margin "
                 f"{a['margin']:+.3f}, 95 % CI {a['margin_ci_low']:+.3f} … {a['margin_ci_high']:+.3f}); "
                 f"structure kept {a['structure']:.3f}")
    return "\n".join(lines)


def learning_curve(checkpoint, model: drit.Translator, test: Slices, train_set: Slices, label: str,
                   seed: int = 0) -> pd.DataFrame:
    """The paired scores of every training snapshot of ``model`` (notebooks 03/04): SSIM of the
    reference-guided translations (a ≠ b) against the target's scan and its clean truth, the
    target sensitivity, and the scanner-free outputs' agreement; against iterations and training
    seconds. Simulated traveling subjects."""
    images = np.asarray(test.images, np.float32)
    refs = references(train_set, seed=seed)

    def evaluate(m):
        harm = Harmonizer(m)
        codes = scanner_codes(m, train_set)
        outs = guided(harm, images, codes, refs)
        d = paired.summary(paired.score_outputs(test, {label: outs}, ceilings=False, progress=False))
        agree, structure = paired.scanner_free_scores(test, harm.scanner_free(images, seed=seed))
        row = {f"ssim vs {ref}": d.loc[label, ("ssim", ref)] for ref in paired.CEILINGS if ("ssim", ref) in d.columns}
        return row | dict(target_sensitivity=usage.target_sensitivity(outs, test)["ratio"],
                          sf_agreement=float(agree["outputs"].mean()),
                          sf_structure=float(structure["structure"].mean()))

    return pd.DataFrame([dict(step=step, seconds=seconds, **evaluate(m))
                         for step, seconds, m in drit.snapshot_models(checkpoint, model)])


def diagnose(run: Run, model: drit.Translator, test: Slices, train_set: Slices, result: dict, label: str,
             key: str) -> tuple[dict, pd.DataFrame, object]:
    """Does the model use what it should (notebooks 03/04)? The diagnostics of
    :mod:`nbutils.usage` on the reference-guided translations of :func:`headline`, and the
    learning curve over the training snapshots; both saved (table, figure) and added to
    ``metrics.json`` under ``key``. Returns (diagnostics, curve, figure)."""
    diag = usage.report(model, test, result["guided"])
    curve = learning_curve(checkpoint_path(run, model.cfg.variant, model.cfg.known_labels), model, test, train_set,
                           label)
    plots.save_table(curve.round(4), key + "_learning_curve", run.figures,
                     note="Scores of training snapshots on the traveling subjects (" + plots.SIMULATED + ").")
    fig = plots.learning_curve(curve, f"{label} learning curve: " + plots.SIMULATED)
    plots.save_figure(fig, key + "_learning_curve", run.figures)
    last = curve.iloc[-1]
    prev = curve.iloc[-2] if len(curve) > 1 else last
    trend = {f"curve_{c.replace(' ', '_')}_last_gain": float(last[c] - prev[c])
             for c in curve.columns if c not in ("step", "seconds")}
    metrics = read_metrics(run.dir).get(key, {})
    run.record(key, metrics | diag | trend | {"train_seconds": float(last["seconds"])})
    return diag, curve, fig
