"""Stage-2 diagnostics (nbutils.usage) on models and outputs whose answer is known."""
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.ndimage import gaussian_filter
from test_paired import traveling

from nbutils import drit, plots, usage
from nbutils.clustering import linear_probe
from nbutils.harmonize import Harmonizer


def on_every_target(test, images):
    """(K, N, H, W): each image of ``test`` replaced by its anatomy's image of ``images`` (one per
    row of ``test``) on each target scanner."""
    m = test.manifest.reset_index(drop=True)
    row = {(s, b): i for i, (s, b) in enumerate(zip(m.subject, m.domain_index))}
    return np.stack([np.stack([images[row[(s, b)]] for s in m.subject]) for b in range(len(test.domains))])


def oracle_and_ignoring_outputs(test):
    """(K, N, H, W) outputs: each image replaced by its anatomy's scan on the target (an oracle
    that moves exactly as far as the scanners differ), and the inputs whatever the target."""
    return on_every_target(test, test.images), np.stack([np.asarray(test.images)] * len(test.domains))


def test_target_sensitivity_is_one_for_the_target_scans_and_zero_when_the_target_is_ignored():
    test = traveling(n=6, k=3)
    oracle, ignoring = oracle_and_ignoring_outputs(test)
    assert abs(usage.target_sensitivity(oracle, test)["ratio"] - 1) < 0.05
    assert usage.target_sensitivity(ignoring, test)["ratio"] == 0
    half = (oracle + ignoring) / 2  # moves half way
    assert abs(usage.target_sensitivity(half, test)["ratio"] - 0.5) < 0.05


def test_the_noise_free_oracle_reads_what_clean_renderings_on_the_target_read_and_less_than_the_scans():
    test = traveling(n=6, k=3, noise=0.1)
    clean = on_every_target(test, test.clean)
    sens = usage.target_sensitivity(clean, test)
    assert abs(sens["oracle"] - sens["ratio"]) < 0.02
    # these toy scans differ by their own noise as well as by their scanners: the clean truths move less
    assert 0.5 < sens["oracle"] < 0.9
    assert np.isnan(usage.target_sensitivity(clean, replace(test, clean=None))["oracle"])


def test_scanner_share_is_zero_for_invariant_features_one_for_scanner_only_and_graded_between():
    test = traveling(n=8, k=3)
    rng = np.random.default_rng(0)
    m = test.manifest.reset_index(drop=True)
    anatomy = rng.normal(size=(8, 5))[m.subject.str[1:].astype(int)]
    scanner = rng.normal(size=(3, 5))[m.domain_index]
    assert usage.scanner_share(anatomy, test) < 1e-12
    assert abs(usage.scanner_share(scanner, test) - 1) < 1e-12
    mixed = usage.scanner_share(anatomy + 0.3 * scanner, test)
    assert 0.02 < mixed < 0.3
    assert usage.scanner_share(anatomy + 0.1 * scanner, test) < mixed
    lonely = type(test)(test.images[:3], test.masks[:3], None, m.iloc[:3].assign(subject=["a", "b", "c"]), test.domains)
    assert np.isnan(usage.scanner_share(anatomy[:3], lonely))
    # a subject scanned twice on one scanner is no evidence about scanners: only groups seen by
    # more than one scanner count (here rows 0-1 rescanned on scanner 0, noisy), on a shuffled index
    twice = m.copy()
    twice.loc[1, ["domain", "domain_index"]] = ["s0", 0]
    twice.loc[2, "subject"] = "alone"
    noisy = anatomy + 0.3 * scanner
    noisy[1] = anatomy[1] + 5.0
    shuffled = type(test)(test.images, test.masks, None, twice.set_index(np.arange(len(m))[::-1]), test.domains)
    keep = np.flatnonzero(m.subject != "t0")
    kept = type(test)(test.images[keep], test.masks[keep], None, twice.iloc[keep], test.domains)
    assert usage.scanner_share(noisy, shuffled) == pytest.approx(usage.scanner_share(noisy[keep], kept))


