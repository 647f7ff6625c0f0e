"""The yardstick (nbutils.paired, nbutils.metrics' blur control, nbutils.supervised) on toy
traveling subjects where the right answer is known."""
import numpy as np
import pandas as pd
import pytest
from scipy.ndimage import gaussian_filter

from nbutils import metrics, paired, supervised
from nbutils.data import Slices

SIZE = 32


def anatomy(rng):
    """A smooth random 'brain': a disc with a textured interior (values in about [0.2, 0.8])."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    disc = (yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2 < (SIZE * 0.42) ** 2
    texture = gaussian_filter(rng.normal(0, 1, (SIZE, SIZE)), 1.5)
    return (0.5 + 0.3 * texture / texture.std()).clip(0.05, 0.95) * disc, disc


GAINS = (1.0, 0.7, 0.5)  # scanner b's contrast curve: x ** (1 / gain)... kept simple: a power law


def scan(clean, disc, b, rng, noise=0.03):
    """Scanner b: its contrast curve (the clean truth), plus blur and noise (the nuisance)."""
    return np.clip(gaussian_filter(clean, 0.6 * b) + rng.normal(0, noise, clean.shape), 0, 1) * disc


def traveling(n=6, k=3, seed=0, noise=0.03) -> Slices:
    """n anatomies, each seen by k toy scanners; clean truth and an independent rescan kept."""
    rng = np.random.default_rng(seed)
    images, masks, clean, rescan, rows = [], [], [], [], []
    for s in range(n):
        base, disc = anatomy(rng)
        for b in range(k):
            truth = base ** GAINS[b] * disc
            images.append(scan(truth, disc, b, rng, noise))
            rescan.append(scan(truth, disc, b, rng, noise))
            clean.append(truth)
            masks.append(disc)
            rows.append(dict(subject=f"t{s}", slice_index=0, domain=f"s{b}", domain_index=b))
    f = lambda a: np.array(a, np.float32)
    return Slices(f(images), np.array(masks), f(clean), pd.DataFrame(rows), [f"s{b}" for b in range(k)], f(rescan))


def test_pairs_include_same_scanner_and_need_traveling_subjects():
    test = traveling(n=2, k=3)
    pairs = paired.traveling_pairs(test)
    assert len(pairs) == 2 * 3 * 3 and (pairs.src == pairs.dst).sum() == 6
    lonely = Slices(test.images[:2], test.masks[:2], None,
                    pd.DataFrame(dict(subject=["a", "b"], slice_index=0, domain=["s0", "s1"], domain_index=[0, 1])),
                    ["s0", "s1"])
    with pytest.raises(ValueError, match="traveling subjects"):
        paired.traveling_pairs(lonely)


def test_identity_on_same_scanner_pairs_scores_the_rescan_ceiling_exactly():
    test = traveling()
    k = len(test.domains)
    images = np.asarray(test.images)
    scores = paired.score_outputs(test, {"identity": np.broadcast_to(images, (k, *images.shape))}, progress=False)
    same = scores[(scores.source == scores.target) & (scores.reference == paired.TARGET_SCAN)]
    ident = same[same.method == "identity"].reset_index(drop=True)
    ceiling = same[same.method == paired.RESCAN_CEILING].reset_index(drop=True)
    np.testing.assert_allclose(ident[["ssim", "psnr", "mae"]], ceiling[["ssim", "psnr", "mae"]])
    # each ceiling is scored against its own reference only
    assert set(scores[scores.method == paired.RESCAN_CEILING].reference) == {paired.TARGET_SCAN}
    assert set(scores[scores.method == paired.SCAN_CEILING].reference) == {paired.CLEAN_TRUTH}


def test_a_perfect_translator_reaches_both_ceilings_and_the_truth_beats_them():
    """Output = another acquisition of the target (what a perfect translator makes): on average it
    scores what the ceilings say. Output = the clean truth: SSIM 1 against the truth."""
    test = traveling(n=10, seed=1)
    k, n = len(test.domains), len(test.images)
    pairs = paired.traveling_pairs(test)
    rng = np.random.default_rng(7)
    third = np.zeros((k, n, SIZE, SIZE), np.float32)
    truth = np.zeros_like(third)
    for p in pairs.itertuples():
        b = test.domains.index(p.target)
        third[b, p.src] = scan(test.clean[p.dst], test.masks[p.dst], b, rng)
        truth[b, p.src] = test.clean[p.dst]
    scores = paired.score_outputs(test, {"another scan": third, "truth": truth}, progress=False)
    table = paired.summary(scores)
    assert table.loc["another scan", ("ssim", "target scan")] == pytest.approx(
        table.loc[paired.RESCAN_CEILING, ("ssim", "target scan")], abs=0.01)
    assert table.loc["another scan", ("ssim", "clean truth")] == pytest.approx(
        table.loc[paired.SCAN_CEILING, ("ssim", "clean truth")], abs=0.01)
    assert table.loc["truth", ("ssim", "clean truth")] == pytest.approx(1.0)
    assert table.loc["truth", ("ssim", "clean truth")] > table.loc[paired.SCAN_CEILING, ("ssim", "clean truth")]


@pytest.mark.parametrize("keep", ["both", "no rescan", "no clean truth"])
def test_every_row_of_the_scores_is_the_translation_scored_pair_by_pair_against_its_reference(keep):
    """Row by row, in the order pair, method, reference (then the ceilings), each score is that of
    the translation of row src to dst's scanner, computed alone: against dst's scan for a ≠ b, its
    rescan for a == b, and its clean truth, inside dst's mask. Without a rescan the a == b pairs
    have no target-scan rows and there is no rescan ceiling; without the clean truth, no clean-truth
    rows and no scan ceiling."""
    full = traveling(n=3, k=3, seed=2)
    test = Slices(full.images, full.masks, None if keep == "no clean truth" else full.clean, full.manifest,
                  full.domains, None if keep == "no rescan" else full.rescan)
    rng = np.random.default_rng(3)
    outs = {m: np.clip(np.asarray(test.images)[None] + rng.normal(0, s, (3, *test.images.shape)), 0, 1).astype(np.float32)
            for m, s in (("one", 0.05), ("two", 0.2))}
    scores = paired.score_outputs(test, outs, progress=False)
    expected = []
    for p in paired.traveling_pairs(test).itertuples():
        b, mask = test.domains.index(p.target), test.masks[p.dst]
        refs = {}
        if p.src != p.dst or test.rescan is not None:
            refs[paired.TARGET_SCAN] = (test.images if p.src != p.dst else test.rescan)[p.dst]
        if test.clean is not None:
            refs[paired.CLEAN_TRUTH] = test.clean[p.dst]
        row = lambda method, image, ref, r: dict(method=method, source=p.source, target=p.target, reference=r,
                                                  ssim=metrics.ssim(image, ref, mask), psnr=metrics.psnr(image, ref, mask),
                                                  mae=metrics.mae(image, ref, mask))
        expected += [row(m, o[b][p.src], ref, r) for m, o in outs.items() for r, ref in refs.items()]
        if test.rescan is not None:
            expected.append(row(paired.RESCAN_CEILING, test.images[p.dst], test.rescan[p.dst], paired.TARGET_SCAN))
        if test.clean is not None:
            expected.append(row(paired.SCAN_CEILING, test.images[p.dst], test.clean[p.dst], paired.CLEAN_TRUTH))
    pd.testing.assert_frame_equal(scores, pd.DataFrame(expected), check_exact=True)
    assert (keep == "no rescan") == ~scores["method"].eq(paired.RESCAN_CEILING).any()


def test_pair_matrix_has_every_pair_and_a_row_per_ceiling():
    test = traveling(n=3)
    k = len(test.domains)
    images = np.asarray(test.images)
    scores = paired.score_outputs(test, {"identity": np.broadcast_to(images, (k, *images.shape))}, progress=False)
    mat = paired.pair_matrix(scores, "ssim", paired.TARGET_SCAN)
    assert list(mat.index) == ["identity", paired.RESCAN_CEILING] and mat.shape[1] == k * k
    assert (mat.loc["identity", "s0 → s0"]) == pytest.approx(mat.loc[paired.RESCAN_CEILING, "s0 → s0"])
    assert mat.loc["identity", "s0 → s2"] < mat.loc[paired.RESCAN_CEILING, "s0 → s2"]


def test_oracle_matches_the_truth_histogram():
    test = traveling(n=3)
    oracle = paired.oracle_outputs(test)
    scores = paired.score_outputs(test, {"oracle": oracle, "identity": np.broadcast_to(test.images, oracle.shape)},
                                  progress=False)
    table = paired.summary(scores)
    assert table.loc["oracle", ("mae", "clean truth")] < table.loc["identity", ("mae", "clean truth")]


def test_effective_blur_recovers_a_known_sigma_whatever_the_contrast():
    rng = np.random.default_rng(3)
    imgs, masks = zip(*(anatomy(rng) for _ in range(8)))
    imgs, masks = np.array(imgs, np.float32), np.array(masks)
    for sigma in (0.0, 1.0, 2.0):
        for curve in (lambda x: 0.6 * x + 0.2, lambda x: x ** 0.5):  # a linear and a non-linear contrast
            outputs = curve(metrics.blur(imgs, sigma)) * masks
            assert metrics.effective_blur(imgs, outputs, masks) == pytest.approx(sigma, abs=0.26)


def test_noisy_inputs_make_the_blur_control_stronger_not_weaker():
    rng = np.random.default_rng(4)
    imgs, masks = zip(*(anatomy(rng) for _ in range(8)))
    imgs, masks = np.array(imgs, np.float32), np.array(masks)
    noisy = np.clip(imgs + rng.normal(0, 0.05, imgs.shape), 0, 1) * masks
    outputs = metrics.blur(imgs, 1.0) * masks
    assert metrics.effective_blur(noisy, outputs, masks) >= metrics.effective_blur(imgs, outputs, masks)


def test_sharpness_falls_with_blur_and_measures_the_slope():
    img, mask = anatomy(np.random.default_rng(0))
    assert metrics.sharpness(metrics.blur(img, 2), mask) < metrics.sharpness(img, mask)
    ramp = np.tile(np.arange(16, dtype=float), (16, 1))  # slope 1 per pixel
    inner = np.zeros(ramp.shape, bool)
    inner[2:-2, 2:-2] = True  # Sobel's edges are reflected: score the inside
    assert metrics.sharpness(ramp, inner) == pytest.approx(1.0)


def test_blur_control_agrees_better_than_noisy_inputs_and_exposes_a_blurring_harmonizer():
    test = traveling(n=6)
    images = np.asarray(test.images)
    only_blur = metrics.blur(images, 1.5)  # a 'harmonizer' that only smooths
    # a real harmonizer: every scanner's slice of an anatomy becomes the same (scanner s0's truth)
    first = {s: i for i, s in reversed(list(enumerate(test.manifest.subject)))}
    same = np.stack([test.clean[first[s]] for s in test.manifest.subject])
    table = paired.agreement_table(test, {"only blur": only_blur, "harmonizer": same}).set_index("method")
    assert table.loc["only blur", "blur_control"] > table.loc["only blur", "inputs"]  # blur alone agrees better
    assert table.loc["harmonizer", "blur_control"] >= table.loc["harmonizer", "inputs"]  # sharp outputs: sigma ~ 0
    sigmas = [float(v) for v in table.loc["only blur", "blur_sigma_px"].split(" / ")]
    assert sigmas == pytest.approx([1.5] * len(test.domains), abs=0.26)  # one per scanner
    assert not table.loc["only blur", "beats_inputs_and_blur"]
    assert table.loc["harmonizer", "beats_inputs_and_blur"] and table.loc["harmonizer", "margin_ci_low"] > 0
    assert table.loc["harmonizer", "outputs"] == pytest.approx(1.0)
    # the truth under another contrast curve puts its darkest pixels where the truth's are; blurring does not
    assert table.loc["harmonizer", "dark_overlap"] == pytest.approx(1.0)
    assert table.loc["only blur", "dark_overlap"] < 0.9


def test_the_agreement_margin_s_interval_resamples_whole_subjects_not_their_slices():
    """A subject's adjacent slices stand or fall together: three copies of each anatomy as slices 0, 1, 2
    give the interval of the anatomies alone, not one narrower by about 1 / sqrt(3)."""
    test = traveling(n=8)
    rng = np.random.default_rng(5)
    first = {s: i for i, s in reversed(list(enumerate(test.manifest.subject)))}
    # each anatomy's first scan, with noise of its own: outputs that agree, some anatomies better than others
    outputs = np.stack([np.clip(test.images[first[s]] + rng.normal(0, rng.uniform(0, 0.1), test.images.shape[1:]), 0, 1)
                        for s in test.manifest.subject]).astype(np.float32) * test.masks
    rows = [i for s in test.manifest.subject.unique() for _ in range(3)
            for i in np.flatnonzero(test.manifest.subject == s)]
    copies = test.manifest.iloc[rows].reset_index(drop=True)
    copies["slice_index"] = [j for _ in test.manifest.subject.unique() for j in range(3) for _ in test.domains]
    tripled = Slices(test.images[rows], test.masks[rows], test.clean[rows], copies, test.domains, test.rescan[rows])
    once = paired.agreement_table(test, {"m": outputs}).iloc[0]
    thrice = paired.agreement_table(tripled, {"m": outputs[rows]}).iloc[0]
    assert thrice["n_anatomies"] == 3 * once["n_anatomies"]
    assert thrice["margin"] == pytest.approx(once["margin"])
    assert (thrice["margin_ci_low"], thrice["margin_ci_high"]) == pytest.approx((once["margin_ci_low"], once["margin_ci_high"]))
    assert once["margin_ci_low"] < once["margin"] < once["margin_ci_high"]


def test_blur_control_in_threads_gives_each_scanner_its_own_sigma_and_rows(monkeypatch):
    from nbutils import parallel

    test = traveling(n=4)
    images, masks = np.asarray(test.images, np.float32), np.asarray(test.masks, bool)
    outputs = np.empty_like(images)
    for b, sigma in enumerate((0.5, 1.0, 2.0)):  # each scanner's outputs blurred by its own sigma
        rows = test.labels == b
        outputs[rows] = metrics.blur(images[rows], sigma)
    expected, control = {}, np.empty_like(images)  # one scanner after the other, written out
    for b, name in enumerate(test.domains):
        rows = np.flatnonzero(test.labels == b)
        expected[name] = metrics.effective_blur(images[rows], outputs[rows], masks[rows])
        control[rows] = metrics.blur(images[rows], expected[name])
    assert len(set(expected.values())) == 3
    monkeypatch.setattr(parallel, "cores", lambda: 2)  # threads even on a 1-core machine
    sigmas, blurred = paired.blur_control(test, outputs)
    assert sigmas == expected and list(sigmas) == list(test.domains)
    np.testing.assert_array_equal(blurred, control)


def toy_scans(subjects: int, scanners: int):
    """Every anatomy p0, p1, ... seen by toy scanners s0, s1, ... that differ by a contrast curve
    only: (images, manifest rows), anatomy by anatomy."""
    rng = np.random.default_rng(0)
    images, rows = [], []
    for s in range(subjects):
        base, disc = anatomy(rng)
        for b in range(scanners):
            images.append(base ** GAINS[b] * disc)
            rows.append(dict(subject=f"p{s}", slice_index=0, domain=f"s{b}", domain_index=b))
    return np.array(images, np.float32), rows


def test_paired_translator_learns_a_known_mapping_on_held_out_anatomy(tmp_path):
    """Toy scanners that differ by a contrast curve only: 300 iterations of the U-Net must bring
    the translation of an anatomy it never saw far closer to the target scan than the input is."""
    images, rows = toy_scans(13, 3)
    train, held_out = slice(3, None), slice(0, 3)  # anatomy p0 is never trained on
    pairs = Slices(images[train], images[train] > 0, None, pd.DataFrame(rows[3:]), ["s0", "s1", "s2"])
    assert supervised.pairs_of(pairs).shape == (12, 3)
    model, history = supervised.train_paired(pairs, tmp_path / "u.pt", width=8, steps=300, batch_size=8, every=300)
    assert history.l1.tail(20).mean() < 0.5 * history.l1.head(5).mean()
    out = supervised.to_target(model, images[held_out], [0, 1, 2])  # p0 seen by s0, s1, s2
    assert out.shape == (3, 3, SIZE, SIZE)
    some, sources = images[:7], np.repeat([0, 1, 2], 3)[:7]  # 7 slices: batches of 4 and 3 against one of 7
    np.testing.assert_array_equal(supervised.to_target(model, some, sources),
                                  supervised.to_target(model, some, sources, batch_size=7))
    err = np.abs(out[2, 0] - images[2]).mean()  # s0 -> s2 against s2's image of the same anatomy
    assert err < 0.5 * np.abs(images[0] - images[2]).mean()


def test_the_paired_translator_starts_from_the_same_weights_whatever_ran_before(tmp_path):
    """The pipeline trains it after the scanner classifier (nbutils.pipeline.prepare),
    notebook 09 right after setting the seed: the same weights either way."""
    import torch

    images, rows = toy_scans(4, 2)
    pairs = Slices(images, images > 0, None, pd.DataFrame(rows), ["s0", "s1"])
    weights = []
    for i, before in enumerate((0, 5)):
        torch.manual_seed(123)
        torch.randn(before)  # another history of the global random stream
        model, _ = supervised.train_paired(pairs, tmp_path / f"u{i}.pt", width=4, steps=2, batch_size=2, every=2, seed=7)
        weights.append(model.state_dict())
    for name, w in weights[0].items():
        assert torch.equal(w, weights[1][name]), name


def test_field_transfer_tells_the_target_field_from_the_source_field():
    """Known answers: toy scanners whose scans carry each its own smooth field (and rescans a field
    of another strength); a translation that draws b's field, with b's contrast or another one and
    a gain, is near b's field and far from a's in every pair, one that keeps a's field the other
    way round, and one without a field is far from both; the mean field drawn toward b is b's."""
    from dataclasses import replace
    test = traveling(n=8, seed=4)
    yy, xx = np.meshgrid(np.linspace(-1, 1, SIZE), np.linspace(-1, 1, SIZE), indexing="ij")
    shapes = [xx, -yy, xx**2 + yy**2 - 0.5]
    field = lambda b, strength=0.3: np.exp(strength * shapes[b]).astype(np.float32)
    labels = test.labels
    test = replace(test, images=np.array([im * field(b) for im, b in zip(test.images, labels)]),
                   rescan=np.array([im * field(b, 0.25) for im, b in zip(test.rescan, labels)]))
    k, n = len(test.domains), len(test.images)
    made = {name: np.zeros((k, n, SIZE, SIZE), np.float32) for name in ("draws b's", "b's, other contrast", "keeps a's", "none")}
    for p in paired.traveling_pairs(test).itertuples():
        b, a = test.domains.index(p.target), test.domains.index(p.source)
        truth = test.clean[p.dst]
        made["draws b's"][b, p.src] = truth * field(b)
        made["b's, other contrast"][b, p.src] = 1.3 * truth**1.6 * field(b)
        made["keeps a's"][b, p.src] = truth * field(a)
        made["none"][b, p.src] = truth
    t, fields = paired.field_transfer(test, made, n_pairs=30)
    t = t.set_index("method")
    assert list(t.index) == [*made, paired.RESCAN_CEILING]
    assert list(fields) == [paired.OWN_SCAN, *made, paired.RESCAN_CEILING]
    for name in ("draws b's", "b's, other contrast", paired.RESCAN_CEILING):
        assert t.loc[name, "nearer b's in"] == 1
        assert t.loc[name, "RMS to b's field"] < 0.06 < 0.12 < t.loc[name, "RMS to a's field"]
    assert t.loc["keeps a's", "nearer b's in"] == 0
    assert t.loc["keeps a's", "RMS to a's field"] < 0.06 < 0.12 < t.loc["keeps a's", "RMS to b's field"]
    assert min(t.loc["none", ["RMS to b's field", "RMS to a's field"]]) > 0.07
    for b in range(k):  # the mean field drawn toward b is b's, less its mean; none is flat
        inside = test.masks[test.labels == b].all(0)
        expected = np.log(field(b))[inside] - np.log(field(b))[inside].mean()
        error = np.abs(fields["draws b's"][b][inside] - expected).mean()
        assert error < 0.03 and error < 0.5 * np.abs(expected).mean()
        assert np.abs(fields["none"][b][inside]).max() < 0.02
    with pytest.raises(ValueError, match="clean truth"):
        paired.field_transfer(replace(test, clean=None), {})


