import hashlib

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from nbutils import data, plots, tissuesim, volumes


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("tissuesim")
    return root, tissuesim.build(root / "a", n_train=2, n_test=2, slab=2, seed=5, progress=False)


def digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(
        np.asarray(nib.load(str(p)).dataobj).tobytes()).hexdigest() for p in sorted(folder.rglob("*.nii.gz"))}


def test_the_csv_passes_the_projects_checks_with_unpaired_training_and_traveling_test_subjects(built):
    _, csv = built
    table = data.read_table(csv)
    k = len(tissuesim.SCANNERS)
    assert set(table.domain) == set(tissuesim.SCANNERS) and len(table) == 2 * k + 2 * k
    train, test = table[table.split == "train"], table[table.split == "test"]
    assert train.groupby("subject").domain.nunique().max() == 1
    assert (test.groupby("subject").domain.nunique() == k).all()
    assert (test.clean != "").all() and (test.rescan != "").all() and (train.clean == "").all()


def test_each_scanner_stores_its_volumes_its_own_way(built):
    _, csv = built
    table = pd.read_csv(csv, keep_default_na=False)
    for name, scanner in tissuesim.SCANNERS.items():
        img = nib.load(str(csv.parent / table[table.domain == name].path.iloc[0]))
        assert img.get_data_dtype() == np.dtype(scanner["dtype"])
        assert nib.aff2axcodes(img.affine) == (("L" if scanner["las"] else "R"), "A", "S")
        assert img.shape == (197, 2, 189)  # nilearn's grid, not FSL's 182 one
        assert b"not real data" in img.header["descrip"].tobytes()


def test_one_anatomy_lands_in_one_place_on_the_mni_grid_whatever_its_storage(built):
    """A test subject's clean truths from scanners stored in RAS (u-1) and LAS (u-3, u-5), once on the grid
    notebook 01 slices, cover the same voxels: the affines place them, not the array order."""
    _, csv = built
    table = pd.read_csv(csv, keep_default_na=False)
    one = table[(table.subject == "trav-000")].set_index("domain")
    grid = {d: volumes.to_mni_grid(nib.load(str(csv.parent / one.clean[d])), order=0) for d in one.index}
    assert (grid["u-1"] > 0).sum() > 10_000
    for d in ("u-3", "u-5"):  # the same voxels, and the same tissues in them (other levels: a correlation)
        a, b = grid["u-1"] > 0, grid[d] > 0
        assert (a == b).all()  # mirrored storage read as RAS: Dice 0.97, correlation 0.69 / 0.77
        assert np.corrcoef(grid["u-1"][a], grid[d][a])[0, 1] > 0.95


def test_clean_truth_is_the_tissue_levels_alone_and_a_rescan_draws_fresh_nuisance(built):
    _, csv = built
    table = pd.read_csv(csv, keep_default_na=False)
    row = table[(table.split == "test") & (table.domain == "u-1")].iloc[0]
    load = lambda p: np.asarray(nib.load(str(csv.parent / p)).dataobj, np.float64)
    scan, clean, rescan = load(row.path), load(row.clean), load(row.rescan)
    assert ((scan > 0) == (clean > 0)).all() and ((rescan > 0) == (clean > 0)).all()
    assert not np.allclose(scan, rescan)
    levels = tissuesim.SCANNERS["u-1"]["levels"]
    assert clean.max() <= max(levels) + 1e-6 and clean[clean > 0].min() >= min(levels) * 0.5 - 1e-6
    inside = clean > 0  # noise: the scan departs from its truth where the truth is flat and where it is not
    assert np.std((scan - clean)[inside]) > 0.01


def test_same_seed_same_files_other_seed_other_files_and_the_set_reused(built):
    root, csv = built
    stamp = csv.stat().st_mtime_ns
    assert tissuesim.build(csv.parent, n_train=2, n_test=2, slab=2, seed=5, progress=False) == csv
    assert csv.stat().st_mtime_ns == stamp
    again = tissuesim.build(root / "b", n_train=2, n_test=2, slab=2, seed=5, progress=False)
    other = tissuesim.build(root / "c", n_train=2, n_test=2, slab=2, seed=6, progress=False)
    assert digest(again.parent) == digest(csv.parent) != digest(other.parent)


def test_the_set_is_labelled_simulated_with_its_scanners(built, monkeypatch):
    _, csv = built
    monkeypatch.setattr(plots, "SIMULATED", plots.SIMULATED)  # the label as it was for the tests after this one
    label = plots.describe_data(csv)
    assert "u-1, u-2, u-3, u-4, u-5" in label and "simulated" in label and "not real devices" in label
    assert "not simulated" not in label and "built-in" not in label


def test_command_line_help_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as done:
        tissuesim.main(["--help"])
    assert done.value.code == 0 and "OUT_DIR" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []
