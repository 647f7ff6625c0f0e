import pytest
import torch

from nbutils import crops, drit, train
from nbutils.scanner_means import REGIONS, SHRINK, ScannerMeans, regions

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


@pytest.mark.parametrize("whiten", [False, True])
def test_the_surrogate_s_gradient_is_the_loss_s_with_the_batch_as_the_running_means(whiten):
    """With momentum 0 the running means are this batch's: the surrogate's gradient in the maps equals autograd's of
    1/2 mean over codes, channels and regions seen of (m_k - mean_k' m_k')^2 / v, v held fixed; whitened, of
    1/2 sum over codes and regions of d^T S^-1 d over the same count, S each region's shrunk channel covariance."""
    base, shift, codes = toy(n=12)
    codes[:, 2] *= 0.5  # soft codes too
    maps = (base + shift).requires_grad_(True)
    means = ScannerMeans(3, 4, (16, 16), momentum=0.0, whiten=whiten)
    grid = crops.coordinates(None, (16, 16), n=12)
    surrogate, value = means(maps, grid, codes)
    (mine,) = torch.autograd.grad(surrogate, maps)

    one = regions(grid, (16, 16))
    cells = one.flatten(2).sum(2)
    window = torch.einsum("nchw,nrhw->ncr", maps, one) / cells[:, None]
    m = torch.einsum("nk,ncr,nr->kcr", codes, window, cells) / torch.einsum("nk,nr->kr", codes, cells)[:, None]
    d = m - m.mean(0)
    if whiten:
        w = window.detach().permute(2, 0, 1)  # (R, N, C)
        centred = w - w.mean(1, keepdim=True)
        cov = centred.transpose(1, 2) @ centred / len(maps)
        cov = (1 - SHRINK) * cov + SHRINK * torch.diag_embed(cov.diagonal(dim1=1, dim2=2)) + means.eps * torch.eye(4)
        quadratic = torch.einsum("kcr,rcd,kdr->", d, torch.linalg.inv(cov), d)
        loss = 0.5 * quadratic / d.numel()
    else:
        loss = 0.5 * (d.square() / (window.detach().var(0, unbiased=False) + means.eps)).mean()
    (expected,) = torch.autograd.grad(loss, maps)
    assert float(loss.detach()) == pytest.approx(float(value), rel=1e-4)
    assert torch.allclose(mine, expected, atol=1e-7, rtol=1e-4)


def test_whitened_the_term_weighs_a_difference_by_the_channels_joint_spread():
    """A toy where a linear discriminant's answer is known: two channels that move together (a shared part of spread
    1, each its own of spread 0.05) and one scanner's windows shifted by +0.1 in one and -0.1 in the other, along the
    direction in which the channels hardly vary. Per channel the shift is a tenth of a spread; against the joint
    spread it is larger than the spread along it. The whitened term reads it more than 5 times as large as the
    per-channel one (the shrinkage toward the diagonal caps the gain near 1 / SHRINK = 10), the same shift along the
    shared direction, as wide as the channels' spread, no larger; per channel the two shifts read alike."""
    g = torch.Generator().manual_seed(0)
    n, labels = 400, torch.arange(400) % 2
    shared = torch.randn(n // 2, 1, generator=g).repeat_interleave(2, 0)  # each scanner sees the same shared parts
    own = 0.05 * torch.randn(n, 2, generator=g)
    grid = crops.coordinates(None, (4, 4), n=n)
    codes = torch.nn.functional.one_hot(labels, 2).float()

    def value(direction, whiten):
        pair = shared + own + 0.1 * torch.tensor(direction) * labels[:, None]
        maps = pair[:, :, None, None].expand(n, 2, 4, 4)
        return float(ScannerMeans(2, 2, (4, 4), momentum=0.0, whiten=whiten)(maps, grid, codes)[1])

    across, along = [1.0, -1.0], [1.0, 1.0]
    assert value(across, True) > 5 * value(across, False)
    assert value(along, True) < value(along, False)
    assert value(along, False) == pytest.approx(value(across, False), rel=0.2)
    assert value(across, True) > 5 * value(along, True)


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
    whitened = make_task("drit++", w_content_mean=1.0, content_mean_whiten=True).modules.scanner_means
    assert whitened.whiten and whitened.second.dim() == 3  # the option reaches the module: a covariance per region
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
    with pytest.raises(ValueError, match="w_content_mean"):
        make_task(content_mean_whiten=True)
    default = drit.DRITConfig(image_shape=(8, 8), k=2)
    assert drit.ADDED_OFF["w_content_mean"] == default.w_content_mean
    assert drit.ADDED_OFF["content_mean_whiten"] == default.content_mean_whiten
