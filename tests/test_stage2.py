"""The stage-2 notebooks' experiment helpers (nbutils.stage2)."""
import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from test_drit import tiny_gmvae
from test_paired import traveling

from nbutils import config, drit, methods, paired, stage2
from nbutils.data import Slices
from nbutils.harmonize import Harmonizer


@pytest.mark.parametrize("variant", ["drit++", "gmm-drit"])
def test_the_learning_curve_reuses_the_model_s_own_outputs_for_the_snapshot_with_its_weights_only(tmp_path, variant):
    test = traveling(n=4, k=2)
    shape = test.images.shape[1:]
    cfg = drit.DRITConfig(image_shape=shape, k=2, variant=variant, width=4, attr=8, n_res=1)
    gm = tiny_gmvae(shape, k=2) if variant == "gmm-drit" else None
    model, _ = drit.train_drit(test.images, test.labels, cfg, tmp_path / "m.pt", gmvae=gm, steps=4, batch_size=2,
                               every=2, snapshots=True, device="cpu")
    harm = Harmonizer(model, test, seed=0)
    own = harm.to_every_domain(test.images), harm.scanner_free(test.images, seed=0)
    curve = lambda m, own=None: stage2.learning_curve(tmp_path / "m.pt", m, test, test, "m", own=own)
    fresh = curve(model)
    assert list(fresh.step) == [2, 4]
    pd.testing.assert_frame_equal(curve(model, own), fresh)
    # the last row is made of the outputs handed over, the earlier snapshots' are not
    other = own[0] * 0.5, test.images.copy()
    reused = curve(model, other)
    pd.testing.assert_frame_equal(reused.iloc[:-1], fresh.iloc[:-1])
    assert reused.iloc[-1]["target_sensitivity"] != fresh.iloc[-1]["target_sensitivity"]
    assert reused.iloc[-1]["sf_structure"] != fresh.iloc[-1]["sf_structure"]
    # found by its weights, not by being last: a model that is no snapshot reuses nothing
    with torch.no_grad():
        next(model.generator.parameters()).add_(1e-3)
    pd.testing.assert_frame_equal(curve(model, other), fresh)


def test_the_learning_curve_scores_one_slice_per_anatomy_in_every_scanner(tmp_path):
    """The curve reads the middle slice of each subject, in every scanner that saw it (so the
    traveling pairs survive): the same curve as on that subset handed over, and not the curve of
    all slices."""
    base = traveling(n=3, k=2)
    test = base.take(np.repeat(np.arange(len(base)), 3))  # three slices per anatomy and scanner
    m = test.manifest
    m["slice_index"] = np.tile([4, 5, 6], len(base))
    test.images[m.slice_index.to_numpy() != 5] *= 0.5  # the other slices look different
    rows = stage2.middle_slices(test)
    assert (m.slice_index[rows] == 5).all() and len(rows) == len(base)
    assert sorted(map(tuple, m.loc[rows, ["subject", "domain"]].to_numpy())) == sorted(
        map(tuple, base.manifest[["subject", "domain"]].to_numpy()))
    sub = test.take(rows)
    assert np.array_equal(sub.images, test.images[rows]) and np.array_equal(sub.clean, test.clean[rows])
    assert list(sub.manifest.index) == list(range(len(rows)))
    shape = test.images.shape[1:]
    cfg = drit.DRITConfig(image_shape=shape, k=2, variant="drit++", width=4, attr=8, n_res=1)
    model, _ = drit.train_drit(test.images, test.labels, cfg, tmp_path / "m.pt", steps=4, batch_size=2,
                               every=2, snapshots=True, device="cpu")
    curve = stage2.learning_curve(tmp_path / "m.pt", model, test, test, "m")
    pd.testing.assert_frame_equal(curve, stage2.learning_curve(tmp_path / "m.pt", model, sub, test, "m"))
    harm = Harmonizer(model, test, seed=0)
    everything = paired.summary(paired.score_outputs(test, {"m": harm.to_every_domain(test.images)},
                                                     ceilings=False, progress=False))
    assert curve.iloc[-1]["ssim vs target scan"] != everything.loc["m", ("ssim", "target scan")]
    # the model's own outputs of every test slice are cut to the subset's rows too
    own = harm.to_every_domain(test.images), harm.scanner_free(test.images, seed=0)
    pd.testing.assert_frame_equal(stage2.learning_curve(tmp_path / "m.pt", model, test, test, "m", own=own), curve)


