"""What notebooks 03 (GMM-DRIT) and 04 (DRIT++) share, in the order of their sections:
:class:`Experiment` trains (or loads) one stage-2 model with the run's profile, draws its
translation grid, scores it on the traveling subjects beside the ceilings and controls, and
diagnoses whether it uses what it should. Each notebook only names its method and tells the story.

Data without traveling subjects (no anatomy seen by two scanners, e.g. IXI) cannot be scored
against a target scan: then the scores, the target sensitivity and the learning curve are left
out, with a message, and the rest runs."""
from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil

import numpy as np
import pandas as pd
import torch

from . import baselines, drit, gmvae, methods, outputs, paired, plots, usage
from .config import Run, read_metrics, seed_everything
from .data import Slices
from .data import for_run as slices_for_run
from .harmonize import Harmonizer
from .io import locked
from .train import pick_device, snapshot_folder

# GMM-DRIT's tone curve (nets.ToneCurve): 16 segments, as in the runs that measured it, each of
# slope at least 0.5, so that E^c's inverse stretches the scan's noise at most twice
# (docs/experiments.md, "Stage 2")
TONE_KNOTS, TONE_FLOOR = 16, 0.5

# E1 ACC below which stage 1 is taken not to find the scanners (the stage-1 bar): GMM-DRIT's inferred
# codes then misname many slices' scanners, and notebook 03 also trains it with the known labels
E1_BAR = 0.90
# the numbers notebook 03 shows for GMM-DRIT with inferred codes beside those with known labels
BESIDE = {"d2d_reference_guided_ssim_vs_target_scan": "SSIM vs target scan (reference-guided, a ≠ b)",
          "d2d_reference_guided_ssim_vs_clean_truth": "SSIM vs clean truth (reference-guided, a ≠ b)",
          "target_sensitivity": "target sensitivity", "probe_zc": "scanner probe from z^c",
          "probe_zc_fed": "scanner probe from z^c as G is fed (window by window)",
          "sf_agreement_outputs_ssim": "scanner-free agreement", "sf_structure_ssim": "scanner-free structure kept",
          "train_seconds": "training seconds"}

LOSSES = ["D_s1", "D_s2", "D_c", "G_adv1", "G_cls1", "G_cls2", "self_rec", "cross_cycle", "latent"]
NO_TRAVELING = ("no anatomy of the test split is seen by two scanners (no traveling subjects): "
                "the scores against a target scan, the target sensitivity and the learning curve are left out")


# what a run's data, profile and notebook set, which ``options`` cannot change
SET_BY_THE_RUN = ("image_shape", "slice_shape", "k", "variant", "known_labels", "attr", "view")


def parse_options(options: str | dict | None) -> dict:
    """Stage-2 options over the profile's (notebooks 03/04's ``options``, ``make run OPTIONS=…``):
    a JSON object of :class:`nbutils.drit.DRITConfig` fields, e.g. ``'{"dc_steps": 3, "dc_lr": 0.4}'``;
    empty: none. Raises ValueError, naming the fields it may set, for anything else."""
    if not options:
        return {}
    if isinstance(options, str):
        try:
            options = json.loads(options)
        except json.JSONDecodeError as err:
            raise ValueError(f"options must be a JSON object of stage-2 settings, e.g. '{{\"dc_steps\": 3}}': "
                             f"{err}") from None
    if not isinstance(options, dict):
        raise ValueError(f"options must be a JSON object of stage-2 settings, not {options!r}")
    fields = {f.name: f.default for f in dataclasses.fields(drit.DRITConfig) if f.name not in SET_BY_THE_RUN}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise ValueError(f"unknown stage-2 option(s) {', '.join(unknown)}: options may set {', '.join(sorted(fields))} "
                         "(nbutils.drit.DRITConfig)")
    for name, value in options.items():
        kind = type(fields[name])  # every field options may set has a plain default: bool, int, float or str
        fits = (isinstance(value, bool) if kind is bool else
                isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else
                isinstance(value, kind) and not isinstance(value, bool))
        if not fits:
            raise ValueError(f"stage-2 option {name} must be {kind.__name__} (default {fields[name]!r}), not {value!r}")
        if kind in (int, float) and not (math.isfinite(value) and value >= 0):
            raise ValueError(f"stage-2 option {name} must be a finite number of 0 or more, not {value!r}")
        if name.endswith("lr") and not value > 0:
            raise ValueError(f"stage-2 option {name} must be above 0, not {value!r}")
    return dict(options)


