import nibabel as nib
import numpy as np
import pytest
import torch

from nbutils import drit, gmvae
from nbutils.harmonize import Harmonizer, harmonize_volume
from nbutils.volumes import MNI_AFFINE, DataError

from conftest import blob_volume


@pytest.fixture(scope="module")
def harm():
    torch.manual_seed(0)
    gm = gmvae.GMVAE(gmvae.GMVAEConfig(image_shape=(32, 32), k=3, gaussian_size=8, width=4))
    model = drit.Translator(drit.DRITConfig(image_shape=(32, 32), k=3, width=4, attr=8, n_res=1), gm)
    return Harmonizer(model.eval(), batch_size=5)


def test_slices_in_slices_out(harm):
    images = np.random.default_rng(0).random((7, 32, 32)).astype(np.float32)
    sf = harm.scanner_free(images, seed=1)
    assert sf.shape == images.shape and sf.min() >= 0 and sf.max() <= 1
    np.testing.assert_array_equal(sf, harm.scanner_free(images, seed=1))  # reproducible
    np.testing.assert_allclose(sf[3], harm.scanner_free(images[3], seed=1)[0], atol=1e-5)  # one code for all
    assert not np.array_equal(sf, harm.scanner_free(images, seed=2))
    draws = harm.scanner_free_draws(images, [1, 2])  # batches of 5: one of them short
    assert draws.shape == (2, *images.shape)
    np.testing.assert_array_equal(draws[0], sf)
    np.testing.assert_array_equal(draws[1], harm.scanner_free(images, seed=2))
    assert harm.translate(images[:0], [harm.scanner_free_code(1)]).shape == (1, 0, 32, 32)
    guided = harm.to_scanner(images, 2, reference=images[:2])
    sampled = harm.to_scanner(images, 2, component=1)
    assert guided.shape == sampled.shape == images.shape and not np.array_equal(guided, sampled)
    with pytest.raises(ValueError, match="target scanner 3 does not exist"):
        harm.to_scanner(images, 3)
    with pytest.raises(ValueError, match=r"expected slices of shape \(N, 32, 32\)"):
        harm.scanner_free(np.zeros((2, 30, 32)))


def test_volume_round_trip_keeps_grid_header_and_background(harm, tmp_path):
    # FSL orientation (x flipped), int16 on disk, as the simulated set and most pipelines write
    affine = MNI_AFFINE.copy()
    affine[0, 0], affine[0, 3] = -1.0, 90.0
    data = np.asarray(blob_volume(3).dataobj)[::-1].astype(np.int16)
    src = tmp_path / "in.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(src))
    out = harmonize_volume(harm, src, tmp_path / "out" / "in_sf.nii.gz", progress=False)
    a, b = nib.load(str(src)), nib.load(str(out))
    assert b.shape == a.shape and np.allclose(b.affine, a.affine)
    assert b.header.get_xyzt_units() == a.header.get_xyzt_units()
    res, inp = b.get_fdata(), a.get_fdata()
    outside = inp == 0
    assert np.array_equal(res[outside], inp[outside])  # background untouched
    assert not np.allclose(res[~outside], inp[~outside])  # brain harmonized
    assert res.max() <= inp.max() * 1.05 + 1  # back in the input's intensity range
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["in_sf.nii.gz"]


def test_dark_voxels_the_head_encloses_are_harmonized_too(harm, tmp_path):
    """A dark pocket inside the head (CSF in a ventricle: below the foreground threshold) is written
    back with the rest of the brain, not left at its raw intensity among harmonized neighbours;
    the background outside the head stays as it was."""
    data = np.asarray(blob_volume(3).dataobj).copy()
    c = np.array(data.shape) // 2
    pocket = (slice(c[0] - 6, c[0] + 6), slice(c[1] - 6, c[1] + 6), slice(c[2] - 6, c[2] + 6))
    data[pocket] = 20.0  # 3 % of the brightest tissue: below MASK_THRESHOLD once normalised
    src = tmp_path / "pocket.nii.gz"
    nib.save(nib.Nifti1Image(data, MNI_AFFINE), str(src))
    res = nib.load(str(harmonize_volume(harm, src, tmp_path / "pocket_sf.nii.gz", progress=False))).get_fdata()
    assert (res[pocket] != data[pocket]).mean() > 0.99
    assert np.array_equal(res[data == 0], data[data == 0])


def test_a_volume_with_a_singleton_fourth_axis_keeps_it(harm, tmp_path):
    src = tmp_path / "in4.nii.gz"
    affine = MNI_AFFINE.copy()  # FSL orientation (x flipped): reoriented on the way in and out
    affine[0, 0], affine[0, 3] = -1.0, 90.0
    nib.save(nib.Nifti1Image(np.asarray(blob_volume(3).dataobj)[::-1, ..., None], affine), str(src))
    out = nib.load(str(harmonize_volume(harm, src, tmp_path / "out4.nii.gz", progress=False)))
    assert out.shape == nib.load(str(src)).shape == (*blob_volume().shape, 1)


def test_volume_errors(harm, tmp_path):
    with pytest.raises(ValueError, match="mode must be"):
        harmonize_volume(harm, tmp_path / "x.nii.gz", tmp_path / "y.nii.gz", mode="free")
    with pytest.raises(ValueError, match="needs a target"):
        harmonize_volume(harm, tmp_path / "x.nii.gz", tmp_path / "y.nii.gz", mode="to-scanner")
    (tmp_path / "bad.nii.gz").write_bytes(b"nope")
    with pytest.raises(DataError, match="bad.nii.gz"):
        harmonize_volume(harm, tmp_path / "bad.nii.gz", tmp_path / "y.nii.gz")
    assert not (tmp_path / "y.nii.gz").exists()


def test_given_the_training_slices_it_translates_to_each_scanner_by_its_code_and_references(harm):
    from test_evaluations import scanners

    train = scanners(n_per=5, k=3, size=32)
    named = Harmonizer(harm.model, train, seed=0)
    images = np.asarray(train.images[:4])
    assert named.domains == ["s0", "s1", "s2"] and len(named.codes) == 3
    for b in range(3):  # the references of scanner b are training slices of b
        own = np.asarray(train.images)[train.labels == b]
        assert len(named.references[b]) == 5 and all((own == r).all(axis=(1, 2)).any() for r in named.references[b])
    every = named.to_every_domain(images)
    assert every.shape == (3, 4, 32, 32)
    code = int(named.codes.code[2])  # GMM-DRIT: the component matched to s2
    np.testing.assert_array_equal(every[2], named.to_scanner(images, code, reference=named.references[2]))
    with pytest.raises(ValueError, match="scanner 3 does not exist"):
        named.to_domain(images, 3)
    with pytest.raises(ValueError, match="does not know the scanners"):
        harm.to_domain(images, 0)