def test_the_curve_s_slice_is_one_every_scanner_saw():
    """Scanners that kept different slices of a subject (a user's CSV): the slice seen by the most
    scanners, the middle of those; every row when no slice is seen by two scanners."""
    base = traveling(n=2, k=3)
    test = base.take([0, 0, 1, 1, 1, 2, 3, 4, 5])  # subject t0: s0 saw 4, 5; s1 saw 5, 6, 7; s2 saw 9
    test.manifest["slice_index"] = [4, 5, 5, 6, 7, 9, 0, 0, 0]
    rows = stage2.middle_slices(test)
    assert list(test.manifest.loc[rows, "slice_index"]) == [5, 5, 0, 0, 0]
    lonely = base.take([0, 1, 2])
    lonely.manifest["slice_index"] = [1, 2, 3]
    assert list(stage2.middle_slices(lonely)) == [0, 1, 2]


def test_scoring_again_keeps_what_was_added_for_the_same_checkpoint_and_drops_it_for_another(tmp_path):
    """Re-running score() after diagnose() (JupyterLab) keeps the diagnostics of that checkpoint;
    after retraining, a section written for the old checkpoint is not carried over."""
    run = config.setup("smoke", str(tmp_path / "run"))
    exp = object.__new__(stage2.Experiment)  # no slices needed: a run without traveling subjects
    exp.run, exp.method, exp.known_labels = run, methods.get("gmm-drit"), False
    exp.key, exp.traveling, exp.stamp, exp.options = exp.method.section, False, None, {}
    exp.history = pd.DataFrame(dict(step=[5, 10]))
    checkpoint = run.checkpoints / exp.method.checkpoint()
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.write_bytes(b"first")
    section = lambda: config.read_metrics(run.dir)[exp.key]
    exp.score()
    exp._add_metrics({"target_sensitivity": 0.7})
    exp.history = pd.DataFrame(dict(step=[5, 15]))  # what score() writes itself is rewritten
    exp.score()
    assert section()["target_sensitivity"] == 0.7 and section()["steps"] == 15
    assert section()["checkpoint"].startswith(checkpoint.name)
    checkpoint.write_bytes(b"retrained")
    exp.history = pd.DataFrame(dict(step=[20]))
    exp.score()
    assert "target_sensitivity" not in section() and section()["steps"] == 20


def test_only_gmm_drit_with_inferred_codes_draws_and_undoes_a_tone_curve_and_field():
    """The curve and the field that E^c undoes are drawn from the image's own inferred code, which
    DRIT++ and the ``known_labels`` ablation (labels as codes) do not have."""
    p = config.PROFILES["quick"]
    gm = stage2.model_config(p, (182, 182), 4, "gmm-drit")
    assert gm.content_field and gm.tone_curve == stage2.TONE_KNOTS > 0 and gm.tone_floor == stage2.TONE_FLOOR > 0
    for cfg in (stage2.model_config(p, (182, 182), 4, "gmm-drit", known_labels=True),
                stage2.model_config(p, (182, 182), 4, "drit++")):
        assert not cfg.content_field and cfg.tone_curve == 0 and cfg.tone_floor == 0