def check_options(p, options: str | dict | None) -> dict:
    """:func:`parse_options`, then the settings' own checks for every stage-2 model notebooks 03/04
    train with them (GMM-DRIT, its known-labels model, DRIT++), so that options a model cannot take
    stop a run before anything runs rather than in notebook 03 or 04."""
    options = parse_options(options)
    for variant, known in (("gmm-drit", False), ("gmm-drit", True), ("drit++", False)):
        try:
            model_config(p, (p.image_size, p.image_size), 2, variant, known_labels=known, options=options)
        except (ValueError, TypeError) as err:
            name = {"drit++": "DRIT++"}.get(variant, "GMM-DRIT" + (" with known labels" if known else ""))
            raise ValueError(f"options {json.dumps(options)} cannot be given to {name}: {err} (options apply to "
                             "every stage-2 model of the run: GMM-DRIT, its known-labels model and DRIT++)") from None
    return options


def model_config(p, slices: tuple[int, int], k: int, variant: str, known_labels: bool = False,
                 attr: int = 64, options: dict | None = None) -> drit.DRITConfig:
    """The stage-2 configuration of profile ``p`` for slices of size ``slices``: trained on the
    profile's windows (or whole slices), its attribute encoder reading the profile's views;
    GMM-DRIT's G draws a tone curve and a bias field from the codes, and its E^c reads its input
    with the curve and the field it would draw for the input's own inferred code undone
    (``tone_curve``, ``content_field``), which DRIT++ and ``known_labels``, whose scanner codes are
    labels, cannot. ``options`` (:func:`parse_options`) replace the fields they name."""
    inferred = variant == "gmm-drit" and not known_labels
    cfg = drit.DRITConfig(image_shape=(p.crop, p.crop) if p.crop else slices, slice_shape=slices if p.crop else None,
                          k=k, variant=variant, width=p.drit_width, n_res=p.drit_res, down=p.drit_down,
                          view=p.view, lr=p.drit_lr, known_labels=known_labels, attr=attr,
                          content_field=inferred, tone_curve=TONE_KNOTS if inferred else 0,
                          tone_floor=TONE_FLOOR if inferred else 0.0)
    return dataclasses.replace(cfg, **parse_options(options))


def train_variant(run: Run, train_set: Slices, method: methods.Method, known_labels: bool, retrain: bool,
                  steps: int, options: dict | None = None):
    """Train (or load) ``method`` with the profile's settings for ``steps`` iterations; returns
    (model, history). A checkpoint with fewer iterations is trained on from
    (exactly as if trained in one go: Adam's rate is held; not with ``lr_decay``, whose falling rate follows
    ``steps``), one with more is used as it is."""
    p = run.profile
    checkpoint = run.checkpoints / method.checkpoint(known_labels)
    with locked(checkpoint):  # another process training it (`make run`'s other lane): wait, then load it
        if retrain:
            checkpoint.unlink(missing_ok=True)
            shutil.rmtree(snapshot_folder(checkpoint), ignore_errors=True)
        gm = None
        k = len(train_set.domains)
        if method == methods.GMM_DRIT:
            gm = gmvae.from_checkpoint(run.require(run.checkpoints / "gmvae.pt", "02_gmvae_pretraining"))
            k = gm.cfg.k
        cfg = model_config(p, tuple(train_set.images.shape[1:]), k, method.variant, known_labels=known_labels,
                           attr=gm.cfg.gaussian_size if gm else 64, options=options)
        return drit.train_drit(train_set.images, train_set.labels, cfg, checkpoint, gmvae=gm, steps=steps,
                               batch_size=p.drit_batch, every=p.checkpoint_every, seed=run.seed, snapshots=True,
                               masks=train_set.masks)


