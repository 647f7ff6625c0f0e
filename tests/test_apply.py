"""Notebook 10's input checks (one test per bad input) and notebook 11's explorer."""
import re

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from scipy.ndimage import binary_erosion

from nbutils import apply, drit, gmvae
from nbutils.data import MASK_THRESHOLD, volume_slices
from nbutils.harmonize import Harmonizer
from nbutils.metrics import sharpness
from nbutils.volumes import MNI_SHAPE, DataError

from conftest import blob_volume


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    gm = gmvae.GMVAE(gmvae.GMVAEConfig(image_shape=(24, 24), k=3, gaussian_size=8, width=4))
    return drit.Translator(drit.DRITConfig(image_shape=(24, 24), k=3, width=4, attr=8, n_res=1), gm).eval()


def test_inputs_folder_csv_or_file(write_volume, tmp_path):
    a, b = write_volume("a.nii.gz"), write_volume("b.nii", seed=1)
    (tmp_path / "notes.txt").write_text("not a volume")
    assert apply.find_volumes(tmp_path) == [a, b]
    csv = tmp_path / "list.csv"
    csv.write_text("path\nb.nii\n")
    assert apply.find_volumes(csv) == [b]
    assert apply.find_volumes(a) == [a]


@pytest.mark.parametrize("case, message", [
    ("missing folder", "no such folder, CSV or NIfTI"),
    ("empty folder", "holds no .nii or .nii.gz"),
    ("text file", "not a folder, a .csv or a NIfTI"),
    ("csv without path", "missing column"),
    ("csv naming a missing file", "do not exist"),
    ("empty csv", "the CSV is empty"),
    ("corrupt volume", "broken.nii.gz"),
])
def test_each_bad_input_is_refused_with_its_reason(tmp_path, case, message):
    target = {
        "missing folder": lambda: tmp_path / "nowhere",
        "empty folder": lambda: (tmp_path / "empty").mkdir() or tmp_path / "empty",
        "text file": lambda: (tmp_path / "a.txt").write_text("x") and tmp_path / "a.txt",
        "csv without path": lambda: (tmp_path / "c.csv").write_text("file\nx.nii\n") and tmp_path / "c.csv",
        "csv naming a missing file": lambda: (tmp_path / "c.csv").write_text("path\nx.nii\n") and tmp_path / "c.csv",
        "empty csv": lambda: (tmp_path / "c.csv").write_text("") or tmp_path / "c.csv",
        "corrupt volume": lambda: (tmp_path / "broken.nii.gz").write_bytes(b"nope") and tmp_path,
    }[case]()
    with pytest.raises(DataError, match=message):
        apply.find_volumes(target)


def test_mode_reference_and_output_checks(write_volume, tmp_path):
    assert apply.target_index("scanner-free", ["s0", "s1"]) is None
    assert apply.target_index("s1", ["s0", "s1"]) == 1
    with pytest.raises(ValueError, match="neither 'scanner-free' nor one of"):
        apply.target_index("siemens", ["s0", "s1"])
    with pytest.raises(DataError, match="reference volume does not exist"):
        apply.reference_slices(tmp_path / "ref.nii.gz", (24, 24))
    ref = apply.reference_slices(write_volume("ref.nii.gz"), (24, 24), n=3)
    assert ref.shape == (3, 24, 24) and 0 <= ref.min() and ref.max() <= 1
    v = write_volume("v.nii.gz")
    out = tmp_path / "out"
    assert [p.name for p in apply.output_paths(out, [v], "scanner-free")] == ["v_harmonized-scanner-free.nii.gz"]
    # a scanner named with a space and a slash: one file in the output folder, not a folder of its own
    assert apply.output_paths(out, [v], "Siemens Trio/Tim 3T") == [out / "v_harmonized-Siemens-Trio-Tim-3T.nii.gz"]
    # two scanners whose names differ only in what a file name cannot hold never share a file
    ge = ["GE Signa", "GE/Signa", "sim-A"]
    labels = [apply.file_label(m, ge) for m in ge + ["scanner-free"]]
    assert len(set(labels)) == 4 and labels[2:] == ["sim-A", "scanner-free"]
    assert all(re.fullmatch(r"GE-Signa-[0-9a-f]{6}", x) for x in labels[:2])
    assert apply.file_label("GE Signa", ["GE Signa", "sim-A"]) == "GE-Signa"  # no twin: the plain label
    # twins but for letter case: one file where file names ignore case (macOS, Windows)
    cased = ["GE Signa", "GE signa"]
    assert apply.file_label(cased[0], cased).lower() != apply.file_label(cased[1], cased).lower()
    assert len({p.name for m in ge[:2] for p in apply.output_paths(out, [v], m, ge)}) == 2


