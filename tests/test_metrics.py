import numpy as np
import pandas as pd
import pytest
from skimage.metrics import structural_similarity

from nbutils import baselines, metrics, stats


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    a = rng.random((40, 40)).astype(np.float32)
    return a, np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1).astype(np.float32)


def test_ssim_without_mask_is_scikit_images_wang_ssim(pair):
    a, b = pair
    ref = structural_similarity(a.astype(np.float64), b.astype(np.float64), data_range=1.0,
                                gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert metrics.ssim(a, b) == pytest.approx(ref, abs=1e-9)
    assert metrics.ssim(a, a) == pytest.approx(1.0)


def test_masked_metrics_only_look_inside_the_mask(pair):
    a, b = pair
    mask = np.zeros_like(a, bool)
    mask[10:30, 10:30] = True
    c = b.copy()
    c[~mask] = 1 - c[~mask]  # change only outside
    assert metrics.mae(a, b, mask) == pytest.approx(metrics.mae(a, c, mask))
    assert metrics.mae(a, b, mask) == pytest.approx(np.abs(a - b)[mask].mean(), rel=1e-6)


def test_psnr_known_value():
    a = np.zeros((10, 10))
    b = np.full((10, 10), 0.1)
    assert metrics.psnr(a, b) == pytest.approx(20.0)
    assert metrics.psnr(a, a) == float("inf")


def test_histogram_matching_takes_the_reference_distribution_and_keeps_order():
    rng = np.random.default_rng(0)
    img = rng.random((50, 50)).astype(np.float32)
    mask = np.ones_like(img, bool)
    mask[:5] = False
    ref_images = rng.beta(5, 2, size=(4, 50, 50)).astype(np.float32)
    ref = baselines.reference_quantiles(ref_images, np.ones_like(ref_images, bool))
    out = baselines.histogram_match(img, mask, ref)
    qs = np.linspace(0.05, 0.95, 10)
    np.testing.assert_allclose(np.quantile(out[mask], qs), np.quantile(ref_images, qs), atol=0.01)
    order = np.argsort(img[mask])
    assert (np.diff(out[mask][order]) >= -1e-6).all()  # monotone
    np.testing.assert_array_equal(out[~mask], img[~mask])


def test_ssim_components_multiply_to_scikit_image_ssim():
    from skimage.metrics import structural_similarity

    from nbutils.metrics import ssim_maps

    rng = np.random.default_rng(0)
    for _ in range(3):
        a = rng.random((40, 33))
        b = np.clip(a * rng.uniform(0.5, 1.5) + rng.normal(0, 0.1, a.shape), 0, 1)
        _, ref = structural_similarity(a, b, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False, full=True)
        maps = ssim_maps(a, b)
        np.testing.assert_allclose(maps["luminance"] * maps["contrast"] * maps["structure"], ref, atol=1e-6)
        assert all(np.all(maps[k] <= 1 + 1e-9) for k in ("luminance", "contrast", "structure"))
    same = ssim_maps(a, a)
    assert np.allclose(same["structure"], 1) and np.allclose(same["luminance"], 1)
    # a brightness change hits luminance, not structure
    shifted = ssim_maps(a, np.clip(a * 0.6, 0, 1))
    assert shifted["luminance"].mean() < 0.99 and shifted["structure"].mean() > 0.99


def test_ssim_components_of_stacks_equal_the_per_image_values():
    from nbutils.metrics import ssim_components

    rng = np.random.default_rng(1)
    a = rng.random((3, 24, 20))
    b = np.clip(a + rng.normal(0, 0.2, a.shape), 0, 1)
    masks = rng.random(a.shape) > 0.3
    batched = ssim_components(a, b, masks)
    for i in range(3):
        single = ssim_components(a[i], b[i], masks[i])
        for key, value in single.items():
            assert batched[key][i] == pytest.approx(value, abs=1e-12)
    with pytest.raises(ValueError, match="empty"):
        ssim_components(a, b, np.zeros(a.shape, bool))


def test_windowed_stacks_computed_in_blocks_equal_each_image_alone():
    """``Windowed`` filters a stack in blocks of 32 images (in threads): the same moments as each image's own."""
    x = np.random.default_rng(3).random((70, 20, 18))
    stack = metrics.Windowed(x)
    for i in (0, 31, 32, 69):
        one = metrics.Windowed(x[i])
        np.testing.assert_array_equal(stack.mu[i], one.mu[0])
        np.testing.assert_array_equal(stack.sq[i], one.sq[0])
    assert metrics.Windowed(x, squares=False).sq is None


def test_ssim_of_pairs_drawn_from_two_stacks_is_scikit_image_s_ssim_of_each_pair():
    """Each image's local moments computed once (``Windowed``), SSIM and its components of any
    pairs of rows: scikit-image's SSIM map (the same operations: equal, not just close) averaged
    over each pair's mask less the 5 px border, and the per-pair values of ``ssim_components``.
    Luminance alone works without the squares."""
    rng = np.random.default_rng(2)
    a = rng.random((5, 30, 26))
    b = np.clip(a[[3, 1, 4, 0, 2]] * 0.8 + rng.normal(0, 0.1, a.shape), 0, 1).astype(np.float32)
    ia, ib = np.array([0, 4, 4, 2, 1, 3, 0]), np.array([1, 1, 3, 0, 4, 2, 0])
    masks = rng.random((len(ia), 30, 26)) > 0.4
    wa, wb = metrics.Windowed(a), metrics.Windowed(b)
    found = metrics.ssim_pairs(wa, ia, wb, ib, masks, chunk=3)
    parts = metrics.components_pairs(wa, ia, wb, ib, masks, chunk=2)
    inner = np.zeros((30, 26), bool)
    inner[5:-5, 5:-5] = True
    for n, (i, j) in enumerate(zip(ia, ib)):
        _, smap = structural_similarity(a[i], b[j].astype(np.float64), data_range=1.0, gaussian_weights=True,
                                        sigma=1.5, use_sample_covariance=False, full=True)
        assert found[n] == smap[inner & masks[n]].mean() == metrics.ssim(a[i], b[j], masks[n])
        single = metrics.ssim_components(a[i], b[j], masks[n])
        assert all(parts[k][n] == pytest.approx(v, abs=1e-12) for k, v in single.items())
    lum = metrics.components_pairs(metrics.Windowed(a, squares=False), ia, metrics.Windowed(b, squares=False), ib,
                                   masks, parts=("luminance",))
    np.testing.assert_array_equal(lum["luminance"], parts["luminance"])
    assert not np.allclose(found, found[0])  # the pairs differ


def test_bootstrap_difference_covers_the_truth_and_pairs_reduce_its_width():
    from nbutils.stats import bootstrap_diff

    rng = np.random.default_rng(0)
    unit = rng.normal(0, 1, 400)  # a shared per-unit effect, as the same slice under two methods
    a, b = unit + 0.3 + rng.normal(0, 0.1, 400), unit + rng.normal(0, 0.1, 400)
    d, lo, hi = bootstrap_diff(a, b, paired=True)
    assert lo < 0.3 < hi and lo < d < hi
    _, ulo, uhi = bootstrap_diff(a, b, paired=False)
    assert (hi - lo) < (uhi - ulo) / 5  # pairing removes the shared unit effect
    d0, lo0, hi0 = bootstrap_diff(b, b, paired=True)
    assert d0 == 0 and lo0 == 0 and hi0 == 0
    with pytest.raises(ValueError, match="same length"):
        bootstrap_diff(a, b[:10], paired=True)


def test_bootstrap_mean_resamples_whole_groups():
    """Hits of 40 subjects, 8 slices each, every slice of a subject alike: the CI must be as wide
    as for 40 values, not 320; with one group per value it is the plain bootstrap; it covers a
    known rate."""
    from nbutils.stats import bootstrap_mean

    rng = np.random.default_rng(0)
    per_subject = rng.random(40) < 0.3
    hits, subjects = np.repeat(per_subject, 8).astype(float), np.repeat(np.arange(40), 8)
    m, lo, hi = bootstrap_mean(hits, subjects)
    assert m == per_subject.mean() and lo < m < hi
    _, slo, shi = bootstrap_mean(per_subject.astype(float))
    assert abs((hi - lo) - (shi - slo)) < 0.05  # 40 independent units either way
    _, rlo, rhi = bootstrap_mean(hits)  # wrongly taking the 320 slices as independent
    assert (rhi - rlo) < (hi - lo) / 2
    assert bootstrap_mean(hits, np.arange(320)) == bootstrap_mean(hits)
    covered = [lo < 0.3 < hi for lo, hi in (bootstrap_mean(rng.random(200) < 0.3, seed=s)[1:] for s in range(20))]
    assert np.mean(covered) >= 0.8
    with pytest.raises(ValueError, match="one group per value"):
        bootstrap_mean(hits, subjects[:10])


def test_random_pairs_of_a_few_subjects_are_resampled_by_subject():
    """Values of random pairs of 30 subjects, each value the sum of its two subjects' effects (as a
    score of two slices depends on both anatomies): the mean over 3,000 pairs is no better known than
    the 30 subjects allow. Resampling the subjects covers the population mean (0) about as often as
    a 95 % interval should; resampling the pairs as if independent covers it rarely. With one
    cluster per value it is the grouped bootstrap of the mean."""
    from nbutils.stats import bootstrap_crossed, bootstrap_diff, bootstrap_mean

    crossed, naive = [], []
    for rep in range(40):
        rng = np.random.default_rng(rep)
        effect = rng.normal(0, 1, 30)
        i, j = rng.integers(0, 30, 3000), rng.integers(0, 30, 3000)
        v = effect[i] + effect[j] + rng.normal(0, 0.1, 3000)
        m, lo, hi = bootstrap_crossed(v, np.column_stack([i, j]), n_boot=500, seed=rep)
        assert m == pytest.approx(v.mean()) and lo < m < hi
        crossed.append(lo < 0 < hi)
        _, nlo, nhi = bootstrap_diff(v, np.zeros_like(v), paired=True, n_boot=500, seed=rep)
        naive.append(nlo < 0 < nhi)
    assert np.mean(crossed) >= 0.85 and np.mean(naive) <= 0.4
    rng = np.random.default_rng(0)
    hits, subjects = rng.random(320), np.repeat(np.arange(40), 8)
    _, lo, hi = bootstrap_crossed(hits, subjects)
    _, glo, ghi = bootstrap_mean(hits, subjects)
    assert abs((hi - lo) - (ghi - glo)) < 0.1 * (ghi - glo)
    with pytest.raises(ValueError, match="one row of clusters per value"):
        bootstrap_crossed(hits, subjects[:10])


def test_compare_resamples_the_subjects_of_both_rows_of_a_matched_pair(monkeypatch):
    """E3-like: every pair compares a real slice with a second image (a translated slice or a second
    real one), and how a pair scores depends on its subjects, differently for the two rows: the
    interval over subjects is wider than over pairs, and a column both rows share counts once."""
    import pandas as pd

    from nbutils.stats import compare

    rng = np.random.default_rng(0)
    effect = rng.normal(0, 0.2, 12)
    real, other, real2 = (rng.integers(0, 12, 2000) for _ in range(3))
    df = pd.concat([pd.DataFrame(dict(method="ref", pair=np.arange(2000), real=real, other=other,
                                      v=effect[real] + effect[other])),
                    pd.DataFrame(dict(method="b", pair=np.arange(2000), real=real, other=real2,
                                      v=effect[real] + 0.5 * effect[real2] + 0.05))])
    plain = compare(df, "v", "ref", unit="pair").set_index("method").loc["b"]
    by_subject = compare(df, "v", "ref", unit="pair", clusters=["real", "other"]).set_index("method").loc["b"]
    assert by_subject["ref − this"] == pytest.approx(plain["ref − this"])
    assert (by_subject["CI high"] - by_subject["CI low"]) > 3 * (plain["CI high"] - plain["CI low"])
    assert by_subject["CI low"] < by_subject["ref − this"] < by_subject["CI high"]
    from nbutils import stats

    seen = []
    monkeypatch.setattr(stats, "bootstrap_crossed", lambda v, ids, seed: seen.append(ids) or (0.0, 0.0, 0.0))
    compare(df, "v", "ref", unit="pair", clusters=["real", "other"])
    np.testing.assert_array_equal(seen[0], np.column_stack([real, other, real2]))  # the shared real once


def test_compare_table_reports_every_group_against_the_reference():
    import pandas as pd

    from nbutils.stats import compare

    rng = np.random.default_rng(0)
    df = pd.concat([pd.DataFrame(dict(method=m, unit=np.arange(50), v=rng.normal(mu, 0.1, 50)))
                    for m, mu in [("ref", 0.5), ("better", 0.7)]])
    table = compare(df, "v", "ref", unit="unit").set_index("method")
    assert table.loc["better", "n"] == 50
    assert table.loc["better", "CI high"] < -0.1 and np.isnan(table.loc["ref", "CI low"])
    assert table.loc["better", "ref − this"] == pytest.approx(-0.2, abs=0.05)
    per = compare(df.assign(site=df["unit"] % 2), "v", "ref", unit="unit", within="site")
    assert len(per) == 4 and set(per["site"]) == {0, 1} and (per["n"] == 25).all()
    with pytest.raises(ValueError, match="reference"):
        compare(df, "v", "nope")


def _band_image(rows=(20, 22)):
    """A bright field rising from left to right (every column its own value) with a dark band
    across ``rows``: 2 of 40 rows, the darkest 5 % of the image."""
    img = np.tile(0.5 + 0.3 * np.arange(40) / 40, (40, 1))
    img[rows[0]: rows[1]] = 0.05
    return img


def test_dark_overlap_ignores_contrast_and_sees_a_dark_structure_drawn_wider_or_moved():
    truth, mask = _band_image(), np.ones((40, 40), bool)
    assert metrics.dark_overlap(truth ** 2 * 0.7 + 0.1, truth, mask) == 1.0  # any increasing contrast curve
    wider = _band_image((18, 24))  # the band three times as wide, as G drew the ventricles
    assert metrics.dark_overlap(wider, truth, mask) == pytest.approx(2 * 80 / (240 + 80))
    moved = _band_image((22, 24))
    assert metrics.dark_overlap(moved, truth, mask) == 0.0
    # stacks: one value per image, a shared (H, W) mask or one per image
    stack = metrics.dark_overlap(np.stack([truth, wider, moved]), np.stack([truth] * 3), mask)
    assert stack == pytest.approx([1.0, 0.5, 0.0])
    assert metrics.dark_overlap(np.stack([wider] * 2), np.stack([truth] * 2), np.stack([mask] * 2)) == pytest.approx(
        [0.5, 0.5])
    with pytest.raises(ValueError, match="mask is empty"):
        metrics.dark_overlap(truth, truth, np.zeros((40, 40), bool))
    with pytest.raises(ValueError, match="shape"):
        metrics.dark_overlap(np.stack([truth] * 2), np.stack([truth] * 3), mask)


def test_dark_overlap_reads_only_inside_the_mask():
    """Outside the mask a dark band of the output is not seen; inside it, the truth's darkest
    pixels are the next darkest ones (the darkest columns of the field)."""
    truth, output = _band_image(), _band_image()
    output[30:32] = 0.0  # a second, darker band only the output has
    mask = np.ones((40, 40), bool)
    assert metrics.dark_overlap(output, truth, mask) == 0.0  # it takes the darkest 5 % from the truth's band
    mask[28:34] = False
    assert metrics.dark_overlap(output, truth, mask) == 1.0
    # without the truth's band in the mask, the darkest pixels are the field's left columns in both
    mask[18:24] = False
    assert metrics.dark_overlap(output, truth, mask) == 1.0
    assert metrics.dark_overlap(output[:, ::-1], truth, mask) == 0.0  # the field mirrored: the right columns


def test_an_empty_mask_is_refused_not_scored():
    """PSNR over an empty mask read inf (a perfect score) and single-image SSIM NaN; both, MAE too, now refuse."""
    a, b = np.random.default_rng(0).random((2, 32, 32))
    empty = np.zeros((32, 32), bool)
    border_only = empty.copy()
    border_only[:3] = True  # inside the 5 px border SSIM leaves out
    for score, mask in ((metrics.psnr, empty), (metrics.mae, empty), (metrics.ssim, empty), (metrics.ssim, border_only)):
        with pytest.raises(ValueError, match="empty"):
            score(a, b, mask)
    with pytest.raises(ValueError, match="empty"):
        metrics.ssim_components(a, b, empty)


def test_one_subject_gives_no_interval_and_a_missing_subject_is_refused():
    """One subject (or one cluster) leaves nothing to resample: NaN bounds, not a zero-width interval."""
    v = np.array([0.1, 0.5, 0.9])
    mean, lo, hi = stats.bootstrap_mean(v, groups=["s1"] * 3)
    assert mean == pytest.approx(0.5) and np.isnan(lo) and np.isnan(hi)
    mean, lo, hi = stats.bootstrap_crossed(v, np.array([["s1", "s1"]] * 3))
    assert np.isnan(lo) and np.isnan(hi)
    with pytest.raises(ValueError, match="no group"):
        stats.bootstrap_mean(v, groups=["s1", None, "s2"])


def test_compare_refuses_clusters_without_units_and_groups_with_other_units():
    df = pd.DataFrame(dict(method=["a"] * 4 + ["b"] * 4, pair=[0, 1, 2, 3] * 2, subject=[0, 0, 1, 1] * 2,
                           score=np.arange(8.0)))
    with pytest.raises(ValueError, match="give unit too"):
        stats.compare(df, "score", "a", clusters=["subject"])
    fewer = df.drop(index=7)  # b lacks pair 3: its difference would not be the difference of the means shown
    with pytest.raises(ValueError, match="same units"):
        stats.compare(fewer, "score", "a", unit="pair", clusters=["subject"])
    with pytest.raises(ValueError, match="same units"):
        stats.compare(fewer, "score", "a", unit="pair")
    table = stats.compare(df, "score", "a", unit="pair", clusters=["subject"]).set_index("method")
    assert table.loc["b", "a − this"] == pytest.approx(-4.0)
