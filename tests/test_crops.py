import dataclasses

import numpy as np
import pytest
import torch

from nbutils import crops, drit, gmvae, supervised


def test_crops_are_centred_on_the_brain_and_fit_in_the_slice():
    rng = np.random.default_rng(0)
    masks = np.zeros((50, 40, 40), bool)
    masks[:, 30:34, 2:6] = True  # a small brain near a corner: crops must shift to fit
    starts = crops.crop_starts(masks, 16, rng)
    assert ((starts >= 0) & (starts <= 40 - 16)).all()
    for (y, x) in starts:  # every window holds brain, and near the corner it is pushed inside
        assert masks[0, y: y + 16, x: x + 16].any()
    # centre rows 30..33 -> starts 22..25, clamped to 40 - 16 = 24; centre columns 2..5 -> clamped to 0
    assert set(starts[:, 0]) == {22, 23, 24} and (starts[:, 1] == 0).all()
    images = rng.random((50, 40, 40)).astype(np.float16)
    cut, at = crops.random_crops(images, masks, np.arange(5), 16, np.random.default_rng(1))
    again = crops.take(images[:5], crops.crop_starts(masks[:5], 16, np.random.default_rng(1)), 16)
    assert cut.shape == (5, 16, 16) and cut.dtype == np.float32 and np.array_equal(cut, again)
    assert np.array_equal(crops.take(images[:5], at, 16), cut)
    whole, at = crops.random_crops(images, masks, np.array([3, 1]), 0, rng)  # 0: whole slices
    assert whole.shape == (2, 40, 40) and not at.any()
    with pytest.raises(ValueError, match="do not fit"):
        crops.crop_starts(masks, 41, rng)


def test_a_window_has_the_coordinates_of_its_part_of_the_whole_slice():
    whole = crops.coordinates(None, (30, 22), n=2)
    assert whole.shape == (2, 2, 30, 22)
    assert whole[0, 0, 0, 0] == -1 and whole[0, 0, -1, 0] == 1 and whole[0, 1, 0, -1] == 1  # rows, then columns
    window = crops.coordinates(torch.tensor([[4.0, 10.0], [0.0, 0.0]]), (8, 12), (30, 22))
    assert torch.allclose(window[0], whole[0, :, 4:12, 10:22]) and torch.allclose(window[1], whole[1, :, :8, :12])


def test_a_view_is_the_whole_slice_down_sampled_without_aliasing():
    x = torch.zeros(1, 1, 64, 64)
    x[..., ::2, :] = 1.0  # a one-pixel stripe pattern: aliasing would keep it, anti-aliasing averages it
    v = crops.view(x, 16)
    assert v.shape == (1, 1, 16, 16)
    assert torch.allclose(v, torch.full_like(v, 0.5), atol=0.05)
    assert crops.view(v, 16) is v
    flat = crops.views(np.full((3, 64, 64), 0.3, np.float16), 16)
    assert flat.shape == (3, 16, 16) and np.allclose(flat, 0.3, atol=1e-3)


def test_the_gm_vae_reads_a_larger_slice_as_its_view():
    torch.manual_seed(0)
    model = gmvae.GMVAE(gmvae.GMVAEConfig(image_shape=(16, 16), k=3, gaussian_size=8, width=4)).eval()
    big = torch.rand(2, 1, 48, 48)
    with torch.no_grad():
        assert torch.allclose(model.infer(big)["mu"], model.infer(crops.view(big, 16))["mu"])
    with pytest.raises(ValueError, match="expected images"):
        model.infer(torch.rand(2, 1, 16, 12))