def test_options_replace_the_profile_s_stage_2_settings_and_bad_ones_are_explained(tmp_path, monkeypatch):
    p = config.PROFILES["quick"]
    plain = stage2.model_config(p, (182, 182), 4, "gmm-drit")
    tried = stage2.model_config(p, (182, 182), 4, "gmm-drit", options={"dc_steps": 3, "tone_curve": 0})
    assert tried.dc_steps == 3 and tried.tone_curve == 0 and plain.dc_steps == 1 and plain.tone_curve > 0
    assert dataclasses.replace(tried, dc_steps=1, tone_curve=plain.tone_curve) == plain
    assert stage2.parse_options("") == stage2.parse_options(None) == {}
    assert stage2.parse_options('{"dc_steps": 3, "dc_lr": 0.4}') == {"dc_steps": 3, "dc_lr": 0.4}
    for bad, message in (('{"dc_steps": 3', "JSON object"), ("[3]", "JSON object"), ('"x"', "JSON object"),
                         ('{"k": 3}', r"unknown stage-2 option\(s\) k: options may set .*dc_steps"),
                         ('{"nope": 1, "image_shape": [8, 8]}', r"option\(s\) image_shape, nope")):
        with pytest.raises(ValueError, match=message):
            stage2.parse_options(bad)
    for bad, message in (('{"dc_steps": "3"}', "dc_steps must be int"), ('{"dc_steps": 2.5}', "must be int"),
                         ('{"dc_norm": 1}', "dc_norm must be bool"), ('{"w_adv": null}', "w_adv must be float"),
                         ('{"padding": 0}', "must be str")):
        with pytest.raises(ValueError, match=message):
            stage2.parse_options(bad)
    assert stage2.parse_options('{"w_adv": 2}') == {"w_adv": 2}  # an int where a float is due
    with pytest.raises(ValueError, match="content_field"):  # the settings' own checks still apply
        stage2.model_config(p, (182, 182), 4, "drit++", options={"content_field": True})
    # checked for every model notebooks 03/04 train: GMM-DRIT, its known-labels model, DRIT++
    assert stage2.check_options(p, '{"dc_steps": 3, "dc_lr": 0.4}') == {"dc_steps": 3, "dc_lr": 0.4}
    for bad, who in (('{"w_field_layout": 1.0}', "DRIT\\+\\+"),
                     ('{"content_field": true}', "GMM-DRIT with known labels"), ('{"padding": "wrap"}', "GMM-DRIT: padding")):
        with pytest.raises(ValueError, match=f"cannot be given to {who}"):
            stage2.check_options(p, bad)
    run = config.setup("smoke", str(tmp_path / "run"))
    monkeypatch.setattr(stage2, "slices_for_run", lambda run, split: [])
    monkeypatch.setattr(stage2.paired, "has_traveling", lambda test: False)
    seen = []

    class Started(Exception):
        pass

    def train_variant(*args):
        seen.append(args[-1])
        raise Started

    monkeypatch.setattr(stage2, "train_variant", train_variant)
    exp = stage2.Experiment(run, methods.DRITPP, options='{"dc_steps": 2}')
    assert 'options {"dc_steps": 2}' in str(exp)
    with pytest.raises(Started):
        exp.train()
    assert seen == [{"dc_steps": 2}]


def test_the_known_labels_ablation_starts_from_the_run_s_seed_whatever_the_kernel_drew_before(tmp_path, monkeypatch):
    """Notebook 03 trains the ablation after many cells that draw random numbers, and what they draw
    depends on whether the model above was trained or loaded: its initial weights must not."""
    run = config.setup("smoke", str(tmp_path / "run"), seed=5)
    run.record("02_gmvae", {"ACC": 0.5})
    monkeypatch.setattr(stage2, "slices_for_run", lambda run, split: None)
    monkeypatch.setattr(stage2.paired, "has_traveling", lambda test: False)

    class Started(Exception):
        pass

    seen = []

    def train_variant(*args, **kwargs):  # what the networks' initial weights would be drawn from
        seen.append(torch.rand(3))
        raise Started

    monkeypatch.setattr(stage2, "train_variant", train_variant)
    exp = stage2.Experiment(run, methods.GMM_DRIT)
    for before in (0, 7):
        torch.rand(before)
        with pytest.raises(Started):
            exp.beside_known_labels()
    config.seed_everything(5)
    assert torch.equal(seen[0], seen[1]) and torch.equal(seen[0], torch.rand(3))


TOY_GAMMAS, TOY_LEVELS = (0.5, 2.0), (0.45, 0.9)  # the toy scanners' contrast curves; the disc's ring and core


