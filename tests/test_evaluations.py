"""E2-E7 scoring on small synthetic 'scanners' where the right answer is known."""
import dataclasses
import numpy as np
import pandas as pd
import pytest
import torch

from nbutils import classifier, evaluations, measures, metrics
from nbutils.data import Slices
from nbutils.outputs import Outputs


def scanners(n_per=12, k=3, size=24, seed=0):
    """k 'scanners' that see discs of random position through different brightness curves."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images, masks, labels, clean = [], [], [], []
    for b in range(k):
        for _ in range(n_per):
            cy, cx = rng.uniform(9, size - 9, 2)
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 < 36
            inner = (yy - cy) ** 2 + (xx - cx) ** 2 < 9
            base = 0.4 * disc + 0.3 * inner
            clean.append(base)
            images.append(np.clip(base ** (0.6 + 0.5 * b) + rng.normal(0, 0.02, base.shape) * disc, 0, 1))
            masks.append(disc)
            labels.append(b)
    manifest = pd.DataFrame(dict(domain=[f"s{b}" for b in labels], domain_index=labels,
                                 subject=[f"x{i}" for i in range(len(labels))]))
    return Slices(np.array(images, np.float32), np.array(masks), np.array(clean, np.float32), manifest,
                  [f"s{b}" for b in range(k)])


def outputs(test):
    images = np.asarray(test.images, np.float32)
    k = len(test.domains)
    # 'perfect': every scanner-free output is the clean image; translations too
    perfect = Outputs(np.asarray(test.clean, np.float32), np.broadcast_to(test.clean, (k, *images.shape)))
    return {"perfect": perfect, "identity": Outputs(images, np.broadcast_to(images, (k, *images.shape)))}


def test_e2_structure_is_one_for_the_identity_and_lower_for_noise():
    test = scanners()
    outs = outputs(test)
    rng = np.random.default_rng(1)
    outs["noise"] = Outputs(rng.random(test.images.shape).astype(np.float32), outs["identity"].to_target)
    s = evaluations.e2_structure(test, outs).groupby("method")["structure"].mean()
    assert s["identity"] == pytest.approx(1.0, abs=1e-6)
    assert s["noise"] < 0.3 < s["perfect"]


def test_e3_uses_the_same_pairs_for_every_method_and_real_targets_only():
    test = scanners()
    p = evaluations.e3_pairs(test.labels, 300)
    assert (np.bincount(p.target) == 300).all()  # M pairs for each target, as the thesis draws them
    assert (test.labels[p.real] == p.target).all() and (test.labels[p.real2] == p.target).all()
    assert (p.real != p.real2).all() and (test.labels[p.source] != p.target).all()
    outs = outputs(test)
    images = np.asarray(test.images, np.float32)
    shifted = np.stack([np.clip(images * (0.5 + 0.25 * b), 0, 1) for b in range(3)])  # a brightness per target
    outs["shifted"] = Outputs(images, shifted)
    df = evaluations.e3_luminance(test, outs, m=300)
    assert set(df["method"]) == {measures.REAL_VS_REAL, "perfect", "identity", "shifted"}
    assert (df.groupby(["method", "target"]).size() == 300).all() and df["target"].nunique() == 3
    assert df["luminance"].between(-1, 1).all()
    got = df[df["method"] == "shifted"]["luminance"].to_numpy()  # each pair: its real slice, its source's translation
    for i, q in enumerate(p.itertuples()):
        lum = metrics.ssim_components(images[q.real], shifted[q.target, q.source], test.masks[q.real],
                                      parts=("luminance",))["luminance"]
        assert got[i] == pytest.approx(lum, abs=1e-12)


def test_e3_pairs_compare_other_subjects_wherever_the_data_have_them():
    """Traveling subjects (every subject in every scanner): without subjects some pairs compare an anatomy
    with itself; with them none does. A scanner whose slices are all one subject's still gets pairs."""
    labels = np.repeat(np.arange(3), 8)
    subject = np.tile(np.repeat(np.arange(4), 2), 3)  # 4 subjects x 2 slices, in each of 3 scanners
    blind = evaluations.e3_pairs(labels, 2000)
    assert (subject[blind.source] == subject[blind.real]).any() and (subject[blind.real2] == subject[blind.real]).any()
    p = evaluations.e3_pairs(labels, 2000, groups=subject)
    assert (subject[p.source] != subject[p.real]).all() and (subject[p.real2] != subject[p.real]).all()
    assert (labels[p.real] == p.target).all() and (labels[p.real2] == p.target).all()
    assert (labels[p.source] != p.target).all()
    lonely = subject.copy()
    lonely[labels == 0] = 9  # scanner 0 saw one subject only
    q = evaluations.e3_pairs(labels, 2000, groups=lonely)
    on0 = q.target == 0
    assert on0.any() and (q.real2 != q.real).all() and (lonely[q.source] != lonely[q.real]).all()


