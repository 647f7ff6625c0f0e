import pandas as pd
import pytest

from nbutils.ixi import ixi_csv
from nbutils.volumes import DataError


def test_ixi_csv_reads_sites_and_splits_by_subject(tmp_path):
    folder = tmp_path / "IXI-T1"
    folder.mkdir()
    names = [f"IXI{i:03d}-{site}-{1000 + i}-T1.nii.gz"
             for i, site in enumerate(["Guys"] * 10 + ["HH"] * 6 + ["IOP"] * 4)]
    for n in names + ["IXI999-Guys-0001-T2.nii.gz", "notes.txt"]:
        (folder / n).write_bytes(b"")
    table = ixi_csv(folder, tmp_path / "ixi.csv", test_fraction=0.25, seed=0)
    assert len(table) == 20
    assert table.domain.value_counts().to_dict() == {"Guys": 10, "HH": 6, "IOP": 4}
    assert set(table.split) == {"train", "test"}
    assert table.groupby("domain").apply(lambda g: (g.split == "test").sum()).to_dict() == \
        {"Guys": 2, "HH": 2, "IOP": 1}  # round(0.25 x n), at least one per site
    written = pd.read_csv(tmp_path / "ixi.csv")
    assert written.path.iloc[0].startswith("IXI-T1/")  # relative to the CSV
    assert list(written.columns) == ["path", "domain", "subject", "split"]


def test_ixi_csv_refuses_an_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no IXI T1 files"):
        ixi_csv(tmp_path / "empty", tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists()