def headline(test: Slices, train_set: Slices, harm: Harmonizer, label: str, seed: int = 0) -> dict:
    """Scores on the traveling subjects, each beside its ceiling and control: domain-to-domain
    against the target's observed scan and its clean truth (with the identity and
    histogram-matching baselines and both ceilings), scanner-free agreement beside the inputs'
    and the blur control's, and the structure kept."""
    images, masks = np.asarray(test.images, np.float32), np.asarray(test.masks, bool)
    made = harm.outputs(images, seed, sampled=True)
    sf = made.pop("scanner-free")
    outs = {f"{label} {mode}": o for mode, o in made.items()}
    outs |= baselines.to_every_scanner_outputs(images, masks, train_set)
    scores = paired.score_outputs(test, outs, progress=False)
    agreement = paired.agreement_table(test, {label: sf})
    return dict(scores=scores, d2d=paired.summary(scores), codes=harm.codes, scanner_free=sf, agreement=agreement,
                guided=outs[f"{label} reference-guided"])


def summary(result: dict, label: str) -> dict:
    """Headline numbers for ``metrics.json``: every (method, measure, reference) of the
    domain-to-domain table, ceilings included, and the scanner-free agreement with its controls."""
    out = paired.numbers(result["d2d"], prefix="d2d_", strip=label)
    a = result["agreement"].iloc[0]
    out |= {"sf_agreement_outputs_ssim": a["outputs"], "sf_agreement_inputs_ssim": a["inputs"],
            "sf_agreement_blur_control_ssim": a["blur_control"], "sf_blur_sigma_px": a["blur_sigma_px"],
            "sf_agreement_margin": a["margin"], "sf_agreement_margin_ci_low": a["margin_ci_low"],
            "sf_beats_inputs_and_blur": a["beats_inputs_and_blur"], "sf_structure_ssim": a["structure"],
            "sf_structure_blur_control_ssim": a["structure_blur_control"],
            "sf_structure_clean_truth_ssim": a["structure_clean_truth"]}
    out |= {f"sf_{c}": a[c] for c in paired.DARK_COLUMNS if c in a}
    return out


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
                 f"structure kept {a['structure']:.3f} (blur control {a['structure_blur_control']:.3f}, "
                 f"clean truth {a['structure_clean_truth']:.3f})")
    return "\n".join(lines)