def test_e2_to_e4_refuse_a_pair_with_nothing_to_score():
    test = scanners()
    masks = np.array(test.masks)
    masks[3] = False
    empty = Slices(test.images, masks, test.clean, test.manifest, test.domains)
    for evaluation in (evaluations.e2_structure, evaluations.e3_luminance, evaluations.e4_cross_scanner):
        with pytest.raises(ValueError, match="empty"):
            evaluation(empty, outputs(empty))


def test_e4_harmonized_outputs_agree_better_than_inputs():
    test = scanners()
    df = evaluations.e4_cross_scanner(test, outputs(test), m=200)
    mean = df.groupby("method")["luminance"].mean()
    assert "identity" not in mean  # it is 'before'
    assert mean["perfect"] > mean["before (inputs)"]
    # traveling subjects (each in every scanner): no pair compares an anatomy with itself
    traveling = dataclasses.replace(test, manifest=test.manifest.assign(subject=[f"x{i % 4}" for i in range(len(test))]))
    pairs = evaluations.e4_cross_scanner(traveling, outputs(traveling), m=200)
    assert len(pairs) == len(df) and (pairs["subject_i"] != pairs["subject_j"]).all()
    # one subject in every scanner: still M pairs, of two scanners
    alone = dataclasses.replace(test, manifest=test.manifest.assign(subject="x"))
    assert (evaluations.e4_cross_scanner(alone, outputs(alone), m=200).groupby("method").size() == 200).all()


def test_split_half_floor_keeps_each_subject_in_one_half():
    images = np.arange(9, dtype=np.float32)[:, None, None] * np.ones((9, 2, 2), np.float32)
    groups = np.array(["a", "a", "b", "b", "c", "c", "d", "d", "e"])
    for seed in range(5):
        a, b = evaluations.split_half(images, groups, seed=seed)
        sa, sb = set(groups[a[:, 0, 0].astype(int)]), set(groups[b[:, 0, 0].astype(int)])
        assert len(sa) == len(sb) == 2 and not sa & sb  # half the subjects each, the odd one out
        assert all((groups == g).sum() == np.isin(a[:, 0, 0].astype(int), np.flatnonzero(groups == g)).sum()
                   for g in sa)  # all of a subject's images together
    with pytest.warns(UserWarning, match="one subject"):  # a scanner of one training subject: slice by slice
        a, b = evaluations.split_half(images[:2], groups[:2])
    assert len(a) == len(b) == 1


@pytest.mark.parametrize("n_subjects, expected", [(2, 1), (3, 3), (4, 3), (5, 5), (40, 5)])
def test_the_floor_draws_different_splits(n_subjects, expected):
    # a split and its swap are one split: two subjects have one, three or four have three
    groups = np.repeat([f"s{i}" for i in range(n_subjects)], 3)
    splits = evaluations.floor_splits(groups, draws=5, seed=0)
    assert len(splits) == expected
    halves = [frozenset(frozenset(groups[h]) for h in split) for split in splits]
    assert len(set(halves)) == expected  # no two draws alike, by subjects
    for first, second in splits:
        assert len(first) >= len(second) > 0 and not set(groups[first]) & set(groups[second])
    # another run seed draws other splits (not the same draws shifted by one)
    other = evaluations.floor_splits(groups, draws=5, seed=1)
    if n_subjects == 40:
        assert not {tuple(f) for f, _ in splits} & {tuple(f) for f, _ in other}