def test_output_paths_never_share_a_file(tmp_path):
    (tmp_path / "site1").mkdir(), (tmp_path / "site2").mkdir()
    same = [tmp_path / "site1" / "T1.nii.gz", tmp_path / "site2" / "T1.nii.gz", tmp_path / "site2" / "b.nii"]
    names = [p.name for p in apply.output_paths(tmp_path / "out", same, "sim-A")]
    assert names == ["site1_T1_harmonized-sim-A.nii.gz", "site2_T1_harmonized-sim-A.nii.gz",
                     "site2_b_harmonized-sim-A.nii.gz"]
    with pytest.raises(ValueError, match="would both be written to"):  # one name even with its folders
        apply.output_paths(tmp_path / "out", [tmp_path / "v.nii", tmp_path / "v.nii.gz"], "scanner-free")
    with pytest.raises(ValueError, match="would both be written to"):  # a volume listed twice
        apply.output_paths(tmp_path / "out", [tmp_path / "a.nii.gz"] * 2, "scanner-free")
    (tmp_path / "store").mkdir(), (tmp_path / "store" / "SHA-1.nii.gz").touch()
    (tmp_path / "site1" / "sub01.nii.gz").symlink_to(tmp_path / "store" / "SHA-1.nii.gz")  # a DataLad-style link
    assert apply.output_paths(tmp_path / "out", [tmp_path / "site1" / "sub01.nii.gz"], "A")[0].name == \
        "sub01_harmonized-A.nii.gz"
    inside = tmp_path / "out" / "v_harmonized-scanner-free.nii.gz"
    with pytest.raises(ValueError, match="overwrite an input"):
        apply.output_paths(tmp_path / "out", [tmp_path / "v.nii.gz", inside], "scanner-free")


