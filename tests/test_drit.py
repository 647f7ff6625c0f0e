import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nbutils import appearance, crops, drit, gmvae, nets, train


def tiny_gmvae(shape=(16, 16), k=3, attr=8):
    torch.manual_seed(0)
    return gmvae.GMVAE(gmvae.GMVAEConfig(image_shape=shape, k=k, gaussian_size=attr, width=4)).eval()


def make_task(variant="gmm-drit", shape=(16, 16), **kw):
    cfg = drit.DRITConfig(image_shape=shape, k=3, variant=variant, width=4, attr=8, n_res=1, **kw)
    torch.manual_seed(0)
    return drit.DRITTask(cfg, tiny_gmvae(shape) if variant == "gmm-drit" else None)


def sampler(shape=(16, 16), n=24, batch=3):
    images = np.random.default_rng(0).random((n, *shape)).astype(np.float16)
    return drit.PairSampler(images, np.arange(n) % 3, batch, seed=1)


@pytest.mark.parametrize("shape", [(16, 16), (30, 22), (182, 182)])
def test_any_image_size_round_trips_through_content_and_generator(shape):
    torch.manual_seed(0)
    enc, gen = nets.ContentEncoder(4, 1), nets.Generator(4, attr=8, k=3, n_res=1)
    x = torch.rand(2, 1, *shape) * 2 - 1
    zc = enc(x)
    assert zc.shape[-2:] == tuple(-(-s // 4) for s in shape)  # padded to a multiple of 4
    out = gen(zc, torch.randn(2, 8), torch.zeros(2, 3), shape)
    assert out.shape == x.shape and out.abs().max() <= 1
    d = nets.ScannerDiscriminator(4, 3)
    adv, cls = d(x)
    assert cls.shape == (2, 3) and adv.shape[0] == 2


def test_the_bias_field_is_flat_at_first_placed_by_position_and_learns_a_scanner_s_field():
    """The generator's bias field starts flat (the image is the plain generator's), is drawn at
    each window's place in the whole slice, and its log-polynomial can learn two toy scanners'
    fields from their codes (a tilt and a centre-bright bowl, as TorchIO's RandomBiasField draws)."""
    torch.manual_seed(0)
    plain, biased = nets.Generator(4, attr=8, k=3, n_res=1), nets.Generator(4, attr=8, k=3, n_res=1, bias_field=3)
    biased.load_state_dict(plain.state_dict(), strict=False)
    zc, za, c = torch.randn(2, 16, 5, 5), torch.randn(2, 8), torch.eye(3)[:2]
    with torch.no_grad():
        assert torch.allclose(plain(zc, za, c, (20, 20)), biased(zc, za, c, (20, 20)), atol=1e-6)
    field = nets.BiasField(3, order=3)
    grid = crops.coordinates(None, (24, 24), n=2)
    u, v = grid[0, 0], grid[0, 1]
    truth = torch.stack([torch.exp(0.3 * v), torch.exp(0.4 * (1 - 2 * (u ** 2 + v ** 2)))])[:, None]
    codes = torch.eye(3)[:2]
    opt = torch.optim.Adam(field.parameters(), lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        loss = (field(codes, grid).log() - truth.log()).square().mean()
        loss.backward()
        opt.step()
    with torch.no_grad():
        learned = field(codes, grid)
        assert (learned - truth).abs().max() < 0.02
        window = field(codes, crops.coordinates(torch.tensor([[6.0, 12.0]] * 2), (10, 10), (24, 24)))
        assert torch.allclose(window, learned[..., 6:16, 12:22], atol=1e-5)
    assert drit.DRITConfig(image_shape=(8, 8), k=2).bias_field == 3


def test_the_generator_leaves_no_checkerboard():
    """A flat content map must give a flat image away from the borders. A 4 x 4 stride-2
    transposed convolution (DRIT's up-sampling, ``upsample="transpose"``) overlaps unevenly and
    prints a period-2 pattern on it; nearest-neighbour resizing followed by a convolution cannot."""
    def interior(upsample):
        torch.manual_seed(0)
        g = nets.Generator(4, 8, 3, n_res=1, down=2, upsample=upsample)
        with torch.no_grad():
            return g.up(torch.ones(1, 16, 16, 16))[..., 16:48, 16:48]
    assert interior("resize").std() < 1e-6
    assert interior("transpose").std() > 0.05
    assert drit.DRITConfig(image_shape=(8, 8), k=2).upsample == "resize"


@pytest.mark.parametrize("padding", ["zeros", "reflect"])
@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (16, 16)])
def test_the_up_convolution_is_nearest_up_sampling_then_the_convolution(shape, padding):
    """:class:`nets.UpConv` computes conv3x3(nearest 2x(x)) on the small map: the same outputs and
    the same gradients for the input, the weights and the bias, borders included, the up-sampled
    map padded with zeros or (:func:`nets.reflect_padding`) by reflection."""
    torch.manual_seed(0)
    up = nets.UpConv(5, 3)
    if padding == "reflect":
        nets.reflect_padding(up)
    x = torch.randn(2, 5, *shape, dtype=torch.float64, requires_grad=True)
    up = up.double()
    doubled = torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")
    if padding == "reflect":
        doubled = torch.nn.functional.pad(doubled, (1, 1, 1, 1), mode="reflect")
    direct = torch.nn.functional.conv2d(doubled, up.weight, up.bias, 1, 1 if padding == "zeros" else 0)
    fused = up(x)
    assert fused.shape == direct.shape == (2, 3, 2 * shape[0], 2 * shape[1])
    assert torch.allclose(fused, direct, atol=1e-12)
    seed = torch.randn_like(direct)
    for a, b in zip(torch.autograd.grad(direct, [x, up.weight, up.bias], seed),
                    torch.autograd.grad(fused, [x, up.weight, up.bias], seed)):
        assert torch.allclose(a, b, atol=1e-10)


def test_with_reflection_padding_a_flat_image_gives_flat_maps_to_the_border():
    """With ``padding`` "reflect" (as DRIT does; off by default) E^c and G pad by reflection: a flat
    input gives a flat content map and a flat content map a flat image, up to their borders, so a
    window's edge looks like its centre. With zero padding the borders differ. The discriminators
    keep zeros."""
    def spread(padding):
        torch.manual_seed(0)
        m = drit.Translator(drit.DRITConfig(image_shape=(16, 16), k=3, variant="drit++", width=4, n_res=1, down=1,
                                            content_norm=False, bias_field=0, padding=padding))
        with torch.no_grad():
            zc = m.content(torch.full((1, 1, 16, 16), 0.3))
            y = m.generator.up(torch.ones(1, 8, 8, 8))
        return zc.std(dim=(2, 3)).max().item(), y.std().item()
    assert max(spread("reflect")) < 1e-5
    assert min(spread("zeros")) > 1e-3
    m = drit.Translator(drit.DRITConfig(image_shape=(16, 16), k=3, variant="drit++", padding="reflect"))
    padded = lambda part: {c.padding_mode for c in part.modules() if isinstance(c, torch.nn.Conv2d) and any(c.padding)}
    assert padded(m.content) == padded(m.generator) == {"reflect"}
    assert padded(m.dc) | padded(m.ds1) | padded(m.ds2) == {"zeros"}
    assert drit.DRITConfig(image_shape=(16, 16), k=3).padding == "zeros"
    with pytest.raises(ValueError, match="padding"):
        drit.DRITConfig(image_shape=(16, 16), k=3, padding="circular")


def test_the_up_convolution_runs_under_autocast_and_keeps_the_checkpoints_names():
    """Under CPU autocast (bfloat16) UpConv gives what the up-sampling and convolution give there;
    the generator's parameters keep the names they had with a separate nn.Upsample module, so
    checkpoints written before UpConv load (up.1: the convolution after the up-sampling, up.2 its
    GroupNorm, up.4 the output convolution)."""
    torch.manual_seed(0)
    up, x = nets.UpConv(6, 4), torch.randn(2, 6, 9, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = up(x)
        direct = torch.nn.functional.conv2d(torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest"),
                                            up.weight, up.bias, 1, 1)
    assert fused.dtype == direct.dtype == torch.bfloat16
    assert (fused.float() - direct.float()).abs().max() < 0.05 * direct.float().abs().max()
    g = nets.Generator(4, 8, 3, n_res=1, down=1)
    assert set(g.up.state_dict()) == {f"{i}.{p}" for i in (1, 2, 4) for p in ("weight", "bias")}


def test_a_normalised_content_map_has_no_channel_gain_or_offset():
    """``norm=True``: every channel of every image's z^c has mean 0 and spread 1, so an image
    and the same image with another gain and offset cannot differ in those statistics."""
    torch.manual_seed(0)
    enc = nets.ContentEncoder(4, 1, down=1, norm=True)
    zc = enc(torch.rand(3, 1, 20, 20) * 2 - 1).flatten(2)
    assert torch.allclose(zc.mean(2), torch.zeros(3, 8), atol=1e-5)
    assert torch.allclose(zc.var(2, unbiased=False), torch.ones(3, 8), atol=1e-2)
    assert make_task().modules.content.norm and not make_task(content_norm=False).modules.content.norm


def test_discriminators_really_apply_instance_norm():
    calls = []
    d = nets.ScannerDiscriminator(4, 3)
    norms = [m for m in d.modules() if isinstance(m, torch.nn.InstanceNorm2d)]
    assert norms
    for m in norms:
        m.register_forward_hook(lambda *a: calls.append(1))
    d(torch.rand(2, 1, 32, 32))
    assert len(calls) == len(norms)


def _train_content_discriminator(norm: bool, steps: int = 150) -> float:
    """Held-out accuracy of D_c trained on instance-normalised toy content maps in which the
    scanner (0 or 1) is only the share of fine texture on a smooth pattern."""
    gen = torch.Generator().manual_seed(0)

    def maps(n):
        labels = torch.randint(0, 2, (n,), generator=gen)
        smooth = torch.nn.functional.interpolate(torch.randn(n, 4, 4, 4, generator=gen), size=16, mode="bilinear")
        texture = torch.randn(n, 4, 16, 16, generator=gen) * (0.3 + 0.7 * labels.view(-1, 1, 1, 1))
        return torch.nn.functional.instance_norm(smooth + texture), labels

    torch.manual_seed(0)
    dc = nets.ContentDiscriminator(4, 2, norm=norm)
    opt = torch.optim.Adam(dc.parameters(), 1e-3)
    for _ in range(steps):
        z, y = maps(32)
        loss = torch.nn.functional.cross_entropy(dc(z), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    z, y = maps(256)
    with torch.no_grad():
        return float((dc(z).argmax(1) == y).float().mean())


def test_the_content_discriminator_sees_what_an_instance_normalised_map_carries():
    """z^c is instance-normalised, so every channel's mean and spread are 0 and 1: D_c must read
    them after conv levels that are not normalised too (toy: the scanner is the share of fine
    texture). With normalised levels it read only each channel's distribution shape."""
    assert _train_content_discriminator(norm=False) > 0.95
    assert _train_content_discriminator(norm=True) < 0.75
    assert make_task().modules.dc.levels[1][1].__class__ is torch.nn.LeakyReLU


@pytest.mark.parametrize("depth, span", [(0, 5), (3, 26)])
def test_the_content_discriminator_compares_distant_parts_of_the_content_map(depth, span):
    """A feature of D_c's last level depends on a span x span patch of the content map: 5 x 5
    with the two 3 x 3 levels alone (too little to compare one tissue with another), 26 x 26 with
    three stride-2 levels after them."""
    torch.manual_seed(0)
    dc = nets.ContentDiscriminator(2, 2, depth=depth)
    z = torch.randn(1, 2, 64, 64, requires_grad=True)
    out = z
    for level in dc.levels:
        out = level(out)
    h, w = out.shape[-2:]
    out[0, :, h // 2, w // 2].sum().backward()
    rows, cols = z.grad[0].abs().sum(0).nonzero(as_tuple=True)
    assert (int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1) == (span, span)


def _train_field_discriminator(order: int, steps: int = 150) -> float:
    """Held-out accuracy of D_c trained on instance-normalised 16 x 16 windows cut anywhere from
    46 x 46 toy content maps in which the scanner (0 or 1) is only a centre-bright or centre-dark
    quadratic field over the whole map."""
    gen = torch.Generator().manual_seed(0)

    def windows(n):
        labels = torch.randint(0, 2, (n,), generator=gen)
        full = torch.nn.functional.interpolate(torch.randn(n, 4, 8, 8, generator=gen), size=46, mode="bilinear")
        full = full + 0.3 * torch.randn(n, 4, 46, 46, generator=gen)
        shade = crops.coordinates(None, (46, 46), n=n).square().sum(1, keepdim=True)
        full = full + (2 * labels.view(-1, 1, 1, 1) - 1) * shade
        origin = torch.randint(0, 31, (n, 2), generator=gen)
        cut = torch.stack([f[:, y: y + 16, x: x + 16] for f, (y, x) in zip(full, origin.tolist())])
        return torch.nn.functional.instance_norm(cut), labels, crops.coordinates(origin.float(), (16, 16), (46, 46))

    torch.manual_seed(0)
    dc = nets.ContentDiscriminator(4, 2, field=order)
    opt = torch.optim.Adam(dc.parameters(), 1e-3)
    for _ in range(steps):
        z, y, grid = windows(32)
        loss = torch.nn.functional.cross_entropy(dc(z, grid), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    z, y, grid = windows(512)
    with torch.no_grad():
        return float((dc(z, grid).argmax(1) == y).float().mean())


def test_the_content_discriminator_reads_a_field_by_where_its_windows_lie():
    """``dc_field``: D_c's spatial moments against the whole-slice coordinates of its cells let it
    see a field at a fixed place in the field of view; position-free statistics of windows cut
    from anywhere cannot (toy: the scanner is a centre-bright or centre-dark field)."""
    assert _train_field_discriminator(order=0) < 0.6
    assert _train_field_discriminator(order=2) > 0.8


def test_content_grid_places_a_window_s_cells_in_the_whole_slice_map():
    """The cells of a window's content map get the coordinates of the same cells of the whole
    slice's map (182 px padded to 184: 46 cells), so D_c reads windows and slices alike."""
    task = make_task(shape=(32, 32), slice_shape=(182, 182), dc_field=2)
    grid = task.modules.content_grid(torch.tensor([[0, 0], [148, 120]]), (8, 8))
    whole = crops.coordinates(None, (46, 46))
    assert torch.allclose(grid[0], whole[0, :, :8, :8])
    assert torch.allclose(grid[1], whole[0, :, 37:45, 30:38], atol=1e-6)
    # one down-sampling (the CPU profiles): a window at an odd pixel starts between two cells
    one = make_task(shape=(32, 32), slice_shape=(182, 182), down=1).modules.content_grid(torch.tensor([[3, 0]]), (16, 16))
    assert torch.allclose(one[0, 0, :, 0], -1 + 2 * (1.5 + torch.arange(16.0)) / 90)
    assert make_task(dc_field=0).modules.content_grid(torch.zeros(1, 2), (4, 4)) is None  # off


def test_the_content_discriminator_s_grid_follows_its_stride_two_levels():
    """With stride-2 levels the grid is halved by 2 x 2 averaging as the map is halved (floor),
    for even and odd sizes; the same map read at another place gives other moments."""
    torch.manual_seed(0)
    dc = nets.ContentDiscriminator(2, 2, depth=2, field=2)
    for size in (32, 30):
        zc, grid = torch.randn(1, 2, size, size), crops.coordinates(None, (size, size))
        assert dc(zc, grid).shape == (1, 2)
    zc = torch.randn(1, 2, 16, 16)
    here = nets.level_stats(dc.levels, zc, crops.coordinates(torch.zeros(1, 2), (16, 16), (32, 32)), 2)[1]
    there = nets.level_stats(dc.levels, zc, crops.coordinates(torch.full((1, 2), 16.0), (16, 16), (32, 32)), 2)[1]
    assert here.shape == there.shape and not torch.allclose(here, there)


def test_the_invariance_term_compares_the_content_of_a_jittered_image_with_z_c():
    """``w_invariance``: L1(E^c(jitter(x)), z^c), reported as ``invariance``; 0 when off. With
    every other weight 0 a step moves E^c and not G: the term trains the content encoder."""
    batch = sampler()(0)
    ctx = lambda t: train.Context(torch.device("cpu"), t.optimizers)
    off = make_task()
    assert off.step(batch, 0, ctx(off))["invariance"] == 0.0
    zero = dict(w_adv=0.0, w_cls=0.0, w_content=0.0, w_self=0.0, w_cc=0.0, w_latent=0.0, w_zc=0.0, w_sf_content=0.0)
    after, values = {}, {}
    for weight in (0.0, 1.0):
        task = make_task(w_invariance=weight, **zero)
        torch.manual_seed(5)
        values[weight] = task.step(batch, 0, ctx(task))["invariance"]
        after[weight] = {k: v.clone() for k, v in task.modules.state_dict().items()}
    # the same step but for the term: only E^c's weights differ (weight decay moves all of them)
    differs = {k.split(".")[0] for k in after[0.0] if not torch.equal(after[0.0][k], after[1.0][k])}
    assert differs == {"content"}
    assert values[0.0] == 0.0 and values[1.0] > 0 and np.isfinite(values[1.0])
    # the change's blur and noise reach the term: the same draws otherwise, another value
    task = make_task(w_invariance=1.0, invariance_blur=2.0, invariance_noise=0.25, **zero)
    torch.manual_seed(5)
    assert task.step(batch, 0, ctx(task))["invariance"] != values[1.0]
    # symmetric: the image's own map learns too, so the same step moves E^c otherwise (and only E^c)
    task = make_task(w_invariance=1.0, invariance_symmetric=True, **zero)
    torch.manual_seed(5)
    assert task.step(batch, 0, ctx(task))["invariance"] == values[1.0]  # the same value: the same draws
    state = task.modules.state_dict()
    moved = {k.split(".")[0] for k in state if not torch.equal(state[k], after[1.0][k])}
    assert moved == {"content"}


def test_the_content_encoder_reads_the_image_without_its_own_field():
    """``content_field``: E^c reads the image divided by the bias field G draws from the image's own
    codes at its pixels' whole-slice positions, so an image carrying exactly that field and the
    same image without it get one content map, as whole slices and as windows cut anywhere (toy: a
    random field); a plain E^c tells them apart, and with the option off E^c reads the image as is."""
    m = make_task(slice_shape=(32, 32), content_field=True).modules.eval()
    torch.manual_seed(1)
    torch.nn.init.normal_(m.generator.field.coef.weight, std=0.3)
    flat = torch.rand(2, 1, 32, 32) * 0.8
    codes = (torch.randn(2, 8), torch.nn.functional.one_hot(torch.tensor([0, 2]), 3).float())
    origin = torch.tensor([[8.0, 4.0], [16.0, 16.0]])
    cut = lambda im: torch.stack([i[:, y: y + 16, x: x + 16] for i, (y, x) in zip(im, origin.long().tolist())])
    with torch.no_grad():
        field = m.generator.field(m.generator._code(*codes), crops.coordinates(None, (32, 32), n=2))
        assert (field - 1).abs().max() > 0.2
        x, plain = flat * field * 2 - 1, flat * 2 - 1
        assert torch.allclose(m.encode(x, codes), m.content(plain), atol=1e-5)
        assert torch.allclose(m.encode(cut(x), codes, origin, (32, 32)), m.content(cut(plain)), atol=1e-5)
        assert (m.content(x) - m.content(plain)).abs().max() > 0.05
        off = make_task(slice_shape=(32, 32)).modules.eval()
        assert torch.equal(off.encode(x, codes), off.content(x))


def test_the_tone_curve_starts_as_the_identity_is_monotone_and_inverts():
    """``nets.ToneCurve``: the identity at first; once moved, a strictly increasing map of [0, 1]
    onto itself (0 and 1 kept), each sample its own, which :meth:`inverse` undoes; trainable."""
    torch.manual_seed(0)
    curve, code = nets.ToneCurve(8, 16), torch.randn(3, 8)
    x = torch.rand(3, 1, 12, 12)
    assert torch.allclose(curve(code, x), x, atol=1e-6) and torch.allclose(curve.inverse(code, x), x, atol=1e-6)
    torch.nn.init.normal_(curve.coef.weight, std=0.5)
    ramp = torch.linspace(0, 1, 201).expand(3, 1, 1, 201)
    y = curve(code, ramp)
    assert (y.diff(dim=-1) > 0).all() and torch.allclose(y[..., 0], torch.zeros(3, 1, 1))
    assert torch.allclose(y[..., -1], torch.ones(3, 1, 1), atol=1e-6)
    assert (y - ramp).abs().max() > 0.1 and (y[0] - y[1]).abs().max() > 0.05  # moved, per sample
    assert torch.allclose(curve.inverse(code, curve(code, x)), x, atol=1e-4)
    assert torch.allclose(curve(code, curve.inverse(code, x)), x, atol=1e-5)
    curve(code, x).sum().backward()
    assert curve.coef.weight.grad.abs().sum() > 0


def test_a_floored_tone_curve_keeps_every_slope_above_its_floor_and_still_inverts():
    """With ``floor`` no segment is flatter than it, however hard the code pushes, so the inverse
    stretches no range more than 1 / floor and undoes the curve; without, segments go flat."""
    torch.manual_seed(0)
    code, ramp = torch.randn(2, 8), torch.linspace(0, 1, 161).expand(2, 1, 1, 161)
    for floor in (0.0, 0.5):
        curve = nets.ToneCurve(8, 16, floor)
        torch.nn.init.normal_(curve.coef.weight, std=3.0)
        slopes = curve.levels(code).diff(dim=1) * 16
        assert torch.allclose(curve(code, ramp)[..., -1], torch.ones(2, 1, 1), atol=1e-6)
        if floor:
            assert slopes.min() >= floor - 1e-6
            assert torch.allclose(curve.inverse(code, curve(code, ramp)), ramp, atol=1e-5)
        else:
            assert slopes.min() < 0.05
    with pytest.raises(ValueError, match="least slope"):
        nets.ToneCurve(8, 16, 1.0)


def test_the_content_encoder_reads_the_image_without_g_s_tone_curve_and_field():
    """With ``tone_curve`` G passes its network's output through a tone curve and then the bias
    field, both drawn from the code; with ``content_field`` E^c reads an image carrying exactly
    both for its own codes as the image without them, on whole slices and windows (toy: random
    curve and field). At first the curve is the identity, so G draws what it drew without it."""
    m = make_task(slice_shape=(32, 32), content_field=True, tone_curve=8).modules.eval()
    plain_g = make_task(slice_shape=(32, 32), content_field=True).modules.eval()
    codes = (torch.randn(2, 8), torch.nn.functional.one_hot(torch.tensor([0, 2]), 3).float())
    zc = torch.randn(2, m.content.channels, 8, 8)
    with torch.no_grad():
        assert torch.equal(m.generator(zc, *codes, (32, 32)), plain_g.generator(zc, *codes, (32, 32)))
    torch.manual_seed(1)
    torch.nn.init.normal_(m.generator.field.coef.weight, std=0.3)
    torch.nn.init.normal_(m.generator.curve.coef.weight, std=0.5)
    flat = torch.rand(2, 1, 32, 32) * 0.8
    origin = torch.tensor([[8.0, 4.0], [16.0, 16.0]])
    cut = lambda im: torch.stack([i[:, y: y + 16, x: x + 16] for i, (y, x) in zip(im, origin.long().tolist())])
    with torch.no_grad():
        code = m.generator._code(*codes)
        grid = crops.coordinates(None, (32, 32), n=2)
        curved = m.generator.curve(code, flat)
        assert (curved - flat).abs().max() > 0.1
        x, plain = curved * m.generator.field(code, grid) * 2 - 1, flat * 2 - 1
        assert torch.allclose(m.encode(x, codes), m.content(plain), atol=1e-3)
        assert torch.allclose(m.encode(cut(x), codes, origin, (32, 32)), m.content(cut(plain)), atol=1e-3)
        assert (m.content(x) - m.content(plain)).abs().max() > 0.05


def test_with_tone_extend_e_c_reads_what_lies_above_g_s_field_rather_than_a_flat_one():
    """An image brighter than the field G draws for it (x / field > 1, as in 5.5-15 % of the built-in test slices'
    brain pixels for a trained model) went through the tone curve's inverse clamped at 1: E^c read every such pixel as
    1, its structure gone. ``tone_extend`` continues the curve's last segment above 1, as E^c reads an image without a
    curve; the inverse is unchanged on [0, 1], and still undoes the curve; refused where E^c reads through no curve."""
    torch.manual_seed(0)
    curve, extended = nets.ToneCurve(8, 16, 0.5), nets.ToneCurve(8, 16, 0.5, extend=True)
    torch.nn.init.normal_(curve.coef.weight, std=3.0)
    extended.load_state_dict(curve.state_dict())
    code, inside = torch.randn(2, 8), torch.rand(2, 1, 8, 8)
    assert torch.equal(extended.inverse(code, inside), curve.inverse(code, inside))
    assert torch.allclose(extended.inverse(code, extended(code, inside)), inside, atol=1e-5)
    above = torch.linspace(1, 1.5, 11).expand(2, 1, 1, 11)
    last = (curve.levels(code)[:, -1] - curve.levels(code)[:, -2]) * 16  # the last segment's slope, per sample
    assert torch.allclose(curve.inverse(code, above), torch.ones_like(above), atol=1e-6)  # all read as 1
    expected = 1 + (above - 1) / last.view(2, 1, 1, 1)
    assert torch.allclose(extended.inverse(code, above), expected, atol=1e-5)
    # E^c: two images that differ only above the field are read apart with the option, alike without
    codes = (torch.randn(2, 8), torch.nn.functional.one_hot(torch.tensor([0, 2]), 3).float())
    reads = {}
    for extend in (False, True):
        m = make_task(content_field=True, tone_curve=16, tone_floor=0.5, tone_extend=extend).modules.eval()
        torch.manual_seed(1)
        torch.nn.init.normal_(m.generator.field.coef.weight, std=0.02)
        torch.nn.init.normal_(m.generator.curve.coef.weight, std=0.5)
        with torch.no_grad():
            m.generator.field.coef.bias[0] = -1.0  # the constant monomial: a field of about 0.37
            field = m.generator.field(m.generator._code(*codes), crops.coordinates(None, (16, 16), n=2))
            bright = torch.rand(2, 1, 16, 16) * 0.5 + 1.1  # x / field from 1.1 to 1.6 ...
            a, b = field * bright, field * (bright + 0.2)
            assert b.max() < 1  # ... in images within [0, 1]
            reads[extend] = m.encode(a * 2 - 1, codes), m.encode(b * 2 - 1, codes)
    assert torch.equal(*reads[False])  # above the field: flat, whatever lies there
    assert (reads[True][0] - reads[True][1]).abs().max() > 0.05
    with pytest.raises(ValueError, match="tone_extend"):
        drit.DRITConfig(image_shape=(16, 16), k=3, tone_extend=True)


def test_the_scanner_free_classification_term_has_its_own_weight():
    """``w_cls_sf`` weighs the scanner-free branch's classification term (G_cls2) and nothing else: on the same batch
    and draws, the first step's total moves by exactly the weight's change times G_cls2, and the cross-domain
    branch's term keeps ``w_cls``. Its default is ``w_cls``'s, so a model built before it is built the same."""
    batch = sampler()(0)
    ctx = lambda t: train.Context(torch.device("cpu"), t.optimizers)
    out = {}
    for weight in (10.0, 1.0):
        task = make_task(w_cls_sf=weight)
        torch.manual_seed(5)
        out[weight] = task.step(batch, 0, ctx(task))
    assert out[1.0]["G_cls2"] == pytest.approx(out[10.0]["G_cls2"]) and out[10.0]["G_cls2"] > 0
    assert out[1.0]["G_cls1"] == pytest.approx(out[10.0]["G_cls1"])
    assert out[10.0]["total"] - out[1.0]["total"] == pytest.approx(9.0 * out[10.0]["G_cls2"], rel=1e-4)
    assert drit.DRITConfig(image_shape=(8, 8), k=2).w_cls_sf == drit.DRITConfig(image_shape=(8, 8), k=2).w_cls
    assert drit.ADDED_OFF["w_cls_sf"] == drit.DRITConfig(image_shape=(8, 8), k=2).w_cls


def test_the_content_adversary_reaches_g_s_field_through_e_c():
    """With ``content_field`` D_c's adversarial term (the only weight left on) moves G's field as
    well as E^c: E^c can drop a field from its input only through the field G draws; off, it moves
    E^c alone. The option needs G's field, and an inferred scanner code (GMM-DRIT)."""
    batch = sampler()(0)
    ctx = lambda t: train.Context(torch.device("cpu"), t.optimizers)
    zero = dict(w_adv=0.0, w_cls=0.0, w_self=0.0, w_cc=0.0, w_latent=0.0, w_zc=0.0, w_sf_content=0.0)
    for on, moved in ((False, {"content"}), (True, {"content", "generator"})):
        after = {}
        for weight in (0.0, 1.0):
            task = make_task(content_field=on, w_content=weight, **zero)
            torch.manual_seed(5)
            assert np.isfinite(task.step(batch, 0, ctx(task))["total"])
            after[weight] = {k: v.clone() for k, v in task.modules.state_dict().items()}
        differs = {k.split(".")[0] for k in after[0.0] if not torch.equal(after[0.0][k], after[1.0][k])}
        assert differs == moved
    with pytest.raises(ValueError, match="bias_field"):
        drit.DRITConfig(image_shape=(8, 8), k=2, content_field=True, bias_field=0)
    with pytest.raises(ValueError, match="DRIT\\+\\+"):
        drit.DRITConfig(image_shape=(8, 8), k=2, variant="drit++", content_field=True)
    with pytest.raises(ValueError, match="known_labels"):
        drit.DRITConfig(image_shape=(8, 8), k=2, known_labels=True, content_field=True)


def test_scanner_free_content_term_is_the_l1_between_content_maps():
    """``w_sf_content``: L1(E^c(scanner-free output), z^c), reported as ``sf_content``; 0 when off."""
    batch = sampler()(0)
    ctx = lambda t: train.Context(torch.device("cpu"), t.optimizers)
    off = make_task(w_sf_content=0.0)
    assert off.step(batch, 0, ctx(off))["sf_content"] == 0.0
    on = make_task(w_sf_content=1.0)
    torch.manual_seed(5)
    value = on.step(batch, 0, ctx(on))["sf_content"]
    assert value > 0 and np.isfinite(value)


@pytest.mark.parametrize("sigma", [0.0, 1.0])
def test_the_generator_is_fed_a_noisy_content_map_in_training_only(sigma):
    """``zc_noise``: in a training step G reads z^c + N(0, sigma^2) (DRIT++'s regulariser), the
    content encoder's own output when sigma is 0; translating never adds noise."""
    task = make_task(zc_noise=sigma)
    fed, made = [], []
    task.modules.content.register_forward_hook(lambda mod, i, o: made.append(o.detach()))
    task.modules.generator.register_forward_pre_hook(lambda mod, args: fed.append(args[0].detach()))
    task.step(sampler()(0), 0, train.Context(torch.device("cpu"), task.optimizers))
    n = len(made[0]) // 2
    zc_a = made[0][:n]
    spread = (fed[0][:n] - zc_a).std()  # the first generator batch starts with a's content
    assert (spread == 0) if sigma == 0 else abs(spread - sigma) < 0.1
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    m = task.modules.eval()
    za, c, _ = m.attributes(x)
    assert torch.equal(m.translate(x, za, c), m.translate(x, za, c))


@pytest.mark.parametrize("variant", ["gmm-drit", "drit++"])
@pytest.mark.parametrize("batch", [1, 3])
def test_a_training_step_updates_everything_but_the_frozen_attribute_encoder(variant, batch):
    task = make_task(variant)
    before = {k: v.clone() for k, v in task.modules.state_dict().items()}
    ctx = train.Context(torch.device("cpu"), task.optimizers)
    losses = task.step(sampler(batch=batch)(0), 0, ctx)
    assert all(np.isfinite(v) for v in losses.values())
    after = task.modules.state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert {"content", "generator", "ds1", "ds2", "dc"} <= changed
    assert ("attribute" in changed) == (variant == "drit++")  # GMM-DRIT's E^a is frozen
    assert (losses["kl"] > 0) == (variant == "drit++")


@pytest.mark.parametrize("variant", ["gmm-drit", "drit++"])
def test_d_c_s_own_schedule_updates_it_on_batches_of_its_own_at_its_own_rate(variant, tmp_path, monkeypatch):
    """DRIT's loop (d_iter 3, D_c's rate lr / 2.5): with ``dc_steps`` 3 every iteration updates D_c
    three times, first on two fresh batches whose content E^c reads without gradients, each against
    its own images' scanner codes (GMM-DRIT's inferred, DRIT++'s labels), then on the iteration's
    own; the iteration's own batches are those drawn without the schedule; off (1, 1.0) the options
    stay out of the checkpoint's meta."""
    # GMM-DRIT's E^c reads its input without G's field for the batch's own codes
    task = make_task(variant, dc_steps=3, dc_lr=0.4, content_field=variant == "gmm-drit")
    images = np.random.default_rng(0).random((24, 16, 16)).astype(np.float32)
    labels = np.arange(24) % 3
    plain = drit.PairSampler(images, labels, 3, seed=1)
    scheduled = drit.PairSampler(images, labels, 3, seed=1, dc_extra=2)
    if variant == "gmm-drit":
        plain.attach_codes(task.modules)
        scheduled.attach_codes(task.modules)
    plain, scheduled = plain(5), scheduled(5)
    assert all(torch.equal(plain[k], scheduled[k]) for k in plain)
    extra = scheduled["dc"]
    assert len(extra) == 2 and extra[0]["xa"].shape == (3, 1, 16, 16)
    assert not torch.equal(extra[0]["xa"], extra[1]["xa"])
    assert task.optimizers["dc"].param_groups[0]["lr"] == pytest.approx(0.4 * task.cfg.lr)
    assert task.optimizers["gen"].param_groups[0]["lr"] == task.cfg.lr
    steps, read, targets = [], [], []
    task.optimizers["dc"].register_step_post_hook(lambda *_: steps.append(1))
    hook = task.modules.content.register_forward_hook(lambda mod, inp, out: read.append((inp[0], out.requires_grad)))
    bce, encode, encoded = drit.losses.bce, task.modules.encode, []
    monkeypatch.setattr(drit.losses, "bce", lambda logits, target: targets.append(target) or bce(logits, target))
    monkeypatch.setattr(task.modules, "encode", lambda x, codes, *a: encoded.append((x, codes)) or encode(x, codes, *a))
    losses = task.step(scheduled, 0, train.Context(torch.device("cpu"), task.optimizers))
    hook.remove()
    assert len(steps) == 3 and np.isfinite(list(losses.values())).all()
    assert [g for _, g in read[:2]] == [False, False] and all(g for _, g in read[2:])
    own = lambda b: (torch.cat([b["ca"], b["cb"]]) if variant == "gmm-drit" else
                     torch.nn.functional.one_hot(torch.cat([b["la"], b["lb"]]), 3).float())
    for i, b in enumerate([*extra, scheduled]):  # the first three readings and bce calls: D_c's updates, in order
        assert torch.equal(encoded[i][0], torch.cat([b["xa"], b["xb"]]))
        torch.testing.assert_close(targets[i], own(b))
        if variant == "gmm-drit":  # E^c reads each image without the field of its own codes
            assert torch.equal(encoded[i][1][0], torch.cat([b["za"], b["zb"]]))
    assert {"dc_steps", "dc_lr"} & set(make_task(variant).meta()["config"]) == set()
    assert task.meta()["config"]["dc_steps"] == 3
    _, history = drit.train_drit(images, labels, task.cfg, tmp_path / "m.pt", steps=2, batch_size=3, device="cpu",
                                 gmvae=tiny_gmvae() if variant == "gmm-drit" else None)
    assert len(history) == 2
    with pytest.raises(ValueError, match="dc_steps"):
        make_task(variant, dc_steps=0)


@pytest.mark.parametrize("known_labels", [False, True])
def test_gmm_drit_trains_on_the_frozen_codes_computed_once(known_labels):
    """Batches carry the frozen E^a's codes, computed once per slice: the same codes as
    encoding the batch's slices again, and the step uses them; DRIT++'s encoder trains, so it
    refuses."""
    task = make_task(known_labels=known_labels)
    task.modules.label_component = torch.arange(3) if known_labels else None
    s = sampler()
    plain = s(4)
    s.attach_codes(task.modules)
    batch = s(4)
    for side in "ab":
        za, c, _ = task.modules.attributes(plain[f"x{side}"], plain[f"l{side}"])
        assert torch.allclose(batch[f"z{side}"], za, atol=1e-5) and torch.equal(batch[f"c{side}"], c)
    calls, encode = [], task.modules.attribute.encode
    task.modules.attribute.encode = lambda x: calls.append(len(x)) or encode(x)
    ctx = train.Context(torch.device("cpu"), task.optimizers)
    for b in (plain, batch):
        out = task.step(b, 0, ctx)
        assert all(np.isfinite(v) for v in out.values())
    # whole slices: the batch's two sides, then the cross-cycle's two translations and the latent
    # regression's output; with the codes attached only the last three
    assert len(calls) == 5 + 3
    with pytest.raises(ValueError, match="frozen"):
        sampler().attach_codes(make_task("drit++").modules)


def test_gmm_drit_infers_the_scanner_code_unless_told_to_use_the_labels():
    x = torch.rand(6, 1, 16, 16) * 2 - 1
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    inferred = make_task().modules.attributes(x, labels)[1]
    q = make_task().modules.attribute.encode((x + 1) / 2)
    assert torch.equal(inferred, q["c"])
    known = make_task(known_labels=True).modules.attributes(x, labels)[1]
    assert torch.equal(known, torch.nn.functional.one_hot(labels, 3).float())
    za, c = make_task().modules.scanner_free_code(4, "cpu")
    assert za.shape == (4, 8) and not c.any()


def test_with_known_labels_a_random_target_s_attribute_comes_from_that_scanner_s_own_component(tmp_path, monkeypatch):
    """GMM-DRIT with ``known_labels``: the code of a random target is a scanner label r, and its z^a
    is drawn from the GM-VAE component matched one to one to r on its training slices (component
    numbers are an arbitrary order of the scanners), as the harmonizer draws it; train_drit sets that map.
    With inferred codes the code is the component itself."""
    task = make_task(known_labels=True)
    m = task.modules
    with pytest.raises(ValueError, match="train_drit"):
        m.random_code(4, "cpu")
    drawn = []
    monkeypatch.setattr(m.attribute, "draw", lambda y: drawn.append(y) or torch.zeros(len(y), 8))
    m.label_component = torch.tensor([2, 0, 1])
    torch.manual_seed(0)
    _, c = m.random_code(64, "cpu")
    r = c.argmax(1)
    assert len(r.unique()) == 3 and torch.equal(drawn[-1].argmax(1), torch.tensor([2, 0, 1])[r])
    inferred = make_task().modules
    monkeypatch.setattr(inferred.attribute, "draw", lambda y: drawn.append(y) or torch.zeros(len(y), 8))
    _, c = inferred.random_code(64, "cpu")
    assert torch.equal(drawn[-1], c)
    # train_drit maps each label to its component one to one, as E1 matches them: labels 0 and 2 fall mostly in
    # component 1 (6 of 8 and 8 of 8), label 1 in 2; label 2 keeps component 1, label 0 gets the one left (0)
    images = np.random.default_rng(0).random((24, 16, 16)).astype(np.float32)
    labels = np.arange(24) % 3
    comps = np.where(labels == 1, 2, 1)
    comps[[0, 3]] = 0
    prob = np.eye(3)[comps]
    monkeypatch.setattr(gmvae, "encode_all", lambda model, x: {"prob": prob})
    cfg = make_task(known_labels=True).cfg
    with pytest.warns(UserWarning, match="matched one to one"):
        model, _ = drit.train_drit(images, labels, cfg, tmp_path / "m.pt", gmvae=tiny_gmvae(), steps=1, batch_size=3,
                                   device="cpu")
    assert model.label_component.tolist() == [0, 2, 1]


def test_dritpp_s_latent_regression_trains_the_generator_not_its_attribute_encoder():
    """DRIT++'s code steps only E^c and G after the latent regression: its gradient reaches G's
    output, not E^a's weights."""
    m = make_task("drit++").modules
    x_r = (torch.rand(2, 1, 16, 16) * 2 - 1).requires_grad_()
    m.latent_regression(x_r, torch.randn(2, 8)).backward()
    assert x_r.grad is not None and x_r.grad.abs().sum() > 0
    assert all(p.grad is None for p in m.attribute.parameters())


def test_configuration_errors_are_explained():
    with pytest.raises(ValueError, match="variant"):
        drit.DRITConfig(image_shape=(16, 16), k=3, variant="cyclegan")
    with pytest.raises(ValueError, match="needs the trained GM-VAE"):
        drit.Translator(drit.DRITConfig(image_shape=(16, 16), k=3, attr=8))
    with pytest.raises(ValueError, match="has 3 components"):
        drit.Translator(drit.DRITConfig(image_shape=(16, 16), k=4, attr=8), tiny_gmvae())


def scheduled(steps=6, **options):
    """A task that knows its run's length, as train_drit sets it (lr_decay's schedule needs it)."""
    task = make_task(**options)
    task.steps = steps
    return task


# the second and third with running means (and, whitened, channel covariances) in the state; the last resumed from a
# checkpoint written inside the decay (step 4 of 6, whose rates the optimizer state holds at 2/3 of their base)
@pytest.mark.parametrize("options", [{}, {"w_content_mean": 1.0}, {"w_content_mean": 1.0, "content_mean_whiten": True},
                                     {"lr_decay": 0.8}])
def test_stage_two_resumes_exactly(tmp_path, options):
    whole = scheduled(**options)
    train.fit(whole, sampler(), 6, tmp_path / "whole.pt", every=2, seed=4)
    first, batches = scheduled(**options), sampler()

    def crashing(i):
        if i == 5:
            raise KeyboardInterrupt
        return batches(i)

    with pytest.raises(KeyboardInterrupt):
        train.fit(first, crashing, 6, tmp_path / "resumed.pt", every=2, seed=4)
    again = scheduled(**options)
    train.fit(again, sampler(), 6, tmp_path / "resumed.pt", every=2, seed=4)
    for (name, a), b in zip(whole.modules.state_dict().items(), again.modules.state_dict().values()):
        assert torch.equal(a, b), name


def test_learning_rates_fall_linearly_over_the_last_share_as_dritpp_schedules_them(tmp_path):
    """``lr_decay``: every optimizer's rate held, then falling linearly over the last share of the run, DRIT++'s
    ``lambda`` rule 1 − max(0, ep − n_ep_decay) / (n_ep − n_ep_decay + 1) with n_ep 8, n_ep_decay 4; D_c's at its
    own share (``dc_lr``). train_drit gives the task its run's length: the checkpoint's last rates are those."""
    task = scheduled(8, lr_decay=0.5, dc_lr=0.4)
    assert [task.lr_factor(i) for i in range(8)] == pytest.approx([1, 1, 1, 1, 1, 0.8, 0.6, 0.4])
    assert make_task(lr_decay=0.5).lr_factor(7) == 1 and scheduled(8).lr_factor(7) == 1  # no length, or off: held
    train.fit(task, sampler(), 7, tmp_path / "m.pt", every=7)  # iterations 0 … 6
    lr = task.cfg.lr
    rates = {k: [g["lr"] for g in o.param_groups] for k, o in task.optimizers.items()}
    same = {k: [pytest.approx(lr * 0.6)] for k in ("ds1", "ds2", "gen")}
    assert rates == {"dc": [pytest.approx(lr * 0.4 * 0.6)], **same}
    images = np.random.default_rng(0).random((24, 16, 16)).astype(np.float32)
    drit.train_drit(images, np.arange(24) % 3, task.cfg, tmp_path / "t.pt", gmvae=tiny_gmvae(), steps=8, batch_size=3,
                    device="cpu")
    held = train.load_checkpoint(tmp_path / "t.pt")["optimizers"]["gen"]["param_groups"][0]["lr"]
    assert held == pytest.approx(lr * 0.4)
    with pytest.raises(ValueError, match="lr_decay"):
        drit.DRITConfig(image_shape=(16, 16), k=3, lr_decay=1.5)


def test_the_initial_weights_are_a_function_of_the_seed_not_of_what_ran_before(tmp_path):
    """A script that draws once more before training trains the same model as the notebook; another
    seed starts from other weights (steps=0: the weights train_drit builds, untrained)."""
    images = np.random.default_rng(0).random((24, 16, 16)).astype(np.float32)
    labels, cfg = np.arange(24) % 3, make_task().cfg
    kw = dict(steps=0, batch_size=3, device="cpu")
    first, _ = drit.train_drit(images, labels, cfg, tmp_path / "a.pt", gmvae=tiny_gmvae(), seed=3, **kw)
    gm = tiny_gmvae()
    torch.rand(1000)  # a draw of the caller's before training
    again, _ = drit.train_drit(images, labels, cfg, tmp_path / "b.pt", gmvae=gm, seed=3, **kw)
    other, _ = drit.train_drit(images, labels, cfg, tmp_path / "c.pt", gmvae=tiny_gmvae(), seed=4, **kw)
    for (name, a), b in zip(first.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    mine = {k: v for k, v in first.state_dict().items() if not k.startswith("attribute.gmvae.")}
    theirs = other.state_dict()
    assert not all(torch.equal(v, theirs[k]) for k, v in mine.items() if v.is_floating_point())


def test_a_checkpoint_trained_over_another_gm_vae_is_refused(tmp_path):
    """Notebook 02 trained again: its GM-VAE is not the one a GMM-DRIT checkpoint froze, and loading
    the checkpoint would overwrite it. Refused, saying what to do; over the same GM-VAE it loads."""
    images = np.random.default_rng(0).random((24, 16, 16)).astype(np.float32)
    labels, cfg, path = np.arange(24) % 3, make_task().cfg, tmp_path / "m.pt"
    kw = dict(steps=1, batch_size=3, device="cpu")
    trained, _ = drit.train_drit(images, labels, cfg, path, gmvae=tiny_gmvae(), **kw)
    loaded, _ = drit.train_drit(images, labels, cfg, path, gmvae=tiny_gmvae(), **kw)
    for (name, a), b in zip(trained.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    other = tiny_gmvae()
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    with pytest.raises(ValueError, match="another GM-VAE.*retrain"):
        drit.train_drit(images, labels, cfg, path, gmvae=other, **kw)


def test_soft_histogram_sees_brightness_and_ignores_background():
    from nbutils.nets import soft_histogram

    x = torch.full((2, 1, 16, 16), -1.0)
    x[0, :, 4:12, 4:12] = -0.5
    x[1, :, 4:12, 4:12] = 0.5
    h = soft_histogram(x, 16)
    centres = torch.linspace(-1, 1, 16)
    assert h[0].argmax() == (centres - -0.5).abs().argmin() and h[1].argmax() == (centres - 0.5).abs().argmin()
    # the background (-1) is left out, and the histogram does not depend on the foreground's area
    y = x.clone()
    y[1, :, 2:14, 2:14] = 0.5
    assert torch.allclose(soft_histogram(y, 16)[1], h[1], atol=1e-3)
    assert h[:, 0].max() < 1e-3


def test_the_bias_field_is_the_monomial_sum_on_windows_cut_anywhere():
    """``BiasField`` evaluates exp(sum_k a_k(code) row^i col^j) as a product of the rows' and the
    columns' powers: the same field and code gradient as the sum over the (N, P, h, w) basis of
    :func:`crops.monomials`, on whole slices and on windows at any origin (float64)."""
    torch.manual_seed(0)
    field = nets.BiasField(6, order=3).double()
    torch.nn.init.normal_(field.coef.weight, std=0.5)
    torch.nn.init.normal_(field.coef.bias, std=0.5)
    code = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    for origin, size, full in ((None, (9, 7), None), (torch.tensor([[0., 0], [3, 11], [17, 2], [20, 20]]), (8, 6), (28, 26))):
        grid = crops.coordinates(origin, size, full, 4, dtype=torch.float64)
        ours = field(code, grid)
        ref = torch.einsum("nk,nkhw->nhw", field.coef(code), crops.monomials(grid, 3)).exp()[:, None]
        assert ours.shape == (4, 1, *size) and torch.allclose(ours, ref, rtol=1e-12, atol=0)
        w = torch.randn(ours.shape, dtype=torch.float64)
        (a,), (b,) = (torch.autograd.grad((f * w).sum(), code) for f in (ours, ref))
        assert torch.allclose(a, b, rtol=1e-10, atol=0) and b.abs().max() > 1e-3
    # a float32 field under mixed precision (bfloat16 autocast on the CPU) too; only the linear layer
    # that draws the coefficients runs in bfloat16 there
    field, code, grid = field.float(), code.detach().float(), grid.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = field(code, grid)
    assert mixed.dtype == torch.float32 and torch.allclose(mixed, field(code, grid), rtol=0.05, atol=0)


def test_soft_histogram_gradient_is_that_of_the_direct_form():
    """With a gradient, the kernels' sums and gradients come from one kept kernel matrix
    (``_KernelSums``): the same values and gradients as autograd's through the direct form, on
    pixels of the background, the foreground and the sigmoid's edge between them."""
    from nbutils.nets import soft_histogram

    def direct(x, bins):
        centres = torch.linspace(-1, 1, bins, dtype=x.dtype)
        v = x.flatten(1)
        fg = torch.sigmoid((v + 0.95) * 400)
        w = torch.exp(-0.5 * ((v[:, :, None] - centres) * (bins / 2)) ** 2) * fg[:, :, None]
        return w.sum(1) / (fg.sum(1, keepdim=True) + 1e-3)

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 12, 12, generator=gen, dtype=torch.float64) * 2 - 1
    x[:, :, :3] = -1
    x[:, :, 3, :6] = -0.955 + 0.01 * torch.rand(3, 1, 6, generator=gen, dtype=torch.float64)
    x.requires_grad_()
    g = torch.randn(3, 16, generator=gen, dtype=torch.float64)
    ours, ref = soft_histogram(x, 16), direct(x, 16)
    assert torch.allclose(ours, ref, rtol=1e-12, atol=1e-15)
    (ga,), (gb,) = (torch.autograd.grad((h * g).sum(), x) for h in (ours, ref))
    assert torch.allclose(ga, gb, rtol=1e-10, atol=1e-13) and gb.abs().max() > 1e-2
    assert torch.autograd.gradcheck(lambda t: soft_histogram(t, 8), (x[:1].detach().requires_grad_(),))


def test_band_powers_see_blur_along_one_axis_and_noise():
    """Blur along the second axis removes its high frequencies only; noise adds high frequencies."""
    from scipy.ndimage import gaussian_filter1d

    from nbutils.nets import band_powers

    rng = np.random.default_rng(0)
    window = np.outer(np.hanning(32), np.hanning(32))  # an object on an empty background, like a brain
    base = gaussian_filter1d(gaussian_filter1d(rng.normal(0, 1, (32, 32)), 0.7, 0), 0.7, 1) * window
    blurred = gaussian_filter1d(base, 2.0, axis=1)
    noisy = base + rng.normal(0, 0.5, base.shape) * window
    p = band_powers(torch.tensor(np.stack([base, blurred, noisy]), dtype=torch.float32), bands=4)
    along_first, along_second = p[:, 9], p[:, 10]  # the highest band: (first axis, second axis, diagonal)
    assert along_second[1] < along_second[0] - 2 and abs(float(along_first[1] - along_first[0])) < 1.5
    assert along_first[2] > along_first[0] and along_second[2] > along_second[0] and p[2, 11] > p[0, 11] + 2
    assert p.shape == (3, 12)


def test_options_added_later_and_off_leave_the_checkpoint_meta_as_it_was():
    """A checkpoint written before ``tone_curve`` / ``tone_floor`` existed (its meta has no such
    key) still resumes and loads: each option is left out of the meta while off, and counts once
    on; the floor reaches G's curve."""
    off, on, floored = make_task(), make_task(tone_curve=8), make_task(tone_curve=8, tone_floor=0.5)
    assert not {"tone_curve", "tone_floor"} & set(off.meta()["config"]) and "tone_floor" not in on.meta()["config"]
    assert on.meta()["config"]["tone_curve"] == 8 and floored.meta()["config"]["tone_floor"] == 0.5
    assert {k: v for k, v in on.meta()["config"].items() if k != "tone_curve"} == off.meta()["config"]
    assert not set(drit.ADDED_OFF) & set(off.meta()["config"])  # every later option, off, is left out
    # the settings a default checkpoint records, as the quick run's checkpoints of bd40b24 hold them: an option added
    # since that entered the meta while off would stop those checkpoints resuming (866786c's `distinct_pairs` did)
    written = {"attr", "bias_field", "content_field", "content_norm", "dc_clip", "dc_depth", "dc_field", "dc_norm",
               "down", "image_shape", "k", "known_labels", "lr", "n_res", "slice_shape", "upsample", "variant", "view",
               "w_adv", "w_cc", "w_cls", "w_content", "w_invariance", "w_kl", "w_latent", "w_self", "w_sf_content",
               "w_zc", "width", "zc_noise"}
    assert set(make_task("drit++").meta()["config"]) == set(off.meta()["config"]) == written
    assert on.modules.generator.curve.floor == 0 and floored.modules.generator.curve.floor == 0.5


def test_a_checkpoint_written_before_the_options_loads_as_it_was_trained(tmp_path):
    """A checkpoint whose meta has none of the options added since (``drit.BEFORE_OPTIONS``) loads
    through ``from_checkpoint`` with each option as it was then, and translates as before."""
    old = drit.BEFORE_OPTIONS
    assert set(old) <= {f.name for f in dataclasses.fields(drit.DRITConfig)}  # every option named there is a field
    task = make_task(**old)
    meta = task.meta()
    meta["config"] = {k: v for k, v in meta["config"].items() if k not in old}  # as the old code wrote it
    torch.save(dict(step=0, history=[], meta=meta, modules=task.modules.state_dict()), tmp_path / "old.pt")
    loaded = drit.from_checkpoint(tmp_path / "old.pt")
    assert {k: getattr(loaded.cfg, k) for k in old} == old
    x, model = torch.rand(2, 1, 16, 16) * 2 - 1, task.modules.eval()
    za, c = torch.randn(2, 8), torch.eye(3)[:2]
    with torch.no_grad():
        assert torch.equal(loaded.translate(x, za, c), model.translate(x, za, c))
    # today's defaults differ from the old values: without them the old checkpoint would not load
    today = drit.DRITConfig(image_shape=(16, 16), k=3)
    assert any(getattr(today, name) != value for name, value in old.items())


def test_the_field_layout_term_pulls_each_code_s_mean_field_to_its_slices_layout(tmp_path):
    """``w_field_layout``: the squared distance of G's per-code mean field coefficients (constant left
    out), centred over the codes present, from those codes' targets; a code absent from the slices
    has no say; lowered by training G's field; set up by train_drit and reported as
    ``field_layout``; a task not set up by train_drit refuses; GMM-DRIT with a field only."""
    m = make_task().modules
    torch.manual_seed(3)
    torch.nn.init.normal_(m.generator.field.coef.weight, std=0.3)
    codes = (torch.randn(12, 8), torch.nn.functional.one_hot(torch.tensor([0, 2] * 6), 3).float())
    groups = codes[1].argmax(1)  # code 1 has no slices
    with torch.no_grad():
        coef = m.generator.field.coef(m.generator._code(*codes))[:, 1:].numpy()
    means = np.stack([coef[groups.numpy() == s].mean(0) for s in (0, 2)])
    matched = means - means.mean(0)
    targets = torch.randn(3, coef.shape[1]) * 0.2
    targets[[0, 2]] -= targets[[0, 2]].mean(0)  # as field_targets centres them over the codes present
    expected = ((matched - targets[[0, 2]].numpy()) ** 2).sum(1).mean()
    loss = lambda tg: float(drit.field_layout_loss(m.generator, codes, groups, tg).detach())
    assert loss(targets) == pytest.approx(expected, rel=1e-5) and expected > 0.01
    garbage = targets.clone()
    garbage[1] = 100.0
    assert loss(garbage) == pytest.approx(expected, rel=1e-5)
    exact = torch.zeros(3, coef.shape[1])
    exact[[0, 2]] = torch.from_numpy(matched).float()
    assert loss(exact) < 1e-10 and loss(-exact) == pytest.approx(4 * (matched ** 2).sum(1).mean(), rel=1e-4)
    with torch.no_grad():  # a field common to every code is not read
        m.generator.field.coef.bias[1:] += 0.5
    assert loss(exact) < 1e-10
    before = loss(targets)
    opt = torch.optim.Adam(m.generator.field.parameters(), lr=0.05)
    for _ in range(300):
        value = drit.field_layout_loss(m.generator, codes, groups, targets)
        opt.zero_grad()
        value.backward()
        opt.step()
    assert loss(targets) < before / 10
    images = np.random.default_rng(0).random((24, 16, 16)).astype(np.float32) * 0.8 + 0.2
    cfg = make_task(w_field_layout=1.0, known_labels=True).cfg  # an untrained GM-VAE infers one code
    _, history = drit.train_drit(images, np.arange(24) % 3, cfg, tmp_path / "m.pt", gmvae=tiny_gmvae(), steps=2,
                                 batch_size=3, device="cpu")
    assert (history["field_layout"] > 0).all()
    task = make_task(w_field_layout=1.0, known_labels=True)
    task.modules.label_component = torch.arange(3)
    with pytest.raises(ValueError, match="train_drit"):
        task.step(sampler()(0), 0, train.Context(torch.device("cpu"), task.optimizers))
    with pytest.raises(ValueError, match="w_field_layout"):
        make_task("drit++", w_field_layout=1.0)


def test_the_layout_reads_the_bias_field_s_own_coefficients():
    """One slice of one tissue under G's bias field with known coefficients: nbutils.layout gives
    those coefficients back, in the field's order, orientation and sign (the constant left out)."""
    from nbutils import layout

    field = nets.BiasField(1, 3)
    c = torch.tensor([0.0, 0.15, -0.1, 0.05, 0.08, -0.12, 0.04, 0.03, -0.05, 0.06])
    with torch.no_grad():
        field.coef.bias.copy_(c)
    grid = crops.coordinates(None, (64, 64), n=1)
    with torch.no_grad():
        f = field(torch.zeros(1, 1), grid)[0, 0].numpy()
    rows, cols = grid[0, 0].numpy(), grid[0, 1].numpy()
    brain = rows ** 2 / 0.8 + cols ** 2 / 0.6 < 1
    np.testing.assert_allclose(layout.coefficients((0.5 * f * brain)[None])[0], c[1:].numpy(), atol=0.01)


def test_dritpp_latent_regression_reads_g_output_as_e_a_reads_slices():
    """With a view size (E^a reads whole slices down-sampled), the latent regression reads G's
    output at that size too, as attributes() does."""
    torch.manual_seed(0)
    m = drit.Translator(drit.DRITConfig(image_shape=(32, 32), k=3, variant="drit++", width=4, attr=8, n_res=1,
                                        down=1, view=16))
    x_r, z_r = torch.rand(2, 1, 32, 32) * 2 - 1, torch.randn(2, 8)
    expected = F.l1_loss(m.attributes(x_r, torch.tensor([0, 1]))[0], z_r)
    assert float(m.latent_regression(x_r, z_r)) == pytest.approx(float(expected), abs=1e-6)


@pytest.mark.parametrize("coded", [True, False])
def test_distinct_pairs_draw_x_b_from_another_scanner_code_than_x_a_and_change_nothing_else(coded):
    """With ``distinct_pairs`` no pair of an iteration shares a scanner code (the codes attached to the slices where
    there are, as GMM-DRIT's inferred ones, not the labels; else the labels, as DRIT++'s), x_a's batch is the one
    drawn without it, and pairs already apart are kept; off, about a third of the pairs of three balanced codes
    share one."""
    images = np.random.default_rng(0).random((24, 16, 16)).astype(np.float32)
    labels = np.arange(24) % 3
    plain = drit.PairSampler(images, labels, 3, seed=1)
    apart = drit.PairSampler(images, labels, 3, seed=1, distinct=True)
    if coded:  # codes that are not the labels: slices 0-7 code 0, 8-15 code 1, 16-23 code 2
        plain.codes = apart.codes = (torch.zeros(24, 8), torch.eye(3)[torch.arange(24) // 8])
        assert np.array_equal(apart.groups(), np.arange(24) // 8)
    code = lambda batch, side: batch[f"c{side}"].argmax(1) if coded else batch[f"l{side}"]
    same = 0
    for it in range(40):
        p, d = plain(it), apart(it)
        assert torch.equal(p["xa"], d["xa"]) and torch.equal(p["la"], d["la"])
        assert not (code(d, "a") == code(d, "b")).any(), it
        kept = code(p, "a") != code(p, "b")
        assert torch.equal(p["xb"][kept], d["xb"][kept])
        same += int((~kept).sum())
    assert 0.15 < same / 120 < 0.6


def test_the_distinct_pairs_option_reaches_the_sampler_training_draws_from(tmp_path, monkeypatch):
    """``DRITConfig.distinct_pairs`` is what :func:`drit.train_drit` hands its :class:`drit.PairSampler`."""
    made = []

    class Recording(drit.PairSampler):
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            made.append(self.distinct)

    monkeypatch.setattr(drit, "PairSampler", Recording)
    images = np.random.default_rng(0).random((12, 16, 16)).astype(np.float32)
    for on in (False, True):
        cfg = make_task("drit++", distinct_pairs=on).cfg
        drit.train_drit(images, np.arange(12) % 3, cfg, tmp_path / f"{on}.pt", steps=1, batch_size=3, device="cpu")
    assert made == [False, True]