def test_e4_falls_with_contrast_alone_and_the_contrast_control_takes_the_outputs_intensities():
    toy = scanners()
    masks = np.asarray(toy.masks, bool)
    gains = np.random.default_rng(2).uniform(0.7, 1.0, len(masks))[:, None, None]  # images of one scanner differ too
    images = np.asarray(toy.images, np.float32) * gains
    test = Slices(images, masks, toy.clean, toy.manifest, toy.domains)
    mu = images[masks].mean()
    stretched = np.where(masks, mu + 1.6 * (images - mu), images)  # more contrast, the scanners' curves kept
    control = evaluations.contrast_control(test, stretched)
    assert np.array_equal(control[~masks], images[~masks])  # the background is left as it was
    # every control image carries the outputs' pooled in-brain intensities (W1 between quantile functions)
    levels = np.linspace(0.01, 0.99, 99)
    pooled = np.quantile(stretched[masks], levels)
    w1 = [np.abs(np.quantile(c[m], levels) - pooled).mean() for c, m in zip(control, masks)]
    assert max(w1) < 0.01 < np.abs(np.quantile(images[masks], levels) - pooled).mean()
    k = len(test.domains)
    free = {"stretched": stretched, "its control": control,
            "inputs' control": evaluations.contrast_control(test, images)}
    outs = {name: Outputs(f, np.broadcast_to(f, (k, *images.shape))) for name, f in free.items()}
    mean = evaluations.e4_cross_scanner(test, outs, m=300).groupby("method")["luminance"].mean()
    # contrast alone lowers E4, with the scanners' curves kept or matched away; matching them away
    # raises it at either contrast
    assert mean["stretched"] < mean["before (inputs)"] < mean["inputs' control"]
    assert mean["stretched"] < mean["its control"] < mean["inputs' control"]


def test_the_floor_leaves_out_halves_too_small_to_compare():
    assert evaluations.floor_splits(np.array(["a"] * 5 + ["b"]), draws=5) == []  # b's half: one image
    with pytest.warns(UserWarning, match="one subject") as caught:  # slice by slice, warned once
        splits = evaluations.floor_splits(np.array(["a"] * 6), draws=5)
    assert len(caught) == 1 and len(splits) == 5 and all(len(first) == len(second) == 3 for first, second in splits)
    with pytest.raises(ValueError, match="at least one split"):
        evaluations.floor_splits(np.array(["a", "b"]), draws=0)


def test_fid_and_kid_separate_scanners_and_are_near_zero_within_one(tmp_path):
    test = scanners(n_per=40)
    clf, _ = classifier.train_classifier(test.images, test.labels, tmp_path / "clf.pt", width=4, steps=60,
                                         batch_size=16, every=60)
    acc = (classifier.predict(clf, test.images) == test.labels).mean()
    assert acc > 0.8
    feats = classifier.FeatureNet(clf)
    s0, s2 = test.domain(0)[0], test.domain(2)[0]
    a, b = evaluations.split_half(s0)
    same = evaluations.fid_kid(feats, a, b, subset=10)
    different = evaluations.fid_kid(feats, a, s2[:20], subset=10)
    assert different["fid"] > 5 * same["fid"] and different["kid"] > same["kid"]
    with pytest.raises(ValueError, match="at least two"):
        evaluations.fid_kid(feats, a[:1], b)
    # E5's table: per target, both controls and every method; b's own unseen scans lie near b's
    # training slices, other scanners' slices left untouched (identity) far from them
    unseen = scanners(n_per=12, seed=1)
    table = evaluations.e5_table(feats, test, unseen, outputs(unseen)).set_index(["target", "method"])
    assert set(table.index.get_level_values("method")) == {measures.FLOOR, measures.OWN_SCANS, "perfect", "identity"}
    for b in test.domains:
        assert table.loc[(b, measures.OWN_SCANS), "n_fake"] == 12 and table.loc[(b, "identity"), "n_fake"] == 24
        # the floor is the mean over five different subject splits (each slice its own subject here): their
        # FIDs differ by more than rounding; the other rows have no draws
        assert table.loc[(b, measures.FLOOR), "fid_draw_sd"] > 1e-3 * table.loc[(b, measures.FLOOR), "fid"]
        assert table.loc[(b, measures.FLOOR), "n_real"] == 20
        assert table["fid_draw_sd"].isna().sum() == len(table) - len(test.domains)
        assert table.loc[(b, measures.OWN_SCANS), "kid"] < table.loc[(b, "identity"), "kid"] / 5


