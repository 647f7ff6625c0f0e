import dataclasses
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from conftest import nifti_digest as digest
from nbutils import baselines, config, data, metrics, parallel, phantom


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim")
    csv = phantom.build(root / "a", n_train=2, n_test=2, slab=2, seed=5, n_paired=1, progress=False)
    return root, csv


def test_layout_and_csv(built):
    _, csv = built
    table = pd.read_csv(csv, keep_default_na=False)
    k = len(phantom.SCANNERS)
    assert len(table) == 2 * k + 2 * k + 1 * k * k
    assert set(table.domain) == {s.name for s in phantom.SCANNERS}
    train, test, pairs = (table[table.split == s] for s in ("train", "test", "paired"))
    assert (train.clean == "").all() and (test.clean != "").all() and (test.rescan != "").all()
    assert (train.rescan == "").all() and (pairs.clean == "").all()
    assert (pairs.groupby("subject").domain.nunique() == k).all() and pairs.subject.nunique() == k
    # training anatomies are per scanner (unpaired); each test anatomy is seen by every scanner
    assert train.groupby("subject").domain.nunique().max() == 1
    assert (test.groupby("subject").domain.nunique() == k).all()
    img = nib.load(str(csv.parent / table.path.iloc[0]))
    assert nib.aff2axcodes(img.affine) == ("L", "A", "S")  # FSL's MNI orientation
    assert b"not real data" in img.header["descrip"].tobytes()
    # the lines plots.describe_data reads: the built-in set is labelled as such
    assert (csv.parent / "README.txt").read_text().splitlines() == [
        "SIMULATED data made by nbutils.phantom from nilearn's ICBM152 2009a template.",
        f"Scanners: {', '.join(s.name for s in phantom.SCANNERS)} (simulations, not real devices).",
        "The built-in set."]


def test_same_seed_same_files_other_seed_other_files(built):
    root, csv = built
    again = phantom.build(root / "b", n_train=2, n_test=2, slab=2, seed=5, n_paired=1, progress=False)
    other = phantom.build(root / "c", n_train=2, n_test=2, slab=2, seed=6, n_paired=1, progress=False)
    assert digest(csv.parent) == digest(again.parent)
    assert digest(csv.parent) != digest(other.parent)


def test_the_files_do_not_depend_on_the_threads_that_render_them(built, monkeypatch):
    root, csv = built
    monkeypatch.setattr(parallel, "cores", lambda: 1)
    alone = phantom.build(root / "one-thread", n_train=2, n_test=2, slab=2, seed=5, n_paired=1, progress=False)
    assert digest(alone.parent) == digest(csv.parent)
    assert alone.read_text() == csv.read_text()


def test_existing_set_is_reused_only_with_the_same_spec(built):
    _, csv = built
    stamp = csv.stat().st_mtime_ns
    phantom.build(csv.parent, n_train=2, n_test=2, slab=2, seed=5, n_paired=1, progress=False)
    assert csv.stat().st_mtime_ns == stamp
    phantom.build(csv.parent, n_train=1, n_test=2, slab=2, seed=5, progress=False)
    assert len(pd.read_csv(csv)) == 1 * 4 + 2 * 4
    with pytest.raises(ValueError, match="n_paired"):
        phantom.build(csv.parent, n_train=1, n_test=2, slab=2, seed=5, n_paired=2, progress=False)
    phantom.build(csv.parent, n_train=2, n_test=2, slab=2, seed=5, n_paired=1, progress=False)  # as the fixture


def test_clean_truth_is_the_contrast_curve_alone():
    tpl = phantom.load_template()
    t1, mask, _ = phantom.pseudo_subject(tpl, 1, np.random.default_rng(0))
    s = phantom.SCANNERS[0]
    clean = phantom.render(t1, mask, tpl.knots, s, None)
    np.testing.assert_allclose(clean, phantom.contrast_curve(t1, tpl.knots, s.contrast, s.curve_gamma) * mask)
    noisy = phantom.render(t1, mask, tpl.knots, s, np.random.default_rng(1))
    assert not np.allclose(noisy, clean, atol=1e-3)
    assert (noisy[~mask] == 0).all() and (clean[~mask] == 0).all()  # skull-stripped


@pytest.mark.parametrize("shape", [(182, 182), (181, 179)])
def test_partial_volume_keeps_the_image_in_place_and_its_block_means(shape):
    # the coarse acquisition blurs but must not move the anatomy against the clean truth it is scored with
    img = np.zeros(shape, np.float32)
    img[60:120, 50:110] = 1.0
    out = phantom.partial_volume(img, 2)
    assert out.shape == img.shape
    centre = lambda a: np.array(np.nonzero(a > 0.5)).mean(1)  # noqa: E731
    weighted = lambda a: (np.indices(a.shape) * a).reshape(2, -1).sum(1) / a.sum()  # noqa: E731
    assert np.allclose(weighted(out), weighted(img), atol=0.05)
    assert np.allclose(centre(out), centre(img), atol=0.5)
    assert np.isclose(out.sum(), img.sum(), rtol=1e-3)
    assert 0 < out[59, 80] < 1 and out[90, 80] == pytest.approx(1.0)  # the edge is blurred, the inside kept