def test_source_maps_find_each_scanner_s_field_and_nothing_where_the_source_is_gone():
    test = traveling(n=6, k=3)
    m = test.manifest.reset_index(drop=True)
    h, w = np.asarray(test.images[0]).shape
    rng = np.random.default_rng(2)
    anatomy = rng.random((6, h, w))[m.subject.str[1:].astype(int)]
    fields = rng.normal(size=(3, h, w)) * 0.1
    brain = np.asarray(test.masks, bool).any(0)
    same, size = usage.source_maps(anatomy, test)
    assert np.abs(same).max() < 1e-12 and max(size.values()) < 1e-12
    found, size = usage.source_maps(anatomy + fields[m.domain_index], test)
    expected = np.where(brain, fields - fields.mean(0), 0)
    assert np.allclose(found, expected)
    assert size["s1"] == pytest.approx(np.abs(expected[1][brain]).mean())
    half, _ = usage.source_maps(anatomy + 0.5 * fields[m.domain_index], test)
    assert np.allclose(half, expected / 2)
    lonely = type(test)(test.images[:3], test.masks[:3], None, m.iloc[:3].assign(subject=["a", "b", "c"]), test.domains)
    none, size = usage.source_maps(anatomy[:3], lonely)
    assert size == {} and not none.any()


def test_the_probe_s_bar_is_the_issue_s_with_four_balanced_scanners_and_stays_under_one_however_large_chance_is():
    assert usage.probe_bar(0.25) == pytest.approx(0.40)
    assert usage.probe_bar(1 / 3) == pytest.approx(7 / 15) and usage.probe_bar(0.5) == pytest.approx(0.6)
    # one scanner with 90 % of the test rows: chance + 0.15 would be 1.05, a bar no probe can miss
    assert usage.probe_bar(0.9) == pytest.approx(0.92) and usage.probe_bar(0.9) < 1


def test_probe_control_reads_chance_once_the_scanner_part_is_gone_and_the_scanner_where_it_is_large():
    test = traveling(n=12, k=3)
    rng = np.random.default_rng(1)
    m = test.manifest.reset_index(drop=True)
    anatomy = rng.normal(size=(12, 6))[m.subject.str[1:].astype(int)]
    scanner = 2 * rng.normal(size=(3, 6))[m.domain_index] + 0.05 * rng.normal(size=(len(m), 6))
    control = usage.probe_control({"strong": anatomy + scanner, "none": anatomy}, test, scales=(1, 0.3, 0.1, 0))
    strong = control[control.code == "strong"].set_index("scale")
    assert strong.loc[1.0, "probe"] > 0.9 and strong.loc[1.0, "share"] > 0.3
    # with the deviations gone, the held-out anatomy's images are identical: one answer for k labels
    assert strong.loc[0.0, "probe"] == pytest.approx(1 / 3) and strong.loc[0.0, "share"] < 1e-12
    assert np.all(np.diff(strong.share) < 0)  # scales 1, 0.3, 0.1, 0: every shrink shrinks the share
    assert strong.loc[1.0, "share"] == pytest.approx(usage.scanner_share(anatomy + scanner, test))
    assert np.allclose(control[control.code == "none"].probe, 1 / 3)  # nothing to read at any scale
    assert np.allclose(control.chance, 1 / 3)
    # where the probe first rises above the bar (a dip above that crossing does not count), between the
    # scales around it: 0.48 lies 52 % of the way from 0.35 (share 0.01) to 0.6 (share 0.05), in log share
    curve = pd.DataFrame(dict(code="c", share=[0.4, 0.2, 0.05, 0.01, 0.0], probe=[1.0, 0.45, 0.6, 0.35, 0.33]))
    assert usage.share_at_probe(curve, "c", 0.48) == pytest.approx(0.01 * 5 ** 0.52)
    assert usage.share_at_probe(curve, "c", 0.34) == pytest.approx(0.005)  # from share 0: linearly
    assert usage.share_at_probe(curve, "c", 0.35) == pytest.approx(0.01)  # on a grid point: that point
    assert usage.share_at_probe(curve, "c", 1.0) == 0.4  # never above the bar: the largest share
    assert np.isnan(usage.share_at_probe(curve, "c", 0.3))
    lonely = type(test)(test.images[:3], test.masks[:3], None, m.iloc[:3].assign(subject=["a", "b", "c"]), test.domains)
    assert usage.probe_control({"strong": scanner[:3]}, lonely).empty
    # the figure draws the probes it has; with none read (one traveling test subject) it says why instead of failing
    fig = plots.probe_control(control.assign(probe=np.where(control.scale == 1, np.nan, control.probe)), 1 / 3, 0.48,
                              "some")
    fig.canvas.draw()
    assert list(fig.axes[0].lines[0].get_xdata()) == list(strong.share[strong.share > 0].drop(1.0))  # scale 1 left off
    fig = plots.probe_control(control.assign(probe=np.nan), 1 / 3, 0.48, "none")
    fig.canvas.draw()
    assert "no probe read" in fig.axes[0].texts[0].get_text()


