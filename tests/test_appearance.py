import pytest
import torch

from nbutils import appearance, crops, drit


def test_jitter_keeps_the_background_and_changes_the_brain_smoothly_and_monotonically():
    torch.manual_seed(0)
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    x[:, :, :4] = -1  # background rows
    y = appearance.jitter(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.all(y[:, :, :4] == -1) and y.min() >= -1 and y.max() <= 1
    assert (y - x).abs()[:, :, 4:].mean() > 0.01
    # a gamma and a positive field keep the order of intensities within any small neighbourhood
    u, v = (x[:, 0, 4:] + 1) / 2, (y[:, 0, 4:] + 1) / 2
    same = (v[:, :, 1:] > v[:, :, :-1]) == (u[:, :, 1:] > u[:, :, :-1])
    assert same.float().mean() > 0.95
    # each image draws its own change
    flat = torch.zeros(3, 1, 16, 16)
    out = appearance.jitter(flat)
    assert not torch.allclose(out[0], out[1])


def test_jitter_draws_the_field_at_the_window_s_place_in_the_whole_slice():
    """The field is a function of whole-slice coordinates: the window of a jittered slice equals
    the jittered window when both draw the same random numbers."""
    torch.manual_seed(0)
    whole = torch.rand(1, 1, 40, 48) * 1.6 - 0.8
    torch.manual_seed(3)
    big = appearance.jitter(whole)
    y0, x0 = 8, 20
    torch.manual_seed(3)
    small = appearance.jitter(whole[..., y0: y0 + 16, x0: x0 + 16], torch.tensor([[y0, x0]], dtype=torch.float32),
                              (40, 48))
    assert torch.allclose(small, big[..., y0: y0 + 16, x0: x0 + 16], atol=1e-5)
    assert crops.coordinates(None, (4, 4)).shape == (1, 2, 4, 4)


def test_jitter_can_blur_and_add_noise_as_torchio_s_random_blur_and_noise():
    """``blur``: each image blurred by its own Gaussian along each axis (a dot spreads along one axis
    only when the other's sigma is 0, its mass kept; a batch blurs as its images one by one);
    ``noise``: Gaussian noise of sigma uniform in [0, noise x the head's spread] (none on a flat
    head), never turning head into background; both keep the background; off, the change is the
    field and gamma alone, from the same random numbers as before the options existed."""
    dot = torch.zeros(1, 1, 21, 21)
    dot[..., 10, 10] = 1.0
    rows = appearance._blur(dot, torch.tensor([[2.0, 0.0]]), 8, "reflect")[0, 0]
    cols = appearance._blur(dot, torch.tensor([[0.0, 2.0]]), 8, "reflect")[0, 0]
    assert torch.allclose(rows.sum(), torch.tensor(1.0), atol=1e-5)
    assert torch.allclose(cols.sum(), torch.tensor(1.0), atol=1e-5)
    assert rows[:, 10].sum() > 0.999 and rows[7, 10] > 0.05  # along rows (vertically) only
    assert cols[10].sum() > 0.999 and cols[10, 7] > 0.05
    images, sigma = torch.rand(3, 1, 24, 24), torch.tensor([[0.5, 0.0], [2.0, 1.0], [0.0, 1.5]])
    one_by_one = torch.cat([appearance._blur(images[i: i + 1], sigma[i: i + 1], 8, "reflect") for i in range(3)])
    assert torch.allclose(appearance._blur(images, sigma, 8, "reflect"), one_by_one, atol=1e-4)
    edge = torch.full((4, 1, 32, 32), -1.0)
    edge[:, :, 4:28, 4:16], edge[:, :, 4:28, 16:28] = 0.0, 0.8  # two tissues in a head
    torch.manual_seed(1)
    plain = appearance.jitter(edge)
    # the field and gamma as written before blur and noise existed, from the same draws
    torch.manual_seed(1)
    basis = crops.monomials(crops.coordinates(None, (32, 32), None, 4), 3)
    field = torch.einsum("nk,nkhw->nhw", (torch.rand(4, basis.shape[1]) * 2 - 1) * 0.5, basis).exp()[:, None]
    gamma = ((torch.rand(4, 1, 1, 1) * 2 - 1) * 0.3).exp()
    assert torch.equal(plain, ((((edge + 1) / 2) * field).clamp(0, 1) ** gamma) * 2 - 1)
    torch.manual_seed(1)
    blurred = appearance.jitter(edge, blur=2.0)
    step = lambda im: (im[:, 0, 8:24, 16] - im[:, 0, 8:24, 15]).abs().mean(1)  # the jump across the edge
    assert torch.all(step(blurred) < step(plain))
    assert torch.all(blurred[edge == -1] == -1) and blurred.min() >= -1 and blurred.max() <= 1
    many = torch.full((64, 1, 32, 32), -1.0)
    many[:, :, 4:28, 4:16], many[:, :, 4:28, 16:28] = -0.9, 0.8  # a dark tissue: noise would cut it to 0
    torch.manual_seed(2)
    noisy = appearance.jitter(many, log_gamma=0.0, coefficients=0.0, noise=0.25)
    inside = noisy[:, 0, 8:24, 18:26]  # within the bright tissue: flat before the noise
    spread = ((many[0][many[0] > -1] + 1) / 2).std()
    ratio = inside.std((1, 2)) / (2 * 0.25 * spread)  # noise sigma / its largest, in [-1, 1] units
    assert torch.all(ratio > 0) and torch.all(ratio < 1.2) and 0.35 < ratio.mean() < 0.65  # uniform: mean 1/2
    assert torch.all(noisy[many == -1] == -1) and torch.all(noisy[many > -1] > -1)
    flat = torch.where(edge > -1, torch.zeros_like(edge), edge)
    assert torch.equal(appearance.jitter(flat, log_gamma=0.0, coefficients=0.0, noise=0.25), flat)


def test_log_detail_takes_out_a_gain_and_a_linear_field_and_keeps_edges_and_background():
    """E^c's input with ``content_highpass``: the same reading of an image under a global gain and (away from the
    head's border, where the local mean is one-sided) a log-linear field; an edge between two tissues stays; the
    background stays -1; a model with the option reads its input through it."""
    torch.manual_seed(0)
    h = w = 64
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    tissue = torch.where(xx < 0, 0.3, 0.6) + 0.05 * torch.rand(h, w)  # two tissues, an edge at x = 0
    head = (xx.abs() < 0.9) & (yy.abs() < 0.9)
    img = (tissue * head)[None, None]
    base = appearance.log_detail(img * 2 - 1, 4.0)
    inner = (xx.abs() < 0.6) & (yy.abs() < 0.6)
    for f in (torch.full_like(yy, 1.4), torch.exp(0.3 * yy)):
        other = appearance.log_detail(img * f * 2 - 1, 4.0)
        assert (other - base)[0, 0][inner].abs().max() < 5e-3  # a slope is its own local mean inside (the floor: ~1e-3)
    raw_change = (torch.log(img * torch.exp(0.3 * yy) + 0.02) - torch.log(img + 0.02))[0, 0][inner].abs().mean() / 2
    assert raw_change > 0.04  # what the field would have moved, on the detail's scale: eight times the tolerance
    assert torch.equal(base[0, 0][~head], torch.full_like(base[0, 0][~head], -1.0))
    edge = base[0, 0, 20:44, :]
    assert (edge[:, 28:31].mean() < -0.05) and (edge[:, 33:36].mean() > 0.05)  # dark side below, bright above
    cfg = drit.DRITConfig(image_shape=(16, 16), k=3, variant="drit++", width=4, attr=8, n_res=1, content_highpass=2.0,
                          content_highpass_floor=0.1)
    model = drit.Translator(cfg).eval()
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(model.encode(x, None), model.content(appearance.log_detail(x, 2.0, 0.1)))
        assert not torch.equal(appearance.log_detail(x, 2.0, 0.1), appearance.log_detail(x, 2.0))
    for bad in (dict(content_highpass=-1.0), dict(content_highpass=2.0, content_highpass_floor=0.0)):
        with pytest.raises(ValueError, match="sigma"):
            drit.DRITConfig(image_shape=(16, 16), k=3, **bad)
