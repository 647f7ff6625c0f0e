import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from conftest import nifti_digest as digest
from nbutils import data, parallel, plots, tissuesim, volumes


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("tissuesim")
    return root, tissuesim.build(root / "a", n_train=2, n_test=2, slab=2, seed=5, progress=False)


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
    grid = {d: volumes.to_mni_grid(volumes.load_volume(csv.parent / one.clean[d]), order=0) for d in one.index}
    assert (grid["u-1"] > 0).sum() > 10_000
    for d in ("u-3", "u-5"):  # the same voxels, and the same tissues in them (other levels: a correlation)
        a, b = grid["u-1"] > 0, grid[d] > 0
        assert (a == b).all()  # mirrored storage read as RAS: Dice 0.97, correlation 0.69 / 0.77
        assert np.corrcoef(grid["u-1"][a], grid[d][a])[0, 1] > 0.95


def test_a_slab_lies_where_its_anatomy_lies_in_the_template(built):
    """The affine places a slab's first slice at the template's slice y0 (world y = -134 + y0 mm): of the
    template's slices within 15 mm, the ones its clean truth's tissues match best lie within 3 mm of y0 (the
    anatomy is warped, so not exactly at y0)."""
    _, csv = built
    table = pd.read_csv(csv, keep_default_na=False)
    affine, maps = tissuesim.load_tissues()
    for _, row in table[table.split == "test"].iterrows():
        img = volumes.load_volume(csv.parent / row.clean)
        y0 = int(round(img.affine[1, 3] - affine[1, 3]))
        assert tissuesim.Y_BAND[0] <= y0 < tissuesim.Y_BAND[1]
        clean = np.asarray(img.dataobj)[:, 0, :]
        levels = tissuesim.SCANNERS[row.domain]["levels"]

        def match(y):  # the tissues' correlation where both have brain
            tpl = sum(level * m[:, y, :] for level, m in zip(levels, maps))
            both = (clean > 0) & (tpl > 0)
            return np.corrcoef(clean[both], tpl[both])[0, 1]

        ys = np.arange(y0 - 15, y0 + 16)
        assert abs(ys[np.argmax([match(y) for y in ys])] - y0) <= 3


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
    row = table[(table.split == "test") & (table.domain == "u-2")].iloc[0]  # int16 storage at its scale
    clean, scale = load(row.clean), tissuesim.SCANNERS["u-2"]["scale"]
    assert clean.max() <= max(tissuesim.SCANNERS["u-2"]["levels"]) * scale + 0.5 and clean.max() > 0.5 * scale


def test_same_seed_same_files_whatever_the_threads_other_seed_other_files(built, monkeypatch):
    root, csv = built
    other = tissuesim.build(root / "c", n_train=2, n_test=2, slab=2, seed=6, progress=False)
    monkeypatch.setattr(parallel, "cores", lambda: 1)
    alone = tissuesim.build(root / "one-thread", n_train=2, n_test=2, slab=2, seed=5, progress=False)
    assert digest(alone.parent) == digest(csv.parent) != digest(other.parent)
    assert alone.read_text() == csv.read_text()


def test_a_folder_holding_the_set_is_reused_and_rebuilt_once_the_code_changed(built, monkeypatch):
    root, _ = built
    csv = tissuesim.build(root / "d", n_train=1, n_test=1, slab=1, seed=5, progress=False)
    stamp = csv.stat().st_mtime_ns
    assert tissuesim.build(csv.parent, n_train=1, n_test=1, slab=1, seed=5, progress=False) == csv
    assert csv.stat().st_mtime_ns == stamp
    monkeypatch.setattr(tissuesim, "CODE_HASH", "other code")
    tissuesim.build(csv.parent, n_train=1, n_test=1, slab=1, seed=5, progress=False)
    assert csv.stat().st_mtime_ns != stamp


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