def test_the_scans_detail_names_scanners_that_differ_by_blur_and_not_by_a_gain_or_the_head_s_outline():
    """Toy scanners whose scans differ by their blur: their detail names the scanner; a gain hardly moves it (the
    log high-pass takes it away), a 1 px blur does; only pixels whose whole box lies in the head count."""
    test = traveling(n=12, k=3)
    f = usage.features(translator(), test)
    x = torch.from_numpy(np.asarray(test.images, np.float32))[:, None] * 2 - 1
    np.testing.assert_allclose(f["inputs_detail"], usage.detail(x).numpy(), atol=1e-6)
    # the inputs summarised as z^c is: an instance-normalised z^c (the default) has no means and spreads of its own,
    # so the inputs' are left out too (they alone carry much of a gain); without the norm, both read them
    assert translator().cfg.content_norm and f["inputs"].shape[1] == 16
    np.testing.assert_allclose(f["inputs"], usage.summarise(x, moments=False).numpy(), atol=1e-6)
    g = usage.features(translator(content_norm=False), test)
    np.testing.assert_allclose(g["inputs"], usage.summarise(x).numpy(), atol=1e-6)
    assert g["zc"].shape[1] - f["zc"].shape[1] == 2 * (g["zc"].shape[1] // 18) and g["inputs"].shape[1] == 18
    assert f["inputs_detail"].shape == (len(test), 16 * len(usage.DETAIL_BOXES))
    labels, folds = np.asarray(test.labels), usage._subject_folds(test)
    assert linear_probe(f["inputs_detail"], labels, groups=folds) > 0.75  # chance 1/3
    # a gain hardly changes the detail (the log's floor aside), a blur does
    x = np.asarray(test.images[:4], np.float32)[:, None]
    base = usage.detail(torch.from_numpy(x) * 2 - 1)
    change = lambda y: float((usage.detail(torch.from_numpy(np.float32(y)) * 2 - 1) - base).abs().mean() / base.mean())
    blurred = gaussian_filter(x, (0, 0, 1, 1)) * (x > 0)
    assert change(x * 0.6) < 0.05 and change(blurred) > 10 * change(x * 0.6)
    # a flat head reads no detail, whatever its outline: a disc, a square and a head cut by the image's frame,
    # each of one grey in a dark background
    yy, xx = np.mgrid[:48, :48]
    flat = np.stack([((yy - 24) ** 2 + (xx - 24) ** 2 < 18 ** 2), (abs(yy - 24) < 15) & (abs(xx - 24) < 15),
                     ((yy - 40) ** 2 + (xx - 24) ** 2 < 20 ** 2)])
    read = usage.detail(torch.from_numpy(np.float32(flat))[:, None] * 1.2 - 1)
    assert read.abs().max() < 1e-5
    # a cell is the mean over its pixels whose box lies in the head: a checkerboard over the whole image reads the
    # same in a cell the head fills and in one it covers in part (only the 3 x 3 boxes: their cells keep inner pixels)
    board = np.float32(0.3 + 0.3 * ((yy + xx) % 2))
    every = usage.detail(torch.from_numpy(board)[None, None] * 2 - 1)[0].view(len(usage.DETAIL_BOXES), 16)
    # a head filling the image: the frame's padding counts as outside, so every cell reads the same at each scale
    assert torch.allclose(every, every[:, :1].expand_as(every), rtol=1e-4)
    whole = every[0]
    part = usage.detail(torch.from_numpy(np.where(yy < 30, board, 0))[None, None] * 2 - 1)[0, :16]
    assert whole.min() > 0.05 and torch.allclose(part[:4], whole[:4], rtol=1e-4)  # the top row: inside the head
    assert torch.allclose(part[8:12], whole[8:12], rtol=1e-4)  # rows 24-35 of the head's 30: in part, the same mean
    assert part[12:].abs().max() == 0  # no pixel of the bottom row's cells in the head: 0


def test_the_source_probe_reads_chance_of_translations_that_depend_on_anatomy_and_target_alone():
    """Toward each b: b's scan of the anatomy whatever the source reads chance, as b's clean truth does, whatever lies
    outside b's brain mask; the inputs whatever the target (identity), and b's scans with a gain of their source, name
    it. Each scanner's masks here lack a strip of their own: b's mask is used, not the source's."""
    test = traveling(n=12, k=3)
    source = test.manifest.domain_index.to_numpy()
    masks = np.asarray(test.masks, bool).copy()
    for i, d in enumerate(source):
        masks[i, 6 + 3 * d: 9 + 3 * d] = False
    test = replace(test, masks=masks)
    oracle, ignoring = oracle_and_ignoring_outputs(test)
    gain = np.array([0.6, 1.0, 1.4], np.float32)[source][None, :, None, None]
    outside = np.where(on_every_target(test, masks), oracle, 0.1 * (1 + source[None, :, None, None]))  # source mark
    table = usage.source_probe(test, {"oracle": oracle.astype(np.float16), "outside": outside, "identity": ignoring,
                                      "gained": np.clip(oracle * gain, 0, 1)}).set_index("method")
    assert list(table.index) == [usage.TRUTH_OF_TARGET, "oracle", "outside", "identity", "gained"]
    assert np.allclose(table.chance, 1 / 3)
    assert np.allclose(table.loc[[usage.TRUTH_OF_TARGET, "oracle", "outside"], ["summary", "detail"]], 1 / 3)
    assert table.loc["identity", "summary"] > 0.45 and table.loc["identity", "detail"] > 0.75  # chance 1/3
    assert table.loc["gained", "summary"] > 0.75
    # without clean truths there is no reference row; without traveling subjects nothing to read
    assert list(usage.source_probe(replace(test, clean=None), {"oracle": oracle}).method) == ["oracle"]
    m = test.manifest.reset_index(drop=True)
    lonely = type(test)(test.images[:3], test.masks[:3], None, m.iloc[:3].assign(subject=["a", "b", "c"]), test.domains)
    with pytest.raises(ValueError, match="traveling subjects"):
        usage.source_probe(lonely, {"oracle": oracle[:, :3]})
    # one anatomy in every scanner: no source has the two subjects folds by subject need, nothing is read
    assert usage.source_probe(test.take(np.flatnonzero(m.subject == "t0")), {"oracle": oracle[:, m.subject == "t0"]}
                              ).empty


def test_the_source_probe_averages_over_targets_and_leaves_out_lone_scans_and_sources_of_one_subject():
    """s1 misses anatomies t0-t3, s2 saw t0 alone: toward s0 the sources are s0's 9 traveling slices (t0, t4-t11;
    t1-t3, seen by s0 alone, left out) and s1's 8 (s2's one subject left out), toward s1 8 and 8, toward s2 nothing to
    probe; chance is each target's largest share, averaged."""
    full = traveling(n=12, k=3)
    m = full.manifest
    gone = ((m.domain == "s1") & m.subject.isin(["t0", "t1", "t2", "t3"])) | ((m.domain == "s2") & (m.subject != "t0"))
    kept = np.flatnonzero(~gone.to_numpy())
    test = full.take(kept)
    oracle, ignoring = (o[:, kept] for o in oracle_and_ignoring_outputs(full))
    table = usage.source_probe(test, {"oracle": oracle, "identity": ignoring}).set_index("method")
    assert table.chance.iloc[0] == pytest.approx((9 / 17 + 1 / 2) / 2)
    assert abs(table.loc["oracle", "summary"] - table.chance.iloc[0]) < 0.1
    assert table.loc["identity", "detail"] > 0.75


def translator(shape=(32, 32), k=3, **kw):
    torch.manual_seed(0)
    cfg = drit.DRITConfig(image_shape=shape, k=k, variant="drit++", width=4, attr=8, n_res=1, **kw)
    return drit.Translator(cfg).eval()


def test_report_tells_a_generator_that_ignores_its_codes_from_one_that_uses_them():
    """With its code modulation zeroed the generator ignores its codes (sensitivity exactly 0);
    as initialised (random modulation weights) it does not."""
    test = traveling(n=6, k=3)
    model = translator()

    def outputs(m):
        harm = Harmonizer(m)
        return np.stack([harm.to_scanner(test.images, b) for b in range(3)])

    using = usage.report(model, test, outputs(model))
    for block in model.generator.res:
        torch.nn.init.zeros_(block.film.weight)
        torch.nn.init.zeros_(block.film.bias)
    ignoring = usage.report(model, test, outputs(model))
    assert ignoring["target_sensitivity"] == 0 and ignoring["chance"] == 1 / 3
    assert using["target_sensitivity"] > 0.02
    assert set(using) >= {"probe_zc", "probe_za", "dc_accuracy", "ds1_accuracy", "ds2_accuracy", "share_zc",
                          "share_inputs"}
    assert 0 < using["share_inputs"] < 1 and 0 <= using["share_zc"] <= 1
    assert np.isnan(using["probe_zc_window"]) and np.isnan(using["probe_zc_fed"])  # whole slices: one map to probe
    assert all(0 <= using[k] <= 1 for k in ("probe_zc", "probe_za", "dc_accuracy", "ds1_accuracy", "ds2_accuracy"))


def test_the_probes_and_discriminator_accuracies_read_what_a_model_is_known_to_carry(monkeypatch):
    """Codes made to carry the scanner (noise plus a per-scanner offset) are probed at 1; codes of
    noise alone within the probe's margin of chance; discriminators that always name one scanner
    score exactly that scanner's share of the test slices."""
    test = traveling(n=6, k=3)
    model = translator()
    gen = torch.Generator().manual_seed(0)
    x0 = torch.zeros(1, 1, *test.images.shape[-2:])
    zc_shape = model.encode(x0, None).shape[1:]
    za_size = model.attributes(x0, torch.zeros(1, dtype=torch.long))[0].shape[1]
    noise = lambda n, *shape: torch.randn(n, *shape, generator=gen)

    def models(carry: float):
        def attributes(x, labels=None, sample=False):
            c = torch.nn.functional.one_hot(labels, 3).float()
            return noise(len(x), za_size) + carry * c.repeat(1, za_size // 3 + 1)[:, :za_size], c, x.new_zeros(())

        def encode(x, codes, *args):
            return noise(len(x), *zc_shape) + carry * codes[1].argmax(1).float()[:, None, None, None]

        monkeypatch.setattr(model, "attributes", attributes)
        monkeypatch.setattr(model, "encode", encode)
        return usage.report(model, test, np.stack([np.asarray(test.images)] * 3))

    class Always(torch.nn.Module):  # a discriminator that names scanner k for every input
        def __init__(self, k, with_adversarial=True):
            super().__init__()
            self.k, self.with_adversarial = k, with_adversarial

        def forward(self, x, *grid):
            scores = torch.eye(3)[self.k].expand(len(x), 3)
            return (None, scores) if self.with_adversarial else scores

    monkeypatch.setattr(model, "dc", Always(1, with_adversarial=False))
    monkeypatch.setattr(model, "ds1", Always(2))
    monkeypatch.setattr(model, "ds2", Always(0))
    carrying, ignoring = models(carry=3.0), models(carry=0.0)
    assert carrying["probe_zc"] == 1 and carrying["probe_za"] == 1
    for key in ("probe_zc", "probe_za"):
        assert ignoring[key] <= usage.probe_bar(ignoring["chance"]), (key, ignoring[key])
    labels = np.asarray(test.labels)
    for key, k in (("dc_accuracy", 1), ("ds1_accuracy", 2), ("ds2_accuracy", 0)):
        assert carrying[key] == ignoring[key] == np.mean(labels == k)


def test_a_window_trained_model_s_content_is_also_probed_on_a_window_and_as_g_is_fed_it():
    """The window's content map is E^c of the slice's central training-sized window, summarised
    as the whole slice's is (each channel's mean and spread, then its 4 x 4 pooled map); the map G
    is fed (the windows' readings put back, ``Translator.content_as_fed``) is summarised so too."""
    test = traveling(n=4, k=2)
    torch.manual_seed(0)
    cfg = drit.DRITConfig(image_shape=(16, 16), slice_shape=test.images.shape[1:], view=16, k=2, variant="drit++",
                          width=4, attr=8, n_res=1, content_norm=False)
    model = drit.Translator(cfg).eval()
    c = usage.codes(model, test.images, test.labels)
    assert c["zc_window"].shape == c["zc"].shape
    def summary(images, read):  # each channel's mean and spread, then its 4 x 4 pooled map, written out
        with torch.no_grad():
            maps = read(torch.from_numpy(images).unsqueeze(1) * 2 - 1)
        pooled = torch.nn.functional.adaptive_avg_pool2d(maps, 4).flatten(1)
        return torch.cat([maps.flatten(2).mean(2), maps.flatten(2).std(2, correction=0), pooled], 1).numpy()

    assert np.allclose(c["zc_window"][:3], summary(test.images[:3, 8:24, 8:24], model.content), atol=1e-5)
    assert not np.allclose(c["zc_window"], c["zc"], atol=1e-3)  # not the whole slice's map
    assert np.allclose(c["zc_fed"][:3], summary(test.images[:3], model.content_as_fed), atol=1e-5)
    assert not np.allclose(c["zc_fed"], c["zc"], atol=1e-3) and not np.allclose(c["zc_fed"], c["zc_window"], atol=1e-3)


def test_a_window_trained_model_s_discriminators_are_also_read_on_the_central_window(monkeypatch):
    """Discriminators that name scanner 1 for a window-sized input and 0 otherwise, on toy scanners
    of unequal shares: the whole-slice accuracies score scanner 0's share, the window accuracies
    scanner 1's; D_c reads the whole slice without a grid and the window with its cells'
    whole-slice coordinates, those of the central window's corner."""
    full = traveling(n=6, k=2)
    test = full.take(np.flatnonzero((full.labels == 0) | (np.arange(len(full)) < 6)))  # scanner 1 in 3 rows of 9
    labels = np.asarray(test.labels)
    assert np.mean(labels == 1) not in (0, 0.5, 1)
    torch.manual_seed(0)
    cfg = drit.DRITConfig(image_shape=(16, 16), slice_shape=test.images.shape[1:], view=16, k=2, variant="drit++",
                          width=4, attr=8, n_res=1, content_norm=False, dc_field=3)
    model = drit.Translator(cfg).eval()
    zc_window = model.encode(torch.zeros(1, 1, 16, 16), None).shape[-1]
    grids = []

    class BySize(torch.nn.Module):
        def __init__(self, size, adversarial):
            super().__init__()
            self.size, self.adversarial = size, adversarial

        def forward(self, x, grid=None):
            if not self.adversarial:
                grids.append(grid)
            scores = torch.eye(2)[int(x.shape[-1] == self.size)].expand(len(x), 2)
            return (None, scores) if self.adversarial else scores

    monkeypatch.setattr(model, "dc", BySize(zc_window, adversarial=False))
    monkeypatch.setattr(model, "ds1", BySize(16, adversarial=True))
    monkeypatch.setattr(model, "ds2", BySize(16, adversarial=True))
    diag = usage.report(model, test, np.stack([np.asarray(test.images)] * 2))
    for d in ("dc", "ds1", "ds2"):
        assert diag[f"{d}_accuracy"] == np.mean(labels == 0) and diag[f"{d}_accuracy_window"] == np.mean(labels == 1)
    h, w = test.images.shape[1:]
    corner = torch.tensor([[(h - 16) // 2, (w - 16) // 2]] * len(test), dtype=torch.float32)
    assert len(grids) == 2 and sum(g is None for g in grids) == 1
    window_grid = next(g for g in grids if g is not None)
    assert torch.equal(window_grid, model.content_grid(corner, (zc_window, zc_window)))
    assert not torch.equal(window_grid, model.content_grid(corner * 0, (zc_window, zc_window)))
