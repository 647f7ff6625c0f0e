import hashlib

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from nbutils import baselines, data, metrics, phantom


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim")
    csv = phantom.build(root / "a", n_train=2, n_test=2, slab=2, seed=5, progress=False)
    return root, csv


def digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(
        np.asarray(nib.load(str(p)).dataobj).tobytes()).hexdigest() for p in sorted(folder.rglob("*.nii.gz"))}


def test_layout_and_csv(built):
    _, csv = built
    table = pd.read_csv(csv, keep_default_na=False)
    k = len(phantom.SCANNERS)
    assert len(table) == 2 * k + 2 * k
    assert set(table.domain) == {s.name for s in phantom.SCANNERS}
    train, test = table[table.split == "train"], table[table.split == "test"]
    assert (train.clean == "").all() and (test.clean != "").all()
    # training anatomies are per scanner (unpaired); each test anatomy is seen by every scanner
    assert train.groupby("subject").domain.nunique().max() == 1
    assert (test.groupby("subject").domain.nunique() == k).all()
    img = nib.load(str(csv.parent / table.path.iloc[0]))
    assert nib.aff2axcodes(img.affine) == ("L", "A", "S")  # FSL's MNI orientation
    assert b"not real data" in img.header["descrip"].tobytes()


def test_same_seed_same_files_other_seed_other_files(built):
    root, csv = built
    again = phantom.build(root / "b", n_train=2, n_test=2, slab=2, seed=5, progress=False)
    other = phantom.build(root / "c", n_train=2, n_test=2, slab=2, seed=6, progress=False)
    assert digest(csv.parent) == digest(again.parent)
    assert digest(csv.parent) != digest(other.parent)


def test_existing_set_is_reused_only_with_the_same_spec(built):
    _, csv = built
    stamp = csv.stat().st_mtime_ns
    phantom.build(csv.parent, n_train=2, n_test=2, slab=2, seed=5, progress=False)
    assert csv.stat().st_mtime_ns == stamp
    phantom.build(csv.parent, n_train=1, n_test=2, slab=2, seed=5, progress=False)
    assert len(pd.read_csv(csv)) == 1 * 4 + 2 * 4


def test_clean_truth_is_the_contrast_curve_alone():
    tpl = phantom.load_template()
    t1, mask, _ = phantom.pseudo_subject(tpl, 1, np.random.default_rng(0))
    s = phantom.SCANNERS[0]
    clean = phantom.render(t1, mask, tpl.knots, s, None)
    np.testing.assert_allclose(clean, phantom.contrast_curve(t1, tpl.knots, s.contrast, s.curve_gamma) * mask)
    noisy = phantom.render(t1, mask, tpl.knots, s, np.random.default_rng(1))
    assert not np.allclose(noisy, clean, atol=1e-3)
    assert (noisy[~mask] == 0).all() and (clean[~mask] == 0).all()  # skull-stripped


def test_scanners_keep_a_spatial_part_no_global_remap_removes(built, tmp_path):
    """Histogram-match each rendered test slice to its own clean truth: the best any global
    intensity remap can do. The spatial signatures must leave a clear error."""
    _, csv = built
    data.slice_dataset(csv, tmp_path / "s", image_size=96, per_volume=0, progress=False)
    test = data.load_slices(tmp_path / "s", "test")
    per_scanner = {}
    for row in test.manifest.itertuples():
        img, truth = np.asarray(test.images[row.index], np.float32), np.asarray(test.clean[row.index], np.float32)
        mask = np.asarray(test.masks[row.index])
        best = baselines.histogram_match(img, mask, baselines.reference_quantiles(truth, mask))
        per_scanner.setdefault(row.domain, []).append(metrics.ssim(best, truth, mask))
    worst = {d: np.mean(v) for d, v in per_scanner.items()}
    assert all(v < 0.99 for d, v in worst.items() if d != "sim-A"), worst
    assert min(worst.values()) < 0.95, worst
