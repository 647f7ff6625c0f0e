import pytest
import torch

from nbutils import crops, drit, train
from nbutils.scanner_means import REGIONS, ScannerMeans, regions

from test_drit import make_task, sampler


@pytest.mark.parametrize("size", [32, 46, 91])
def test_regions_are_the_probe_s_pooling_bins_of_the_whole_slice(size):
    """Averaged over each region's cells, a whole slice's map gives exactly what ``adaptive_avg_pool2d`` to 4 x 4 (the
    probe's summary) gives, at sizes whose bins overlap too (46 and 91 cells: the paper and quick profiles' maps);
    a window's cells lie in the regions of the slice they lie in, wherever it is cut."""
    one = regions(crops.coordinates(None, (size, size), n=1), (size, size))
    maps = torch.randn(2, 3, size, size)
    pooled = torch.nn.functional.adaptive_avg_pool2d(maps, REGIONS).flatten(2)
    mine = torch.einsum("nchw,nrhw->ncr", maps, one) / one.flatten(2).sum(2)[:, None]
    assert torch.allclose(mine, pooled, atol=1e-5)
    corner = torch.tensor([[7.0, 13.0]])
    window = regions(crops.coordinates(corner, (16, 16), (size, size)), (size, size))
    assert torch.equal(window, one[..., 7:23, 13:29])


def toy(n=60, k=3, c=4, size=16, offset=0.5, seed=0):
    """Content maps of noise; scanner 1's carry ``offset`` in the slice's top-left quarter."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, c, size, size, generator=g)
    labels = torch.arange(n) % k
    shift = torch.zeros_like(base)
    shift[labels == 1, :, : size // 2, : size // 2] = offset
    return base, shift, torch.nn.functional.one_hot(labels, k).float()


def descend(maps, codes, steps=300, lr=50.0, momentum=0.9):
    """Gradient descent of the maps themselves on the term, unpaired batches of 8."""
    maps = maps.clone().requires_grad_(True)
    size = tuple(maps.shape[-2:])
    means = ScannerMeans(codes.shape[1], maps.shape[1], size, momentum)
    grid = crops.coordinates(None, size, n=len(maps))
    opt, g = torch.optim.SGD([maps], lr=lr), torch.Generator().manual_seed(1)
    values = []
    for _ in range(steps):
        idx = torch.randint(0, len(maps), (8,), generator=g)
        surrogate, value = means(maps[idx], grid[idx], codes[idx])
        opt.zero_grad()
        surrogate.backward()
        opt.step()
        values.append(float(value))
    return maps.detach(), torch.tensor(values)


def test_the_term_takes_a_scanner_s_offset_out_where_it_lies():
    """A toy where the answer is known: scanner 1's maps carry an offset of 0.5 in one quarter of the slice.
    Descending the term on the maps themselves (unpaired batches of 8, codes of their scanners) closes most of that
    gap between scanner 1 and the others there, and moves the rest of the slice much less than it closes the gap."""
    base, shift, codes = toy()
    labels = codes.argmax(1)
    maps, values = descend(base + shift, codes)
    moved = maps - base
    quarter = (slice(None), slice(None), slice(0, 8), slice(0, 8))
    gap = moved[labels == 1][quarter].mean() - moved[labels != 1][quarter].mean()
    assert gap < 0.15
    assert moved[:, :, 8:, 8:].mean(1).abs().mean() < 0.5 * (0.5 - gap)
    assert values[-50:].mean() < 0.25 * values[0]


def test_without_a_scanner_difference_the_term_invents_none():
    """Maps of pure noise, whatever the scanner: the running means differ only by sampling, so the term stays under
    half of where it starts on a real offset, and the differences it leaves between one scanner's maps and the
    others' in any quarter of the slice are a fraction of the 0.5 offset the test above takes out."""
    base, shift, codes = toy()
    labels = codes.argmax(1)
    _, offset_values = descend(base + shift, codes)
    maps, values = descend(base, codes)
    assert values[-50:].mean() < 0.5 * offset_values[:50].mean()
    moved = maps - base
    quarters = [(slice(a, a + 8), slice(b, b + 8)) for a in (0, 8) for b in (0, 8)]
    made = max(float((moved[labels == k][..., r, c].mean() - moved[labels != k][..., r, c].mean()).abs())
               for k in range(3) for r, c in quarters)
    assert made < 0.1


def test_the_surrogate_s_gradient_is_the_loss_s_with_the_batch_as_the_running_means():
    """With momentum 0 the running means are this batch's: the surrogate's gradient in the maps equals autograd's of
    1/2 mean over codes, channels and regions seen of (m_k - mean_k' m_k')^2 / v, v held fixed."""
    base, shift, codes = toy(n=12)
    codes[:, 2] *= 0.5  # soft codes too
    maps = (base + shift).requires_grad_(True)
    means = ScannerMeans(3, 4, (16, 16), momentum=0.0)
    grid = crops.coordinates(None, (16, 16), n=12)
    surrogate, value = means(maps, grid, codes)
    (mine,) = torch.autograd.grad(surrogate, maps)

    one = regions(grid, (16, 16))
    cells = one.flatten(2).sum(2)
    window = torch.einsum("nchw,nrhw->ncr", maps, one) / cells[:, None]
    m = torch.einsum("nk,ncr,nr->kcr", codes, window, cells) / torch.einsum("nk,nr->kr", codes, cells)[:, None]
    v = (window.detach().var(0, unbiased=False) + means.eps)
    loss = 0.5 * ((m - m.mean(0)).square() / v).mean()
    (expected,) = torch.autograd.grad(loss, maps)
    assert float(loss.detach()) == pytest.approx(float(value), rel=1e-4)
    assert torch.allclose(mine, expected, atol=1e-7, rtol=1e-4)


def test_the_running_means_are_buffers_of_the_model():
    """On, the term's running means live in the model's state, so a checkpoint carries them and a resumed run
    continues them (``test_drit``'s exact resume runs with the term on too); its value is recorded per step. Off (the
    default), the model's state and its checkpoint's meta are as before the option existed."""
    on, off = make_task("drit++", w_content_mean=1.0), make_task("drit++")  # codes: the batch's three labels
    assert not any(k.startswith("scanner_means.") for k in off.modules.state_dict())
    assert "w_content_mean" not in off.meta()["config"] and on.meta()["config"]["w_content_mean"] == 1.0
    torch.manual_seed(5)
    losses = on.step(sampler()(0), 0, train.Context(torch.device("cpu"), on.optimizers))
    assert losses["content_mean"] > 0 and on.modules.scanner_means.counts.sum() > 0
    state = {k: v for k, v in on.modules.state_dict().items() if k.startswith("scanner_means.")}
    assert set(state) == {f"scanner_means.{n}" for n in ("sums", "counts", "first", "second", "windows")}
    again = make_task("drit++", w_content_mean=1.0)
    again.modules.load_state_dict(on.modules.state_dict())
    assert torch.equal(again.modules.scanner_means.sums, on.modules.scanner_means.sums)
    torch.manual_seed(5)
    assert "content_mean" not in off.step(sampler()(0), 0, train.Context(torch.device("cpu"), off.optimizers))


def test_the_momentum_must_lie_in_zero_one():
    with pytest.raises(ValueError, match="momentum"):
        ScannerMeans(3, 4, (8, 8), momentum=1.0)
    with pytest.raises(ValueError, match="content_mean_momentum"):
        make_task(w_content_mean=1.0, content_mean_momentum=1.5)
    assert drit.ADDED_OFF["w_content_mean"] == drit.DRITConfig(image_shape=(8, 8), k=2).w_content_mean
