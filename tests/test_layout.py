import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from nbutils import crops, layout

H = 64
ROWS, COLS = np.meshgrid(np.linspace(-1, 1, H), np.linspace(-1, 1, H), indexing="ij")
BRAIN = ROWS ** 2 / 0.8 + COLS ** 2 / 0.6 < 1


def anatomies(n, seed=0):
    """Three-tissue toy slices in one brain outline, each its own random layout."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = gaussian_filter(rng.normal(size=(H, H)), 3)
        a = (a - a.min()) / (a.max() - a.min())
        out.append(np.where(BRAIN, np.where(a > 0.5, 0.9, np.where(a > 0.3, 0.6, 0.3)), 0.0))
    return np.array(out)


def field_map(coef):
    basis = np.stack([ROWS ** i * COLS ** j for i, j in crops.exponents(3)], -1)[..., 1:]
    return basis @ coef


def test_the_scanners_fields_are_read_from_their_unpaired_slices_whatever_their_contrast():
    """Three scanners see different anatomies of one kind; two draw a known log field, one of them
    also with another contrast curve (gamma 0.7): the targets' fields are the fields less their mean,
    in shape (correlation > 0.95) and roughly in size (within a factor 1.6: rank matching under a
    field moves tissues' ranks too)."""
    fields = [0.25 * ROWS - 0.15 * COLS * ROWS, -0.2 * COLS + 0.1 * ROWS ** 2, np.zeros((H, H))]
    slices, groups = [], []
    for s, f in enumerate(fields):
        for a in anatomies(80, seed=s):
            x = np.clip(a * np.exp(f), 0, 1)
            slices.append(x ** 0.7 if s == 1 else x)
            groups.append(s)
    targets = layout.field_targets(np.array(slices), np.array(groups), k=4)
    assert not targets[3].any()  # a code without slices
    common = np.mean(fields, 0)
    for s, f in enumerate(fields):
        est, true = field_map(targets[s])[BRAIN], (f - common)[BRAIN]
        est, true = est - est.mean(), true - true.mean()
        assert np.corrcoef(est, true)[0, 1] > 0.95, s
        assert 1 / 1.6 < np.sqrt((est ** 2).mean() / (true ** 2).mean()) < 1.6, s


def test_a_contrast_curve_alone_moves_no_layout():
    x = anatomies(1)[0] * np.exp(0.2 * ROWS)
    curved = x ** 0.5  # monotone: every pixel keeps its rank
    coef = layout.coefficients(np.stack([x, curved]))
    np.testing.assert_allclose(coef[0], coef[1], atol=1e-9)
    assert np.abs(coef[0]).max() > 0.05


def test_bad_input_is_explained():
    with pytest.raises(ValueError, match=r"\(N, h, w\)"):
        layout.coefficients(np.zeros((H, H)))
    with pytest.raises(ValueError, match="no brain"):
        layout.coefficients(np.zeros((2, H, H)))
    with pytest.raises(ValueError, match="fewer than two"):
        layout.field_targets(anatomies(3), np.zeros(3, int), k=2)