@pytest.mark.parametrize("variant", ["gmm-drit", "drit++"])
def test_stage_two_trains_on_crops_and_harmonizes_whole_slices(variant):
    """Trained on 16 px windows of 32 px slices, E^a reading 16 px views of the whole slices:
    a step runs on windows (the batch carries the views), and the model translates whole slices."""
    from nbutils.harmonize import Harmonizer

    torch.manual_seed(0)
    gm = gmvae.GMVAE(gmvae.GMVAEConfig(image_shape=(16, 16), k=3, gaussian_size=8, width=4)).eval()
    cfg = drit.DRITConfig(image_shape=(16, 16), slice_shape=(32, 32), view=16, k=3, variant=variant, width=4,
                          attr=8, n_res=1)
    task = drit.DRITTask(cfg, gm if variant == "gmm-drit" else None)
    images = np.random.default_rng(0).random((12, 32, 32)).astype(np.float16)
    masks = np.ones(images.shape, bool)
    sampler = drit.PairSampler(images, np.arange(12) % 3, 3, seed=1, crop=16, masks=masks, view=16)
    batch = sampler(0)
    assert batch["xa"].shape == (3, 1, 16, 16) and batch["va"].shape == (3, 1, 16, 16)
    if variant == "gmm-drit":  # the codes computed once are those of the whole slices' views
        sampler.attach_codes(task.modules)
        cached = sampler(0)
        for side in "ab":
            za, c, _ = task.modules.attributes(batch[f"v{side}"], batch[f"l{side}"])
            assert torch.allclose(cached[f"z{side}"], za, atol=1e-5) and torch.equal(cached[f"c{side}"], c)
    from nbutils import train
    grids = []  # D_c is told where the windows' content cells lie in the whole slices
    task.modules.dc.register_forward_pre_hook(lambda mod, args: grids.append(args[1]))
    losses = task.step(batch, 0, train.Context(torch.device("cpu"), task.optimizers))
    assert np.isfinite(list(losses.values())).all() and losses["latent"] == 0.0
    expected = task.modules.content_grid(torch.cat([batch["oa"], batch["ob"]]), (4, 4))
    assert len(grids) == 2 and all(g is not None and torch.equal(g, expected) for g in grids)
    harm = Harmonizer(task.modules.eval())
    out = harm.scanner_free(np.asarray(images[:2], np.float32))
    assert out.shape == (2, 32, 32)
    with pytest.raises(ValueError, match="size of the model's training slices"):
        harm.scanner_free(np.zeros((1, 16, 16), np.float32))
    with pytest.raises(ValueError, match="masks"):
        drit.PairSampler(images, np.arange(12) % 3, 3, crop=16)


def test_a_native_reading_gm_vae_is_handed_whole_slices_in_stage_two():
    """A GM-VAE that reads its appearance features from whole 32 px slices (viewing them to 16 px
    for its trunk) is handed the whole slices by the sampler, and a training step runs."""
    torch.manual_seed(0)
    gm = gmvae.GMVAE(gmvae.GMVAEConfig(image_shape=(16, 16), k=3, gaussian_size=8, width=4, histogram_bins=8,
                                       spectrum_bands=2, appearance_size=32)).eval()
    cfg = drit.DRITConfig(image_shape=(16, 16), slice_shape=(32, 32), view=16, k=3, variant="gmm-drit", width=4,
                          attr=8, n_res=1)
    task = drit.DRITTask(cfg, gm)
    assert task.modules.view_size == 32
    images = np.random.default_rng(0).random((12, 32, 32)).astype(np.float16)
    sampler = drit.PairSampler(images, np.arange(12) % 3, 3, seed=1, crop=16, masks=np.ones(images.shape, bool),
                               view=task.modules.view_size)
    batch = sampler(0)
    assert batch["xa"].shape == (3, 1, 16, 16) and batch["va"].shape == (3, 1, 32, 32)
    idx = np.sort(drit.PairSampler(images, np.arange(12) % 3, 3, seed=1).a(0))  # the same rows
    np.testing.assert_allclose(batch["va"][:, 0].numpy(), images[idx].astype(np.float32) * 2 - 1)
    from nbutils import train
    losses = task.step(batch, 0, train.Context(torch.device("cpu"), task.optimizers))
    assert np.isfinite(list(losses.values())).all()


