import torch

from nbutils import appearance, crops


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