def toy_contrast_scanners(n: int, seed: int, both: bool = False, size: int = 48) -> Slices:
    """Two toy 'scanners' that see the same kind of 'anatomy' (a disc with a brighter core, of random size and place,
    the core anywhere inside it) through opposite contrast curves, base ** 0.5 and base ** 2, with a little noise: the
    translation of an image to the other scanner is known, that scanner's rendering of the same anatomy (``both``:
    every anatomy by both scanners, a traveling-subject split; the Slices' ``clean``: the renderings without noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images, clean, masks, labels, subjects = [], [], [], [], []
    for i in range(n):
        cy, cx = rng.uniform(17, size - 17, 2)
        r, core = rng.uniform(10, 15), rng.uniform(3, 7)
        angle, off = rng.uniform(0, 2 * np.pi), rng.uniform(0, r - core - 1)  # the core anywhere inside the disc
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        c2 = (yy - cy - off * np.sin(angle)) ** 2 + (xx - cx - off * np.cos(angle)) ** 2
        base = TOY_LEVELS[0] * (d2 < r * r) + (TOY_LEVELS[1] - TOY_LEVELS[0]) * (c2 < core * core)
        for b in (0, 1) if both else (i % 2,):
            clean.append(base ** TOY_GAMMAS[b])
            images.append(np.clip(clean[-1] + rng.normal(0, 0.02, base.shape) * (d2 < r * r), 0, 1))
            masks.append(d2 < r * r)
            labels.append(b)
            subjects.append(f"x{i}")
    manifest = pd.DataFrame(dict(domain=[f"s{b}" for b in labels], domain_index=labels, subject=subjects))
    return Slices(np.array(images, np.float32), np.array(masks), np.array(clean, np.float32), manifest, ["s0", "s1"])


@pytest.mark.parametrize("variant", ["drit++", "gmm-drit"])
def test_both_models_learn_to_translate_toward_the_target_and_to_a_common_look_on_toy_scanners(tmp_path, variant):
    """Does stage 2 learn what it should? On a toy whose answer is known, each model as the notebooks configure it
    (`stage2.model_config` with the smoke profile's 32 px windows, 32 px views and one residual block, at the quick
    profile's width 8; GMM-DRIT over a GM-VAE trained on the toy, with its inferred codes, tone curve and field) is
    trained for 300 iterations on the CPU and must
    (a) translate an image of one scanner toward the other within half the input's (identity's) error against that
        scanner's rendering of the same disc, and within 0.9 of the error of the target scanner's mean training image
        (an answer that ignores the anatomy);
    (b) keep the anatomy inside the disc: the translation's core stands out from the rest of the disc by at least 0.4
        of what it does in the target's scans (a disc painted flat at any level scores 0, and the mask alone gives
        the outline: by mean error alone a flat disc at the target's median level is about as close as these models);
    (c) move its output when only the target changes, at least half as far as the two renderings differ (target
        sensitivity; the first version's generator, which ignored its target, moved it by 0.002 against 0.09);
    (d) give one disc from the two scanners scanner-free outputs less than half as far apart as the inputs.

    It runs stage 2's seed 0. As configured (without `tone_extend`) GMM-DRIT fails (b) in seed 1 of the three seeds
    measured (0.25 / 0.28), and DRIT++'s seed 2 keeps 0.45: another CPU's rounding acting like another seed could fail
    it. Measured, and the mutations that fail it: docs/experiments.md, "A toy where the answer is known"."""
    from nbutils import clustering, gmvae

    train, test = toy_contrast_scanners(64, seed=0), toy_contrast_scanners(8, seed=1, both=True)
    p = dataclasses.replace(config.PROFILES["smoke"], drit_width=config.PROFILES["quick"].drit_width)
    gm = None
    if variant == "gmm-drit":
        gm, _ = gmvae.train_gmvae(train.images, 2, tmp_path / "gmvae.pt", width=p.gmvae_width, steps=200,
                                  batch_size=32, every=10**9, view=p.view, device="cpu", **gmvae.preset("appearance"))
        inferred = gmvae.encode_all(gm, train.images)["prob"].argmax(1)
        assert clustering.accuracy(train.labels, inferred) > 0.95  # stage 1 finds these scanners (measured: 1.0)
    cfg = stage2.model_config(p, (48, 48), 2, variant, attr=gm.cfg.gaussian_size if gm else 64)
    model, _ = drit.train_drit(train.images, train.labels, cfg, tmp_path / "stage2.pt", gmvae=gm, steps=300,
                               batch_size=p.drit_batch, every=10**9, masks=train.masks, device="cpu")
    harm = Harmonizer(model, train, seed=0)
    x, clean, labels, masks = np.asarray(test.images), np.asarray(test.clean), test.labels, np.asarray(test.masks)
    every = harm.to_every_domain(x)  # (target, image, H, W)
    for a, b in ((0, 1), (1, 0)):  # the traveling pairs: row i of x[labels == a] is the anatomy of x[labels == b]'s
        source, target, inside = x[labels == a], x[labels == b], masks[labels == b]
        out = every[b][labels == a]
        error = np.abs(out - target)[inside].mean()
        identity = np.abs(source - target)[inside].mean()
        mean_image = np.abs(np.asarray(train.images)[train.labels == b].mean(0) - target)[inside].mean()
        assert error < 0.5 * identity and error < 0.9 * mean_image, (a, b, error, identity, mean_image)
        core = clean[labels == b] > np.mean(np.power(TOY_LEVELS, TOY_GAMMAS[b]))
        rest = inside & ~core
        kept, shown = out[core].mean() - out[rest].mean(), target[core].mean() - target[rest].mean()
        assert kept > 0.4 * shown, (a, b, kept, shown)
    differ = np.abs(x[labels == 0] - x[labels == 1])[masks[labels == 0]].mean()
    moved = np.abs(every[0] - every[1])[masks].mean()
    assert moved > 0.5 * differ, (moved, differ)
    free = harm.scanner_free(x)
    apart = np.abs(free[labels == 0] - free[labels == 1])[masks[labels == 0]].mean()
    assert apart < 0.5 * differ, (apart, differ)