def test_paired_rows_keep_scanner_columns_when_one_scanner_misses_an_anatomy():
    man = pd.DataFrame(dict(subject=["a", "a", "b", "b", "c"], slice_index=0,
                            domain=["s0", "s2", "s0", "s1", "s1"], domain_index=[0, 2, 0, 1, 1]))
    pairs = Slices(np.zeros((5, 4, 4), np.float32), np.ones((5, 4, 4), bool), None, man, ["s0", "s1", "s2"])
    np.testing.assert_array_equal(supervised.pairs_of(pairs), [[0, -1, 1], [2, 3, -1]])  # c: one scanner only


def test_the_field_gap_gives_back_exactly_a_smooth_field_and_nothing_to_noise():
    """Known answers: translations = the truth times a smooth field (a gain and a slope) come back to
    the truth once the oracle field of order 1 is divided out, and a gain alone gives back part of
    the loss; translations = the truth plus noise gain nothing from any field; the target scans are
    scored beside them."""
    test = traveling(n=8, seed=2)
    k, n = len(test.domains), len(test.images)
    yy, xx = np.meshgrid(np.linspace(-1, 1, SIZE), np.linspace(-1, 1, SIZE), indexing="ij")
    field = np.exp(0.3 + 0.4 * xx - 0.2 * yy).astype(np.float32)
    rng = np.random.default_rng(3)
    fielded, noisy = np.zeros((k, n, SIZE, SIZE), np.float32), np.zeros((k, n, SIZE, SIZE), np.float32)
    for p in paired.traveling_pairs(test).itertuples():
        b = test.domains.index(p.target)
        fielded[b, p.src] = test.clean[p.dst] * field
        noisy[b, p.src] = test.clean[p.dst] + rng.normal(0, 0.03, (SIZE, SIZE)) * test.masks[p.dst]
    gap = paired.field_gap(test, {"fielded": fielded, "noisy": noisy}, n_pairs=20).set_index("method")
    assert list(gap.index) == ["fielded", "noisy", paired.SCAN_CEILING]
    f = gap.loc["fielded"]
    assert f["field of order 1 divided out"] > 80 and f["field of order 3 divided out"] > 80  # exact to rounding
    assert f["as made"] < f["field of order 0 divided out"] < 40
    noise = gap.loc["noisy"]
    assert abs(noise["field of order 3 divided out"] - noise["as made"]) < 0.5
    assert paired.smooth_field(np.ones((4, 4)), np.ones((4, 4)), np.zeros((4, 4), bool)).tolist() == np.ones((4, 4)).tolist()
    with pytest.raises(ValueError, match="clean truth"):
        paired.field_gap(Slices(test.images, test.masks, None, test.manifest, test.domains, test.rescan), {})
