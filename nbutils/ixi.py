"""Build the data CSV for the IXI T1 data set (file names like ``IXI002-Guys-0828-T1.nii.gz``).

The site in the file name (Guys, HH, IOP) is the domain. The thesis used IXI volumes
registered to MNI 1 mm; register yours before slicing (see the README).
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from .data import subject_split
from .io import atomic_path
from .volumes import DataError

IXI_T1 = re.compile(r"^(IXI\d{3})-(Guys|HH|IOP)-\d{4}-T1\.nii(\.gz)?$")


def ixi_csv(folder: str | Path, out_csv: str | Path, test_fraction: float = 0.2,
            seed: int = 0) -> pd.DataFrame:
    """Write ``path,domain,subject,split`` for every IXI T1 file in ``folder``.

    Splits are subject-level (no subject in two splits), stratified by site; paths
    are written relative to the CSV's folder when they lie below it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder; give the folder holding the IXI T1 files.")
    rows = []
    for path in sorted(folder.rglob("IXI*-T1.nii*")):
        match = IXI_T1.match(path.name)
        if match:
            rows.append(dict(path=path.resolve(), domain=match.group(2), subject=match.group(1)))
    if not rows:
        raise DataError(f"{folder}: the folder holds no IXI T1 files (names like "
                        "IXI002-Guys-0828-T1.nii.gz); check the folder, or write the CSV by hand "
                        "(columns path,domain[,subject][,split]).")
    table = pd.DataFrame(rows)
    table["split"] = subject_split(table, test_fraction, seed)
    out_csv = Path(out_csv)
    base = out_csv.resolve().parent

    def rel(p: Path) -> str:
        return str(p.relative_to(base)) if p.is_relative_to(base) else str(p)

    table["path"] = table["path"].map(rel)
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    return table