def test_a_window_trained_translator_harmonizes_a_slice_window_by_window():
    """Trained on 16 px windows, the model translates a 48 px slice from 16 px windows: what lies
    more than a window away cannot change a pixel's output (the instance norms see windows, as in
    training), and a slice of the training windows' size goes through in one pass."""
    torch.manual_seed(0)
    cfg = drit.DRITConfig(image_shape=(16, 16), slice_shape=(48, 48), view=16, k=3, variant="drit++", width=4,
                          attr=8, n_res=1)
    model = drit.Translator(cfg).eval()
    x = torch.rand(2, 1, 48, 48) * 2 - 1
    far = x.clone()
    far[..., :12, :12] = 1.0  # a bright patch in one corner
    za, c = torch.randn(2, 8), torch.eye(3)[:2]
    with torch.no_grad():
        out, moved = model.translate(x, za, c), model.translate(far, za, c)
        assert out.shape == x.shape and out.abs().max() <= 1
        assert torch.equal(out[..., 32:, 32:], moved[..., 32:, 32:])  # the opposite corner's windows never see it
        assert not torch.equal(out[..., :12, :12], moved[..., :12, :12])
        whole = model.generator(model.content(far), za, c, (48, 48))
        assert not torch.allclose(whole[..., 32:, 32:], model.generator(model.content(x), za, c, (48, 48))[..., 32:, 32:])
        empty = x.clone()
        empty[..., 24:, 24:] = -1.0  # background reaching the border stays background
        empty[..., 4:8, 4:8] = -1.0  # a dark spot inside the object is translated
        done = model.translate(empty, za, c)
        assert (done[..., 24:, 24:] == -1).all() and (done[..., 4:8, 4:8] > -1).any()
        assert torch.equal(drit.outside(empty)[..., 24:, 24:], torch.ones(2, 1, 24, 24, dtype=torch.bool))
        assert not drit.outside(empty)[..., :24, :24].any()
        window = x[..., :16, :16]
        assert torch.equal(model.translate(window, za, c), model.generator(model.content(window), za, c, (16, 16)))
        # a slice lower (narrower) than a window but wider (higher): windows as high (wide) as the slice, cut
        # along its other side; what only the first window covers is that window's translation and reading
        for small, first in ((x[..., :12, :], (..., slice(None), slice(0, 16))),
                             (x[..., :, :12], (..., slice(0, 16), slice(None)))):
            out = model.translate(small, za, c)
            assert out.shape == small.shape and torch.isfinite(out).all()
            part = model.generator(model.content(small[first]), za, c, small[first].shape[-2:])
            alone = (..., slice(0, 8), slice(0, 8))  # the next window starts 8 px further along the long side
            torch.testing.assert_close(out[alone], part[alone])
            fed, read = model.content_as_fed(small), model.content(small[first])
            assert fed.shape == (2, model.content.channels, *(-(-n // 4) for n in small.shape[-2:]))
            torch.testing.assert_close(fed[..., :2, :2], read[..., :2, :2])


def test_the_content_map_g_is_fed_is_each_window_s_reading_put_back_where_it_lies():
    """Trained on 16 px windows, the model translates a 48 px slice window by window, so the
    content map G is fed is made of the windows' readings: a corner cell that only one window
    covers is that window's own reading (not the whole slice's, which is normalised over all of
    it), and a content map that is a local function of the image comes back exactly as read from
    the whole slice (every window put back at its place, the overlaps blended). A model trained
    on whole slices is fed E^c's reading of the slice."""
    torch.manual_seed(0)
    cfg = drit.DRITConfig(image_shape=(16, 16), slice_shape=(48, 48), view=16, k=3, variant="drit++", width=4,
                          attr=8, n_res=1)
    model = drit.Translator(cfg).eval()
    x = torch.rand(2, 1, 48, 48) * 2 - 1
    with torch.no_grad():
        fed = model.content_as_fed(x)
        corner = model.content(x[..., :16, :16])
        assert fed.shape == model.content(x).shape == (2, model.content.channels, 12, 12)
        torch.testing.assert_close(fed[..., :2, :2], corner[..., :2, :2])  # cells 2-3 are shared with the next window
        assert not torch.allclose(fed[..., :2, :2], model.content(x)[..., :2, :2], atol=1e-3)

        class Pool(torch.nn.Module):  # a content map that is a local function of the image: its 4 x 4 means
            factor = 4

            def forward(self, image):
                return torch.nn.functional.avg_pool2d(image, 4)

        model.content = Pool()
        torch.testing.assert_close(model.content_as_fed(x), Pool()(x))

        class Mean(torch.nn.Module):  # each window's map is its own mean: overlaps show the blend
            factor = 4

            def forward(self, image):
                return image.mean((2, 3), keepdim=True).expand(-1, -1, image.shape[-2] // 4, image.shape[-1] // 4)

        model.content = Mean()
        fed = model.content_as_fed(x)
        # map cell (2, 0): rows 2-3 of the window at y = 0 and rows 0-1 of the one at y = 8, one window in x
        t = drit.taper(4)
        w0, w8 = t[2] * t[0], t[0] * t[0]
        m0, m8 = x[..., :16, :16].mean((2, 3)), x[..., 8:24, :16].mean((2, 3))
        torch.testing.assert_close(fed[..., 2, 0], (w0 * m0 + w8 * m8) / (w0 + w8))
        torch.testing.assert_close(fed[..., 0, 0], m0)
        # 50 px: the last windows start at 34, off E^c's 4 px cells, and end flush with the map
        odd = torch.rand(2, 1, 50, 50) * 2 - 1
        fed = model.content_as_fed(odd)
        assert fed.shape == (2, 1, 13, 13) and torch.isfinite(fed).all()
        torch.testing.assert_close(fed[..., 12, 12], odd[..., 34:, 34:].mean((2, 3)))
        whole = drit.Translator(dataclasses.replace(cfg, image_shape=(48, 48), slice_shape=None)).eval()
        assert torch.equal(whole.content_as_fed(x), whole.content(x))


@pytest.mark.parametrize("variant", ["drit++", "gmm-drit"])
def test_translating_with_many_codes_reads_each_window_once_and_gives_each_code_s_translation(variant):
    """``translate_each`` gives, for every code, exactly what ``translate`` gives with that code
    alone, on whole slices and window by window (with ``content_field``, which makes E^c read the
    source's own codes, for GMM-DRIT); E^c runs once per row of windows, not once per code."""
    torch.manual_seed(0)
    for slices in ((16, 16), (48, 48)):
        gm = None if variant == "drit++" else gmvae.GMVAE(gmvae.GMVAEConfig(
            image_shape=(16, 16), k=3, gaussian_size=8, width=4, histogram_bins=8, spectrum_bands=2,
            appearance_size=slices[0])).eval()
        cfg = drit.DRITConfig(image_shape=(16, 16), slice_shape=slices, view=16, k=3, variant=variant, width=4,
                              attr=8, n_res=1, bias_field=2 if variant == "gmm-drit" else 0,
                              content_field=variant == "gmm-drit")
        model = drit.Translator(cfg, gm).eval()
        with torch.no_grad():  # a field that is not flat, so that E^c's reading depends on the source's codes
            if model.generator.field is not None:
                model.generator.field.coef.weight.normal_(0, 0.3)
        x = torch.rand(2, 1, *slices) * 2 - 1
        codes = [(torch.randn(2, 8), torch.eye(3)[[k, (k + 1) % 3]]) for k in range(3)]
        calls = []
        hook = model.content.register_forward_hook(lambda *_: calls.append(1))
        with torch.no_grad():
            many = model.translate_each(x, codes)
            rows = len(calls)
            one = [model.translate(x, za, c) for za, c in codes]
        hook.remove()
        assert rows == (1 if slices == (16, 16) else 5)  # 48 px in 16 px windows at 8 px strides: 5 rows
        assert len(many) == 3 and all(torch.equal(m, o) for m, o in zip(many, one))
        assert not torch.equal(many[0], many[1])


def test_the_paired_translator_sees_whole_slice_coordinates_in_a_window():
    """A window at ``origin`` gets the coordinate channels of that part of the whole slice, so a
    translator trained on windows knows where it is (bias fields are fixed shapes in the field)."""
    torch.manual_seed(0)
    net = supervised.PairedUNet(k=2, width=4).eval()
    x = torch.rand(1, 1, 32, 32)
    src, dst = torch.tensor([0]), torch.tensor([1])
    with torch.no_grad():
        whole = net(x, src, dst)
        window = net(x[..., 8:24, 16:32], src, dst, origin=torch.tensor([[8.0, 16.0]]), full=(32, 32))
        elsewhere = net(x[..., 8:24, 16:32], src, dst, origin=torch.tensor([[0.0, 0.0]]), full=(32, 32))
    inner = (slice(4, 12), slice(4, 12))  # away from the window's border (zero padding differs there)
    assert torch.allclose(window[0, 0][inner], whole[0, 0, 8:24, 16:32][inner], atol=1e-4)
    assert not torch.allclose(window, elsewhere, atol=1e-4)
