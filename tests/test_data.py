import filecmp
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from nbutils import data
from nbutils.volumes import DataError


def test_slice_dataset_writes_arrays_and_a_consistent_manifest(small_csv, tmp_path):
    out = tmp_path / "slices"
    manifest = data.slice_dataset(small_csv, out, image_size=48, per_volume=3, test_fraction=0.34,
                                  progress=False)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["info.json", "manifest.csv", "train.npy", "train_mask.npy", "test.npy", "test_mask.npy"])
    assert len(manifest) == 6 * 3
    for split in ("train", "test"):
        s = data.load_slices(out, split)
        assert s.images.shape == (len(s), 48, 48) and s.images.dtype == np.float16
        assert s.masks.shape == s.images.shape and s.masks.dtype == bool
        assert isinstance(s.images, np.memmap)
        assert 0 <= float(s.images.min()) and float(s.images.max()) <= 1
        assert list(s.manifest["index"]) == list(range(len(s)))
        assert s.masks.any(axis=(1, 2)).all()
    assert json.loads((out / "info.json").read_text())["domains"] == ["siteA", "siteB"]
    # subject-level split: no subject in both splits, and each domain has a test subject
    by_subject = manifest.groupby("subject")["split"].nunique()
    assert (by_subject == 1).all()
    assert set(manifest[manifest.split == "test"].domain) == {"siteA", "siteB"}


def test_kept_slices_are_the_brainiest_evenly_spaced():
    area = np.array([0, 1, 5, 8, 10, 9, 8, 2, 0])
    np.testing.assert_array_equal(data.chosen_slices(area, 0, 0.6), [3, 4, 5, 6])
    np.testing.assert_array_equal(data.chosen_slices(area, 2, 0.6), [3, 6])
    assert len(data.chosen_slices(np.zeros(5), 2, 0.6)) == 0


def test_a_bad_volume_leaves_previous_output_untouched(small_csv, tmp_path):
    out = tmp_path / "slices"
    data.slice_dataset(small_csv, out, image_size=32, per_volume=1, progress=False)
    before = (out / "manifest.csv").read_text()
    table = pd.read_csv(small_csv)
    (tmp_path / "siteB_2.nii").write_bytes(b"garbage")  # the last volume goes bad
    with pytest.raises(DataError, match="siteB_2.nii"):
        data.slice_dataset(small_csv, out, image_size=32, per_volume=1, progress=False)
    assert (out / "manifest.csv").read_text() == before
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # no half-written leftovers
    assert len(table) == 6


@pytest.mark.parametrize("content, message", [
    ("", "CSV is empty"),
    ("path,domain\n", "no rows"),
    ("file,scanner\na.nii.gz,A\n", "missing column(s) domain, path"),
    ("path,domain\nnope1.nii.gz,A\nnope2.nii.gz,A\n", "2 file(s) named in the CSV do not exist"),
])
def test_bad_csv_is_refused(tmp_path, content, message):
    csv = tmp_path / "bad.csv"
    csv.write_text(content)
    with pytest.raises(DataError) as err:
        data.read_table(csv)
    assert message in str(err.value) and str(csv) in str(err.value)


def test_domain_with_one_volume_is_refused(small_csv):
    text = small_csv.read_text().replace("siteB,siteB-1", "siteC,siteC-1")
    small_csv.write_text(text)
    with pytest.raises(DataError, match=r"'siteC' \(1 volume\)"):
        data.read_table(small_csv)


def test_split_column_is_checked(small_csv):
    table = pd.read_csv(small_csv)
    table["split"] = ["train", "test", "train", "train", "validation", "test"]
    table.to_csv(small_csv, index=False)
    with pytest.raises(DataError, match="unknown split"):
        data.read_table(small_csv)
    table["split"] = ["train", "test", "train", "train", "train", "test"]
    table.loc[1, "subject"] = "siteA-0"  # same subject in train and test
    table.to_csv(small_csv, index=False)
    with pytest.raises(DataError, match="more than one split"):
        data.read_table(small_csv)


def _tiny_volume(path: Path) -> None:
    """A 2 x 2 x 2 NIfTI: a header read_table accepts (it reads no voxel)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.ones((2, 2, 2), np.float32), np.eye(4)), str(path))


def _csv_of(folder: Path, rows: list[tuple[str, ...]], header: str = "path,domain") -> Path:
    """A CSV of ``rows`` whose files are tiny volumes."""
    for row in rows:
        _tiny_volume(folder / row[0])
    csv = folder / "volumes.csv"
    csv.write_text("\n".join([header] + [",".join(r) for r in rows]) + "\n")
    return csv


@pytest.mark.parametrize("rows, header, message", [
    ([("a.nii", "A"), ("b.nii", ""), ("c.nii", "B"), ("d.nii", "B")], "path,domain", r"row\(s\) 3 have no domain"),
    ([("a.nii", "A"), ("b.nii", "A"), ("c.nii", "B"), ("./a.nii", "B")], "path,domain",
     r"rows 2, 5 name the same file"),
    ([("a.nii", "A"), ("b.nii", "A"), ("c.nii", "A")], "path,domain", "at least two scanners"),
    # a scanner seen in training only: no test volume to score it on
    ([("a.nii", "A", "train"), ("b.nii", "A", "test"), ("c.nii", "B", "train"), ("d.nii", "B", "train")],
     "path,domain,split", r"\['B'\] have no test volume"),
    # B's two volumes are one subject's, which stays in one split: B has no training volume
    ([("a.nii", "A", "a"), ("b.nii", "A", "b"), ("c.nii", "A", "c"), ("d.nii", "B", "x"), ("e.nii", "B", "x")],
     "path,domain,subject", r"\['B'\] have no (train|test) volume"),
])
def test_rows_the_pipeline_cannot_use_are_refused(tmp_path, rows, header, message):
    with pytest.raises(DataError, match=message):
        data.read_table(_csv_of(tmp_path, rows, header))


def test_a_row_without_a_subject_is_named_by_its_path(tmp_path):
    # one file name in two sites' folders: two people, not a traveling subject
    rows = [(f"site{k}/{name}", f"S{k}", subject) for k in (1, 2) for name, subject in
            (("T1.nii.gz", ""), ("T1b.nii.gz", ""), ("other.nii", f"p{k}"))]
    table = data.read_table(_csv_of(tmp_path, rows, "path,domain,subject"), test_fraction=0.34)
    assert list(table["subject"]) == ["site1/T1", "site1/T1b", "p1", "site2/T1", "site2/T1b", "p2"]
    without = data.read_table(_csv_of(tmp_path, [r[:2] for r in rows]), test_fraction=0.34)
    assert list(without["subject"]) == ["site1/T1", "site1/T1b", "site1/other", "site2/T1", "site2/T1b", "site2/other"]
    assert data.file_subject(str(tmp_path.parent / "x" / "v.nii.gz"), tmp_path) == (tmp_path.parent / "x" / "v").as_posix()


def test_symlinked_volumes_keep_their_names_and_rows_their_line_numbers(tmp_path):
    (tmp_path / "store").mkdir()
    for k, site in enumerate(("site1", "site1", "site2", "site2")):
        _tiny_volume(tmp_path / "store" / f"SHA-{k}.nii.gz")
        (tmp_path / site).mkdir(exist_ok=True)
        (tmp_path / site / f"sub{k}.nii.gz").symlink_to(tmp_path / "store" / f"SHA-{k}.nii.gz")
    lines = ["path,domain", "site1/sub0.nii.gz,A", "site1/sub1.nii.gz,A", ",", "site2/sub2.nii.gz,B",
             "site2/sub3.nii.gz,B"]
    (tmp_path / "v.csv").write_text("\n".join(lines) + "\n")
    table = data.read_table(tmp_path / "v.csv", test_fraction=0.5)
    assert list(table["subject"]) == ["site1/sub0", "site1/sub1", "site2/sub2", "site2/sub3"]  # not SHA-k
    (tmp_path / "v.csv").write_text("\n".join(lines[:4] + ["site2/sub2.nii.gz,", "site2/sub3.nii.gz,B"]) + "\n")
    with pytest.raises(DataError, match=r"row\(s\) 5 have no domain"):  # line 5 of the file, past the blank row
        data.read_table(tmp_path / "v.csv")
    (tmp_path / "v.csv").write_text("\n".join(lines + ["store/SHA-3.nii.gz,B"]) + "\n")
    with pytest.raises(DataError, match="rows 6, 7 name the same file"):  # one file under two names
        data.read_table(tmp_path / "v.csv")


def test_a_bad_volume_anywhere_in_the_csv_stops_the_check_before_slicing(small_csv, tmp_path):
    data.read_table(small_csv)
    last = tmp_path / pd.read_csv(small_csv)["path"].iloc[-1]  # the CSV's last row, line 7
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4, 3), np.float32), np.eye(4)), str(last))
    rescan = tmp_path / "rescan.nii.gz"
    rescan.write_bytes(b"not an image")
    table = pd.read_csv(small_csv).assign(rescan="")
    table.loc[2, "rescan"] = rescan.name  # line 4
    table.loc[3, "rescan"] = "   "  # a blank cell: no rescan
    lines = table.to_csv(index=False).splitlines()
    # blank lines before the header and as line 5: the rows below them move down
    small_csv.write_text("\n".join([" ", ""] + lines[:3] + [""] + lines[3:]) + "\n")
    with pytest.raises(DataError) as err:
        data.read_table(small_csv)
    text = str(err.value)
    assert "2 volume(s) cannot be used" in text
    assert f"row 10: {last}: is a 4-D series of 3 volumes" in text
    assert f"row 7 (rescan): {rescan}: not a readable NIfTI file" in text
    for fixed in (rescan, last):
        _tiny_volume(fixed)
    assert data.read_table(small_csv).loc[6, "rescan"] == ""  # the blank cell: no rescan, not a path "   "


def test_subject_split_is_stratified_disjoint_and_seeded():
    table = pd.DataFrame({"subject": [f"s{i}" for i in range(40)] * 2,
                          "domain": ["A"] * 20 + ["B"] * 20 + ["A"] * 20 + ["B"] * 20})
    split = pd.Series(data.subject_split(table, 0.25, seed=1))
    assert (table.assign(split=split).groupby("subject")["split"].nunique() == 1).all()
    assert (split[table.domain == "A"] == "test").sum() == 2 * 5
    assert data.subject_split(table, 0.25, seed=1) == list(split)
    assert data.subject_split(table, 0.25, seed=2) != list(split)


def test_subject_split_keeps_traveling_subjects_for_testing_in_every_seed():
    # 10 subjects scanned once on each of A and B, and 4 traveling subjects scanned on both, listed with A first: split
    # with the subjects scanned once on A, as a split by first scanner did, all four land in training with probability
    # 10 / 14 = 0.71 at a test fraction of 0.1 (one of A's 14 subjects tested)
    single = [(f"{d}{i}", d) for d in "AB" for i in range(10)]
    traveling = [(f"t{i}", d) for i in range(4) for d in "AB"]
    table = pd.DataFrame(single + traveling, columns=["subject", "domain"])
    for seed in range(20):
        split = table.assign(split=data.subject_split(table, 0.1, seed=seed))
        assert (split.groupby("subject")["split"].nunique() == 1).all()
        tested = split[split.split == "test"]
        assert tested.subject.str.startswith("t").sum() == 2 * 2  # two of four (0.1 x 4 rounds to 0), both scans
        assert (tested.groupby("domain").subject.nunique() == 2 + 1).all()  # and round(0.1 x 10) = 1 per scanner
    # three traveling subjects each on another pair of scanners are split together: two of them are tested
    table = pd.DataFrame([(f"{d}{i}", d) for d in "ABC" for i in range(4)]
                         + [("t0", "A"), ("t0", "B"), ("t1", "B"), ("t1", "C"), ("t2", "A"), ("t2", "C")],
                         columns=["subject", "domain"])
    for seed in range(20):
        tested = table[np.array(data.subject_split(table, 0.25, seed=seed)) == "test"]
        assert tested.subject.str.startswith("t").sum() == 2 * 2 and tested.subject.nunique() == 3 + 2


def test_subject_split_gives_every_scanner_training_and_test_volumes_where_only_traveling_subjects_reach_it():
    # D is seen only by two traveling subjects (on A and D): a draw that tests both, or neither, leaves D without
    # training or test volumes; the next draw is taken
    table = pd.DataFrame([(f"{d}{i}", d) for d in "ABC" for i in range(6)]
                         + [(f"t{i}", d) for i in range(4) for d in "AB"] + [(f"u{i}", d) for i in range(2) for d in "AD"],
                         columns=["subject", "domain"])
    for seed in range(50):
        split = table.assign(split=data.subject_split(table, 0.25, seed=seed))
        assert (split.groupby("split").domain.nunique() == 4).all(), seed


def test_counts_table_totals(small_csv, tmp_path):
    manifest = data.slice_dataset(small_csv, tmp_path / "s", image_size=32, per_volume=2, progress=False)
    counts = data.counts_table(manifest).set_index("domain")
    assert counts.loc["total"].sum() == 6 + 6 * 2


def test_the_same_slices_again_leave_the_folder_untouched_and_other_ones_call_replacing(small_csv, tmp_path):
    from nbutils import config, methods, outputs

    run = config.setup("smoke", str(tmp_path / "run"))
    out = run.slices
    files = lambda: {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.iterdir()}
    calls = []
    data.slice_dataset(small_csv, out, image_size=32, per_volume=2, progress=False, replacing=lambda: calls.append(0))
    assert calls == [0]  # a first slicing calls it too (Run.set_aside then finds nothing made)
    before = files()
    data.slice_dataset(small_csv, out, image_size=32, per_volume=2, progress=False, replacing=lambda: calls.append(1))
    assert calls == [0] and files() == before  # not rewritten: the same files, with their times
    stamp = outputs.inputs_stamp(run, methods.HISTOGRAM)
    (out / ".DS_Store").write_text("")  # hidden files are not slices
    # the volumes and the CSV moved: the arrays stay, the manifest and info.json get the new paths
    moved = tmp_path / "moved"
    moved.mkdir()
    for f in [small_csv, *tmp_path.glob("*.nii")]:
        shutil.copy(f, moved / f.name)
    data.slice_dataset(moved / small_csv.name, out, image_size=32, per_volume=2, progress=False,
                       replacing=lambda: calls.append(2))
    assert calls == [0]
    assert {n: v for n, v in files().items() if n.endswith(".npy")} == {n: v for n, v in before.items() if n.endswith(".npy")}
    assert set(pd.read_csv(out / "manifest.csv")["source"].map(lambda p: Path(p).parent)) == {moved.resolve()}
    assert json.loads((out / "info.json").read_text())["source_csv"] == str((moved / small_csv.name).resolve())
    assert outputs.inputs_stamp(run, methods.HISTOGRAM) == stamp  # the caches stay valid
    # the same arrays under another scanner name: other slices (the manifest's domains differ)
    renamed = tmp_path / "renamed.csv"
    renamed.write_text(small_csv.read_text().replace(",siteB,", ",siteC,"))
    data.slice_dataset(renamed, tmp_path / "renamed", image_size=32, per_volume=2, progress=False)
    assert all(filecmp.cmp(tmp_path / "renamed" / p.name, p, shallow=False) for p in data.array_files(out))
    assert data.compare_slices(tmp_path / "renamed", out) == "other"
    # other settings: replacing is called while the old slices are still in place, then they are replaced
    old = (out / "manifest.csv").read_text()
    seen = lambda: calls.append((out / "manifest.csv").read_text())
    manifest = data.slice_dataset(small_csv, out, image_size=32, per_volume=1, progress=False, replacing=seen)
    assert calls == [0, old]
    assert len(manifest) == 6 and (out / "manifest.csv").read_text() != old
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