def test_harmonize_all_keeps_shape_and_affine(model, write_volume, tmp_path):
    vols = [write_volume("a.nii.gz"), write_volume("b.nii.gz", seed=2)]
    with pytest.raises(ValueError, match="would both be written to"):  # refused before anything is written
        apply.harmonize_all(Harmonizer(model), [vols[0], vols[1], vols[0]], tmp_path / "out", "scanner-free")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    done = apply.harmonize_all(Harmonizer(model), vols, tmp_path / "out", "scanner-free")
    assert done.same_shape.all() and done.same_affine.all() and len(done) == 2
    assert all(nib.load(p).shape == blob_volume().shape for p in done.output)
    # one anatomy from two 'scanners': agreement before / after is measured on matched slices
    table = pd.DataFrame(dict(path=[str(v) for v in vols], subject="x", domain=["s0", "s1"], clean=str(vols[0])))
    agree, sharp = apply.agreement(table, list(done.output))
    assert len(agree) == 1 and 0 < agree.inputs[0] <= 1 and 0 < agree.outputs[0] <= 1 and 0 < agree.blur_control[0] <= 1
    assert len(sharp) == 2 and (sharp.blur_sigma_px >= 0).all()
    # volume a is its own clean truth here: its input/clean sharpness ratio is exactly 1
    assert sharp.sharpness_input[0] == pytest.approx(sharp.sharpness_clean[0])
    assert np.allclose(sharp.output_to_clean_sharpness, sharp.sharpness_output / sharp.sharpness_clean)
    # a volume of the anatomy that covers only its back half: compared on the slices where both have a brain
    half = blob_volume(3)
    half.dataobj[:, MNI_SHAPE[1] // 2:] = 0  # coronal axis 1 on the MNI grid (RAS): the front half gone
    vols = [vols[0], write_volume("half.nii.gz", half)]
    done = apply.harmonize_all(Harmonizer(model), vols, tmp_path / "out", "scanner-free")
    table = pd.DataFrame(dict(path=[str(v) for v in vols], subject="x", domain=["s0", "s1"]))
    agree, sharp = apply.agreement(table, list(done.output))
    assert len(agree) == 1 and 0 < agree.inputs[0] <= 1 and np.isfinite(sharp.blur_sigma_px).all()
    # read on the slices where the half volume has at least half of a's brain: a's sharpness on those slices
    a, ys = volume_slices(vols[0])
    b = volume_slices(vols[1], ys=ys)[0]
    area = lambda x: (x > MASK_THRESHOLD).sum(axis=(1, 2))
    kept = area(b) >= 0.5 * area(a)
    assert 0 < kept.sum() < len(kept)  # some of a's slices, not all
    inner = [binary_erosion(m, iterations=2) for m in a[kept] > MASK_THRESHOLD]
    assert sharp.sharpness_input[0] == pytest.approx(np.mean([sharpness(x, m) for x, m in zip(a[kept], inner)]))
    # an anatomy whose volumes share no brain slice (the back half, the front half) has no pair: an empty table
    front = blob_volume(4)
    front.dataobj[:, : MNI_SHAPE[1] // 2] = 0
    none = pd.DataFrame(dict(path=[str(vols[1]), str(write_volume("front.nii.gz", front))], subject="y",
                             domain=["s0", "s1"]))
    with pytest.warns(UserWarning, match="share no coronal brain slice"):
        assert apply.agreement(none, list(none.path))[0].empty


def test_explorer_draws_every_mode_headless(model, monkeypatch):
    from nbutils import explorer

    from test_evaluations import scanners

    test = scanners(n_per=4, size=24)
    test.manifest = test.manifest.assign(subject=[f"sub{i % 4}" for i in range(len(test))], slice_index=90)
    ex = explorer.Explorer(Harmonizer(model, test), test, test)
    assert ex.modes() == ["scanner-free", "s0", "s1", "s2", explorer.INTERPOLATE]
    for mode in ex.modes():
        fig = ex.figure(1, mode, t=0.3, components=(0, 2))
        assert len(fig.data) == 3 + 3 + 1  # three images, three scanners' codes, this slice
    # the panels are PNGs of the very arrays: input and output in gray, 0 -> black, 1 -> white
    import base64
    import io

    from PIL import Image
    fig = ex.figure(1, "s0")
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(fig.data[1].source.split(",", 1)[1]))))
    assert shown.shape == (24, 24, 3)
    assert np.abs(shown[..., 0] / 255.0 - ex.output(1, "s0")).max() <= 1 / 255 + 1e-6
    a = ex.output(1, explorer.INTERPOLATE, t=0.0, components=(0, 2))
    b = ex.output(1, explorer.INTERPOLATE, t=1.0, components=(0, 2))
    assert not np.allclose(a, b)  # the attribute moves the output
    with pytest.raises(ValueError, match="unknown mode"):
        ex.output(0, "nope")
    with pytest.raises(ValueError, match="does not exist"):
        ex.output(999, "scanner-free")
    monkeypatch.delenv("NB_HEADLESS", raising=False)
    assert ex.widget() is not None
    monkeypatch.setenv("NB_HEADLESS", "1")  # make run / make test: a static figure, no live widgets
    assert isinstance(ex.widget(), type(fig))


def test_the_builtin_test_volumes_put_traveling_subjects_first_so_that_two_of_them_have_pairs_to_compare():
    # two subjects scanned once whose names sort first, and one traveling subject scanned on both scanners
    manifest = pd.DataFrame({"split": ["test"] * 5 + ["train"], "subject": ["a", "a", "b", "t", "t", "c"],
                             "domain": ["A", "A", "B", "A", "B", "A"],
                             "source": ["a.nii", "a.nii", "b.nii", "tA.nii", "tB.nii", "c.nii"]})
    two = apply.builtin_test_volumes(manifest, max_subjects=2)
    assert list(two.path) == ["a.nii", "tA.nii", "tB.nii"]  # listed by subject and scanner
    assert list(apply.builtin_test_volumes(manifest).subject.unique()) == ["a", "b", "t"]  # every test subject