def middle_slices(test: Slices) -> np.ndarray:
    """The rows of one slice per anatomy, in every scanner that saw it (so that the traveling pairs
    of the subset are those of that slice): of each subject's slices seen by the most scanners,
    the middle one (all of them on the built-in set). Every row when that leaves no traveling pair."""
    m = test.manifest
    seen = m.groupby(["subject", "slice_index"])["domain"].nunique().reset_index()
    best = seen[seen["domain"] == seen.groupby("subject")["domain"].transform("max")]
    middle = best.groupby("subject")["slice_index"].agg(lambda v: np.sort(v.to_numpy())[len(v) // 2])
    rows = np.flatnonzero(m["slice_index"].to_numpy() == m["subject"].map(middle).to_numpy())
    return rows if (best["domain"] > 1).any() else np.arange(len(test))  # some chosen slice seen by two scanners


def learning_curve(checkpoint, model: drit.Translator, test: Slices, train_set: Slices, label: str,
                   seed: int = 0, own: tuple[np.ndarray, np.ndarray] | None = None) -> pd.DataFrame:
    """The paired scores of every training snapshot of ``model`` (notebooks 03/04): SSIM of the
    reference-guided translations (a ≠ b) against the target's scan and its clean truth, the
    target sensitivity, and the scanner-free outputs' agreement, structure and dark overlap with the
    clean truth; against iterations and training seconds. Traveling subjects: one slice per anatomy
    (:func:`middle_slices`; a third of the built-in test split), for every snapshot alike, so the
    last row is not the headline's score on all slices: translating every snapshot's outputs
    window by window was the largest part of notebooks 03/04's time after training.

    ``own``: ``model``'s own reference-guided (K, N, H, W) and scanner-free (N, H, W) outputs
    of all the test images with this ``seed``, already made (:func:`headline`): the snapshot whose
    weights are ``model``'s (the last) reuses them instead of translating everything again."""
    rows = middle_slices(test)
    test = test.take(rows)
    images = np.asarray(test.images, np.float32)
    weights = model.state_dict()
    same = lambda m: all(torch.equal(a, weights[k]) for k, a in m.state_dict().items())

    def evaluate(m):
        if own is not None and same(m):
            outs, sf = own[0][:, rows], own[1][rows]
        else:
            made = Harmonizer(m, train_set, seed=seed).outputs(images, seed)
            outs, sf = made["reference-guided"], made["scanner-free"]
        d = paired.summary(paired.score_outputs(test, {label: outs}, ceilings=False, progress=False))
        agree, structure = paired.scanner_free_scores(test, sf)
        row = {f"ssim vs {ref}": d.loc[label, ("ssim", ref)] for ref in paired.CEILINGS if ("ssim", ref) in d.columns}
        dark = {"sf_dark_overlap": float(structure["dark_overlap"].mean())} if "dark_overlap" in structure else {}
        return row | dict(target_sensitivity=usage.target_sensitivity(outs, test)["ratio"],
                          sf_agreement=float(agree["outputs"].mean()),
                          sf_structure=float(structure["structure"].mean())) | dark

    return pd.DataFrame([dict(step=step, seconds=seconds, **evaluate(m))
                         for step, seconds, m in drit.snapshot_models(checkpoint, model)])


def no_known_labels(run: Run, below: float = E1_BAR) -> str:
    """Why ``run``'s GMM-DRIT needs no known-labels ablation (:meth:`Experiment.known_labels_ablation`):
    E1 ACC is not recorded, or at or above ``below``; '' where it needs one."""
    metrics = read_metrics(run.dir)
    acc = metrics.get("02_gmvae", {}).get("ACC")
    if acc is None:
        return "E1 ACC is not recorded (run notebook 02 in this run folder): no known-labels ablation"
    if acc < below:
        return ""
    key = methods.GMM_DRIT.section + "_known_labels"
    left = f"; the section {key} an earlier run left in metrics.json is kept as it was" if key in metrics else ""
    return (f"stage 1 finds the scanners (E1 ACC {acc:.3f} ≥ {below:.2f}): GMM-DRIT's inferred codes are "
            "the scanners, no known-labels ablation needed" + left)


class Experiment:
    """One stage-2 model of a run, as notebooks 03 (GMM-DRIT) and 04 (DRIT++) use it. Figures and
    tables are saved to the run's figures folder, headline numbers to ``metrics.json``, both under
    :attr:`key` (the method's section; ``_known_labels`` for the ablation)."""

    def __init__(self, run: Run, method: str | methods.Method, known_labels: bool = False, steps: int = 0,
                 options: str | dict | None = None):
        self.run, self.method, self.known_labels = run, methods.get(method), known_labels
        self.steps = steps or run.profile.drit_steps  # training iterations (0: the profile's)
        self.options = parse_options(options)  # stage-2 settings over the profile's (parse_options)
        self.label = self.method.name + (" (known labels)" if known_labels else "")  # titles and tables
        self.key = self.method.section + ("_known_labels" if known_labels else "")
        self.train_set, self.test_set = slices_for_run(run, "train"), slices_for_run(run, "test")
        self.traveling = paired.has_traveling(self.test_set)
        self.model = self.harmonizer = self.history = self.result = self.stamp = None

    def __str__(self) -> str:
        p = self.run.profile
        return (f"profile {p.name}: {len(self.train_set)} training slices, {self.steps} iterations of batch "
                f"{p.drit_batch} x 2, width {p.drit_width}, device {pick_device()}"
                + (f"; options {json.dumps(self.options)}" if self.options else ""))

    def train(self, retrain: bool = False):
        """Train (or load) the model; save its loss curves. Returns the figure."""
        self.model, self.history = train_variant(self.run, self.train_set, self.method, self.known_labels, retrain,
                                                 self.steps, self.options)
        # what the outputs score() makes are computed from, for notebooks 05-09's cache: only for the
        # checkpoint they read (not the ablation's) and on the CPU, where they translate
        on_cpu = next(self.model.parameters()).device.type == "cpu"
        self.stamp = outputs.inputs_stamp(self.run, self.method) if on_cpu and not self.known_labels else None
        self.harmonizer = Harmonizer(self.model, self.train_set, seed=self.run.seed)
        fig = plots.loss_curves(self.history, f"{self.label} training losses: " + plots.SIMULATED, LOSSES)
        plots.save_figure(fig, self.key + "_losses", self.run.figures)
        return fig

    def translation_grid(self, anatomy: int = 0):
        """One test anatomy: rows are source scanners; columns the input, the scanner-free output and
        the reference-guided translation to each scanner. Saved; returns the figure."""
        test, harm = self.test_set, self.harmonizer
        rows = plots.anatomy_rows(test.manifest, anatomy)
        images = np.asarray(test.images[rows], np.float32)
        sources = [test.domains[test.labels[r]] for r in rows]
        fig = plots.translation_montage(images, harm.scanner_free(images, self.run.seed), harm.to_every_domain(images),
                                        np.arange(len(rows)), sources, test.domains,
                                        f"{self.label}: " + plots.SIMULATED)
        plots.save_figure(fig, self.key + "_translations", self.run.figures)
        return fig

    def score(self) -> pd.DataFrame | str:
        """:func:`headline` scores, saved (tables) and recorded; the domain-to-domain table, or why
        there is none."""
        run = self.run
        # what the model was trained with over the profile's settings ("" for none)
        headline_ = {"steps": int(self.history["step"].max()),
                     "options": json.dumps(self.options, sort_keys=True) if self.options else ""}
        if self.traveling:
            self.result = headline(self.test_set, self.train_set, self.harmonizer, self.label, seed=run.seed)
            plots.save_table(paired.flat(self.result["d2d"]), self.key + "_domain_to_domain", run.figures,
                             note="Cross-scanner translations (a ≠ b) against the target's observed scan (a == b: its "
                                  "rescan) and its clean truth, brain mask; ceilings: b rescanned, b's own scan; "
                                  + plots.SIMULATED + ".")
            plots.save_table(self.result["agreement"], self.key + "_scanner_free_agreement", run.figures,
                             note="SSIM between scanner-free outputs of the same anatomy from two scanners, beside the "
                                  "inputs' agreement and the blur control (inputs blurred to the outputs' effective "
                                  "resolution), brain mask; " + plots.SIMULATED + ".")
            headline_ |= summary(self.result, self.label)
            if self.stamp is not None:
                outputs.remember(run, self.method, "test",
                                 outputs.Outputs(self.result["scanner_free"], self.result["guided"], self.stamp))
        # what diagnose() and the other steps added stays if it was computed from this same checkpoint
        section, checkpoint = self._section(), self._checkpoint_id()
        kept = section if section.get("checkpoint") == checkpoint else {}
        run.record(self.key, kept | headline_ | {"checkpoint": checkpoint})
        return paired.flat(self.result["d2d"]).round(3) if self.traveling else NO_TRAVELING

    def verdict(self) -> str:
        return verdict(self.result, self.label) if self.traveling else NO_TRAVELING

    def _section(self) -> dict:
        return read_metrics(self.run.dir).get(self.key, {})

    def _checkpoint_id(self) -> str:
        """The checkpoint this model was loaded from (name, size, modification time) and the seed
        its scores use: a section written for another checkpoint is not kept by :meth:`score`."""
        f = self.run.checkpoints / self.method.checkpoint(self.known_labels)
        return f"{outputs.checkpoint_id(f)} seed {self.run.seed}"

    @staticmethod
    def seed_of(section: dict) -> int | None:
        """The seed a section of ``metrics.json`` written by :meth:`score` was scored with (None if
        it has none)."""
        found = re.search(r" seed (\d+)$", str(section.get("checkpoint", "")))
        return int(found.group(1)) if found else None

    def _add_metrics(self, values: dict) -> None:
        """Add ``values`` to this model's section of ``metrics.json``, keeping what is there."""
        self.run.record(self.key, self._section() | values)

    def source_maps(self):
        """Where each source scanner is left in the scanner-free outputs, beside the inputs
        (:func:`usage.source_maps`): saved (figure, table of each source's mean |map| in the brain),
        the mean over sources recorded. Returns the table and the figure; (None, None) without
        traveling subjects."""
        run, test = self.run, self.test_set
        if not self.traveling:
            return None, None
        found = {name: usage.source_maps(images, test) for name, images in
                 (("inputs", test.images), ("scanner-free outputs", self.result["scanner_free"]))}
        table = pd.DataFrame({name: size for name, (_, size) in found.items()})
        table.loc["mean"] = table.mean()
        plots.save_table(table.rename_axis("source").reset_index(), self.key + "_source_maps", run.figures,
                         note="Mean |source map| in the brain: each source's mean image less the mean over sources, "
                              "on the traveling subjects (0: nothing depends on the source); " + plots.SIMULATED + ".")
        fig = plots.source_maps({name: maps for name, (maps, _) in found.items()}, test.domains,
                                f"{self.label}: what each source leaves; " + plots.SIMULATED)
        plots.save_figure(fig, self.key + "_source_maps", run.figures)
        self._add_metrics({"source_map_inputs": float(table.loc["mean", "inputs"]),
                           "source_map_scanner_free": float(table.loc["mean", "scanner-free outputs"])})
        return table, fig

    def diagnose(self) -> tuple[dict, pd.DataFrame | None, object]:
        """Does the model use what it should? The diagnostics of :mod:`nbutils.usage` on the
        reference-guided translations and, with traveling subjects, the learning curve over the
        training snapshots; saved (table, figure) and added to ``metrics.json``. Returns
        (diagnostics, curve, figure); curve and figure are None without traveling subjects."""
        run, test, model = self.run, self.test_set, self.model
        guided = self.result["guided"] if self.traveling else self.harmonizer.to_every_domain(test.images)
        diag = usage.report(model, test, guided)
        curve = fig = None
        trend = {"train_seconds": float(self.history["seconds"].max())}
        if self.traveling:
            checkpoint = run.checkpoints / self.method.checkpoint(self.known_labels)
            curve = learning_curve(checkpoint, model, test, self.train_set, self.label, seed=run.seed,
                                   own=(self.result["guided"], self.result["scanner_free"]))
            plots.save_table(curve, self.key + "_learning_curve", run.figures,
                             note="Scores of training snapshots on one slice per traveling anatomy (the middle of each "
                                  "subject's; " + plots.SIMULATED + ").")
            fig = plots.learning_curve(curve, f"{self.label} learning curve: " + plots.SIMULATED)
            plots.save_figure(fig, self.key + "_learning_curve", run.figures)
            last = curve.iloc[-1]
            prev = curve.iloc[-2] if len(curve) > 1 else last
            trend |= {f"curve_{c.replace(' ', '_')}_last_gain": float(last[c] - prev[c])
                      for c in curve.columns if c not in ("step", "seconds")}
        self._add_metrics(diag | trend)
        return diag, curve, fig

    def probe_control(self) -> tuple[pd.DataFrame | None, object]:
        """The z^c probe beside its controls (:func:`usage.probe_control`): z^c's and the inputs' summaries and the
        inputs' detail (:func:`usage.features`) with their scanner part shrunk by known factors, probed again. Saved
        (table, figure); the inputs' probes as they are (``probe_inputs``, ``probe_inputs_detail``) and the share up
        to which z^c's and the inputs' probes read within the probe's bar (:func:`usage.probe_bar`) on the traveling
        rows (:func:`usage.share_at_probe`) go to ``metrics.json`` (the bar itself, ``probe_bar``, is
        :meth:`diagnose`'s, recorded with or without traveling subjects). Returns (table, figure); (None, None)
        without traveling subjects."""
        run, test = self.run, self.test_set
        if not self.traveling:
            return None, None
        feats = usage.features(self.model, test)
        names = {"zc": "z^c", "inputs": "inputs", "inputs_detail": "inputs' detail"}  # metrics.json key: code
        control = usage.probe_control({name: feats[key] for key, name in names.items()}, test)
        chance = float(control.chance.iloc[0])
        bar = usage.probe_bar(chance)
        plots.save_table(control.drop(columns="chance"), self.key + "_probe_control", run.figures,
                         note="Scanner probe (folds by subject) and scanner share of z^c, the inputs and their detail "
                              "with each anatomy's scanner-to-scanner deviations multiplied by `scale`; "
                              + plots.SIMULATED + ".")
        fig = plots.probe_control(control, chance, bar, f"{self.label}: the z^c probe beside its controls; "
                                  + plots.SIMULATED)
        plots.save_figure(fig, self.key + "_probe_control", run.figures)
        found = {f"share_{c}_at_probe_bar": usage.share_at_probe(control, names[c], bar) for c in ("zc", "inputs")}
        # the two readings of the inputs as they are (scale 1)
        found |= {f"probe_{c}": float(control.probe[(control.code == names[c]) & (control.scale == 1)].item())
                  for c in ("inputs", "inputs_detail")}
        self._add_metrics(found)
        return control, fig

    def known_labels_ablation(self, below: float = E1_BAR, retrain: bool = False) -> Experiment | str:
        """GMM-DRIT trained again with the true scanner labels as its codes (``known_labels``), when
        stage 1 does not find the scanners: E1 ACC (notebook 02) below ``below`` (above 1: always). Its
        inferred codes then misname the scanner of many slices, and GMM-DRIT against DRIT++ compares
        stage 1's errors as well as stage 2. Returns the ablation, trained (``retrain``: afresh) or
        loaded, or why it was not trained. `make run` trains it in its other lane
        (:mod:`nbutils.pipeline`) while notebook 03 trains this model; 03 then loads it."""
        if self.method != methods.GMM_DRIT or self.known_labels:
            return "only GMM-DRIT with inferred codes has a known-labels ablation"
        if why_not := no_known_labels(self.run, below):
            return why_not
        ablation = Experiment(self.run, self.method, known_labels=True, steps=self.steps, options=self.options)
        # its initial weights from the run's seed, not from whatever this process drew before (which
        # differs when the model above was trained rather than loaded)
        seed_everything(self.run.seed)
        ablation.train(retrain)
        return ablation

    def beside_known_labels(self, below: float = E1_BAR, retrain: bool = False) -> pd.DataFrame | str:
        """The known-labels ablation (:meth:`known_labels_ablation`) scored and diagnosed as this model
        was (its own section of ``metrics.json`` and figures, :attr:`key` + ``_known_labels``); returns
        the headline numbers of both side by side (saved as a table), or why it was not trained."""
        ablation = self.known_labels_ablation(below, retrain)
        if isinstance(ablation, str):
            return ablation
        acc = read_metrics(self.run.dir)["02_gmvae"]["ACC"]
        ablation.translation_grid()
        ablation.score()
        ablation.source_maps()
        ablation.diagnose()
        ablation.probe_control()
        sections = {f"{self.label} (inferred codes, E1 ACC {acc:.3f})": self._section(),
                    ablation.label: ablation._section()}
        keys = [k for k in BESIDE if any(k in sec for sec in sections.values())]  # e.g. no clean truth in a CSV
        table = pd.DataFrame({name: [sec.get(k, np.nan) for k in keys] for name, sec in sections.items()},
                             index=pd.Index([BESIDE[k] for k in keys], name="measure")).round(4).reset_index()
        plots.save_table(table, self.key + "_beside_known_labels", self.run.figures,
                         note=f"Stage 1 does not find the scanners (E1 ACC {acc:.3f} < {below:.2f}): GMM-DRIT with the "
                              "codes its frozen GM-VAE infers, beside GMM-DRIT trained with the true labels as codes "
                              "(which also leaves out the tone curve and field E^c undoes: they need inferred codes); "
                              + plots.SIMULATED + ".")
        return table