def test_scanners_keep_a_spatial_part_no_global_remap_removes(built, tmp_path):
    """Histogram-match each rendered test slice to its own clean truth: the best any global
    intensity remap can do. The spatial signatures must leave a clear error."""
    _, csv = built
    data.slice_dataset(csv, tmp_path / "s", image_size=96, per_volume=0, progress=False)
    test = data.load_slices(tmp_path / "s", "test")
    assert test.rescan is not None and test.rescan.shape == test.images.shape
    assert data.load_slices(tmp_path / "s", "train").rescan is None
    pairs = data.load_slices(tmp_path / "s", "paired")
    assert pairs.clean is None and set(pairs.manifest.domain) == {s.name for s in phantom.SCANNERS}
    per_scanner = {}
    for row in test.manifest.itertuples():
        img, truth = np.asarray(test.images[row.index], np.float32), np.asarray(test.clean[row.index], np.float32)
        mask = np.asarray(test.masks[row.index])
        best = baselines.histogram_match(img, mask, baselines.reference_quantiles(truth, mask))
        per_scanner.setdefault(row.domain, []).append(metrics.ssim(best, truth, mask))
    worst = {d: np.mean(v) for d, v in per_scanner.items()}
    assert all(v < 0.99 for d, v in worst.items() if d != "sim-A"), worst
    assert min(worst.values()) < 0.95, worst


def test_rescan_is_the_same_anatomy_with_fresh_nuisance_and_paired_reuses_training_anatomy(built):
    _, csv = built
    root = csv.parent
    table = pd.read_csv(csv, keep_default_na=False)
    load = lambda rel: np.asarray(nib.load(str(root / rel)).dataobj, np.float32)
    row = table[table.split == "test"].iloc[0]
    scan, rescan = load(row.path), load(row.rescan)
    assert ((scan > 0) == (rescan > 0)).mean() > 0.99  # same anatomy (same brain mask)
    assert not np.allclose(scan, rescan)  # other noise, bias strength, contrast jitter
    # the paired split re-renders training anatomy (k, i): same brain, other acquisition
    train = table[table.split == "train"].iloc[0]
    pair = table[(table.split == "paired") & (table.subject == f"pair-{train.subject}") & (table.domain == train.domain)]
    a, b = load(train.path), load(pair.path.iloc[0])
    assert ((a > 0) == (b > 0)).mean() > 0.99 and not np.allclose(a, b)


def test_a_second_set_of_other_simulated_scanners_is_labelled_as_such(built, tmp_path):
    """Figures of the built-in set say 'built-in'; those of a set of OTHER_SCANNERS name its
    scanners and still say simulated."""
    from nbutils import plots

    root, csv = built
    csv2 = phantom.build(tmp_path / "other", n_train=1, n_test=1, slab=1, seed=1, scanners=phantom.OTHER_SCANNERS,
                         progress=False)
    assert set(pd.read_csv(csv2).domain) == {s.name for s in phantom.OTHER_SCANNERS}
    try:
        assert plots.describe_data(csv) == plots.BUILT_IN
        label = plots.describe_data(csv2)
        assert "alt-X, alt-Y, alt-Z" in label and "simulated" in label and "built-in" not in label
    finally:
        plots.describe_data(csv)


def test_command_line_help_and_usage_write_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as done:  # before argparse, "--help" was taken for OUT_DIR and filled
        phantom.main(["--help"])
    shown = capsys.readouterr().out
    assert done.value.code == 0 and "OUT_DIR" in shown and all(s.name in shown for s in phantom.OTHER_SCANNERS)
    with pytest.raises(SystemExit) as done:
        phantom.main([])
    assert done.value.code == 2
    assert list(tmp_path.iterdir()) == []


def test_a_profile_s_set_is_built_with_the_profile_s_counts(monkeypatch, tmp_path):
    """Notebook 01's set (and the appearance-only script's) takes its anatomy counts from the profile."""
    calls = []
    monkeypatch.setattr(phantom, "build", lambda out, **kw: calls.append((out, kw)) or out)
    p = dataclasses.replace(config.PROFILES["quick"], sim_train_subjects=7, sim_test_subjects=5, sim_slab=2,
                            sim_paired_subjects=3)
    phantom.build_for_profile(tmp_path, p, seed=3)
    phantom.build_for_profile(tmp_path, p, scanners=phantom.OTHER_SCANNERS)
    counts = dict(n_train=7, n_test=5, slab=2, n_paired=3)
    assert calls == [(tmp_path, dict(counts, seed=3, scanners=phantom.SCANNERS)),
                     (tmp_path, dict(counts, seed=0, scanners=phantom.OTHER_SCANNERS))]