def test_e7_wasserstein_drops_to_zero_when_scanners_share_one_appearance():
    test = scanners()
    outs = outputs(test)
    values, table = evaluations.e7_intensities(test, outs)
    w = table.set_index("method")["mean_pairwise_wasserstein"]
    assert w["identity"] > 0.05 and w["perfect"] < 0.02
    assert set(values["identity"]) == set(test.domains)
    assert np.isnan(table["sampling_floor"]).all()  # 1,300 voxels a scanner: no second sample of 20,000
    floor = evaluations.e7_intensities(test, outs, per_scanner=500)[1].set_index("method")["sampling_floor"]
    assert (floor > 0).all() and floor["identity"] < w["identity"] / 5  # what samples of one distribution read
    # every method's sample is of the same voxels, whatever the order of the methods
    again = evaluations.e7_intensities(test, dict(reversed(list(outs.items()))))[0]
    for meth in outs:
        for b in test.domains:
            np.testing.assert_array_equal(again[meth][b], values[meth][b])


def test_the_residual_scanner_is_read_on_each_draw_of_the_scanner_free_attribute(tmp_path):
    """One accuracy per seed, each on the outputs that seed's draw makes: a stub harmonizer whose
    even seeds give the scans back (the scanner fully readable) and odd seeds one scanner's
    appearance for all, and a classifier that tells the scanners apart; with subjects, the
    accuracy's CI brackets it; the matched accuracy finds sources shown in each other's looks."""
    test = scanners(n_per=40)
    clf, _ = classifier.train_classifier(test.images, test.labels, tmp_path / "clf.pt", width=4, steps=60,
                                         batch_size=16, every=60)
    one_look = np.repeat(test.domain(0)[0][:1], len(test.images), 0)

    class Stub:
        def scanner_free_draws(self, images, seeds):
            return [images if seed % 2 == 0 else one_look for seed in seeds]

    answers = classifier.predictions_over_draws(clf, Stub(), test.images, range(4))
    acc = [(a == test.labels).mean() for a in answers]
    assert len(acc) == 4 and acc[0] == acc[2] > 0.8 and acc[1] == acc[3] <= 0.5
    # where the answers go: the scans' draws on the diagonal, one look's draws in one column for every source
    k = len(test.domains)
    scans = classifier.confusion(test.labels, np.concatenate(answers[::2]), test.domains)
    np.testing.assert_allclose(np.diag(scans), [(answers[0] == test.labels)[test.labels == b].mean() for b in range(k)])
    look = classifier.confusion(test.labels, answers[1], test.domains)
    assert look.shape == (k, k) and list(look.index) == list(test.domains)
    np.testing.assert_allclose(look.sum(axis=1), 1)
    column = np.bincount(answers[1], minlength=k).argmax()
    assert (look.iloc[:, column] > 0.9).all()  # one common look: every source named the same scanner
    both = classifier.confusion(test.labels, np.concatenate(answers), test.domains)
    np.testing.assert_allclose(both, (scans + look) / 2)
    with pytest.raises(ValueError, match="not one or more per image"):
        classifier.confusion(test.labels, answers[0][:-1], test.domains)
    with pytest.raises(ValueError, match="no images"):
        classifier.confusion([], [], test.domains)
    full = classifier.accuracy(clf, one_look, test.labels, groups=np.arange(len(test.labels)) // 4)
    assert full["ci_low"] <= full["accuracy"] <= full["ci_high"] and full["ci_high"] - full["ci_low"] > 0
    assert full["matched"] <= 0.5  # one look for all: no renaming tells the sources apart
    assert full["chance"] + 0.03 < full["matched_chance"] < 0.5  # renaming lifts blind answers too
    # each source shown in the next scanner's look: named wrong, still told apart
    k, labels = len(test.domains), test.labels
    shifted = np.empty_like(test.images)
    for b in range(k):
        shifted[labels == b] = test.images[labels == (b + 1) % k][: (labels == b).sum()]
    moved = classifier.accuracy(clf, shifted, labels)
    assert moved["accuracy"] < 0.2 and moved["matched"] > 0.8
    right = classifier.accuracy(clf, test.images, labels)
    assert right["matched"] == right["accuracy"]


def test_a_classifier_s_training_depends_on_its_seed_not_on_what_ran_before(tmp_path):
    """Notebook 09 trains one classifier per method in one process: each must start from the same
    weights whatever the process drew before it (a model built, outputs sampled)."""
    test = scanners(n_per=8)
    weights = []
    for i, before in enumerate((0, 5)):
        torch.manual_seed(123)
        torch.randn(before)  # another history of the global random stream
        clf, _ = classifier.train_classifier(test.images, test.labels, tmp_path / f"clf{i}.pt", width=4, steps=3,
                                             batch_size=8, every=3, seed=7)
        weights.append(clf.state_dict())
    for name, w in weights[0].items():
        assert torch.equal(w, weights[1][name]), name
