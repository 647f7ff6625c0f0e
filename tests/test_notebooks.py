"""Notebook 01 on a real-data CSV (no clean truth), run headless by the pipeline as `make run DATA=…` runs it.

nbmake runs every notebook on the built-in data; this covers the other path: slicing a user's CSV,
the same CSV again, and a CSV of more volumes."""
import json

import pandas as pd
import pytest

from nbutils import pipeline
from nbutils.config import NOTEBOOKS


def test_notebook_01_slices_a_user_csv_and_sets_the_run_aside_only_when_the_slices_change(
        tmp_path, capsys, small_csv, write_volume):
    assert [p.name[:2] for p in pipeline.notebooks(["01"])] == ["01"]
    run_dir = tmp_path  # the user's CSV and volumes lie in the run folder (small_csv): set_aside must leave them
    slice_csv = lambda: pipeline.main(["--profile", "smoke", "--run-dir", str(run_dir), "--only", "01",
                                       "--data", str(small_csv)])
    assert slice_csv() == 0
    out = capsys.readouterr().out
    assert (run_dir / "notebooks" / "01_data_slicing.ipynb").exists()
    assert not list(NOTEBOOKS.glob("*.out.ipynb"))
    recorded = json.loads((run_dir / "metrics.json").read_text())["01_data"]
    assert sum(recorded.values()) == 6 * 2  # smoke keeps 2 slices per volume, 6 volumes
    assert set(recorded) == {f"slices_{s}_{d}" for s in ("train", "test") for d in ("siteA", "siteB")}
    summary = [line.split() for line in out.splitlines() if line.startswith("01_data ")]
    assert {row[1]: float(row[2]) for row in summary} == pytest.approx(recorded, rel=1e-3)
    assert (run_dir / "slices" / "train.npy").exists() and not (run_dir / "slices" / "test_clean.npy").exists()
    assert (run_dir / "figures" / "01_histograms.png").exists()

    # the same volumes again: the slices stay as they were, nothing is set aside
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "gmvae.pt").write_text("trained on the old slices")
    files = lambda: {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (run_dir / "slices").iterdir()}
    before = files()
    assert slice_csv() == 0
    assert files() == before and (run_dir / "checkpoints" / "gmvae.pt").exists()
    assert not (run_dir / "superseded").exists()
    assert not [line for line in capsys.readouterr().out.splitlines() if "other slices than the run's" in line]

    # the CSV lists more volumes: what the run made from the old slices is set aside, not loaded later;
    # the pipeline says so, the record of the machine stays in metrics.json (this call's) and goes with
    # what was set aside (the call's that made it), and the user's CSV and volumes stay where they are
    with open(small_csv, "a") as f:
        for d in ("siteA", "siteB"):
            write_volume(f"{d}_3.nii", seed=3)
            f.write(f"{d}_3.nii,{d},{d}-3\n")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    old_machine = metrics["environment"] | {"python": "the old run's"}
    (run_dir / "metrics.json").write_text(json.dumps(metrics | {"environment": old_machine}))
    assert slice_csv() == 0
    assert sum(json.loads((run_dir / "metrics.json").read_text())["01_data"].values()) == 8 * 2
    assert not (run_dir / "checkpoints").exists()
    (moved,) = (run_dir / "superseded").iterdir()
    said = [line for line in capsys.readouterr().out.splitlines() if "other slices than the run's" in line]
    assert len(said) == 1 and str(moved) in said[0]
    assert (moved / "checkpoints" / "gmvae.pt").read_text() == "trained on the old slices"
    assert len(pd.read_csv(moved / "slices" / "manifest.csv")) == 6 * 2
    assert json.loads((moved / "metrics.json").read_text())["01_data"] == recorded
    assert json.loads((moved / "metrics.json").read_text())["environment"] == old_machine
    assert {"environment", "01_data"} <= set(json.loads((run_dir / "metrics.json").read_text()))
    assert json.loads((run_dir / "metrics.json").read_text())["environment"] == pipeline.environment()
    assert small_csv.exists() and (run_dir / "siteA_0.nii").exists() and (run_dir / "siteB_3.nii").exists()
