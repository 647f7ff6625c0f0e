"""Notebook 01 on a real-data CSV (no clean truth), run headless as papermill would.

nbmake runs every notebook on the built-in data; this covers the other path."""
import json

import pandas as pd
import papermill as pm
import pytest

from nbutils.config import NOTEBOOKS


def test_notebook_01_slices_a_user_csv(small_csv, tmp_path, write_volume):
    run_dir = tmp_path / "run"
    execute = lambda: pm.execute_notebook(
        str(NOTEBOOKS / "01_data_slicing.ipynb"), str(tmp_path / "01.ipynb"),
        parameters=dict(profile="smoke", run_dir=str(run_dir), data_csv=str(small_csv)),
        cwd=str(tmp_path), progress_bar=False, kernel_name="python3")
    execute()
    metrics = json.loads((run_dir / "metrics.json").read_text())["01_data"]
    assert sum(metrics.values()) == 6 * 2  # smoke keeps 2 slices per volume, 6 volumes
    assert set(metrics) == {f"slices_{s}_{d}" for s in ("train", "test") for d in ("siteA", "siteB")}
    assert (run_dir / "slices" / "train.npy").exists() and not (run_dir / "slices" / "test_clean.npy").exists()
    assert (run_dir / "figures" / "01_histograms.png").exists()
    # the same volumes again: the slices stay as they were, nothing is set aside
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "gmvae.pt").write_text("trained on the old slices")
    files = lambda: {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (run_dir / "slices").iterdir()}
    before = files()
    execute()
    assert files() == before and (run_dir / "checkpoints" / "gmvae.pt").exists()
    assert not (run_dir / "superseded").exists()
    # the CSV lists more volumes: what the run made from the old slices is set aside, not loaded later
    with open(small_csv, "a") as f:
        for d in ("siteA", "siteB"):
            write_volume(f"{d}_3.nii", seed=3)
            f.write(f"{d}_3.nii,{d},{d}-3\n")
    execute()
    assert sum(json.loads((run_dir / "metrics.json").read_text())["01_data"].values()) == 8 * 2
    assert not (run_dir / "checkpoints").exists()
    (moved,) = (run_dir / "superseded").iterdir()
    assert (moved / "checkpoints" / "gmvae.pt").read_text() == "trained on the old slices"
    assert len(pd.read_csv(moved / "slices" / "manifest.csv")) == 6 * 2
    assert sum(json.loads((moved / "metrics.json").read_text())["01_data"].values()) == 6 * 2


def test_pipeline_runs_notebooks_into_the_run_folder_and_summarises(tmp_path, capsys, small_csv):
    from nbutils import pipeline

    assert [p.name[:2] for p in pipeline.notebooks(["01"])] == ["01"]
    pipeline.main(["--profile", "smoke", "--run-dir", str(tmp_path), "--only", "01"])
    out = capsys.readouterr().out
    assert (tmp_path / "notebooks" / "01_data_slicing.ipynb").exists()
    assert not list(NOTEBOOKS.glob("*.out.ipynb"))
    summary = [line.split() for line in out.splitlines() if line.startswith("01_data ")]
    recorded = json.loads((tmp_path / "metrics.json").read_text())["01_data"]
    assert {row[1]: float(row[2]) for row in summary} == pytest.approx(recorded, rel=1e-3)
    # other volumes into the same folder: the pipeline says that the old run was set aside, the
    # record of the machine stays in metrics.json (this call's) and goes with what was set aside (the
    # call's that made it), and the user's CSV and volumes (here in the run folder) stay where they are
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "gmvae.pt").write_text("trained on the old slices")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    old_machine = metrics["environment"] | {"python": "the old run's"}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics | {"environment": old_machine}))
    pipeline.main(["--profile", "smoke", "--run-dir", str(tmp_path), "--only", "01", "--data", str(small_csv)])
    (moved,) = (tmp_path / "superseded").iterdir()
    assert (moved / "checkpoints" / "gmvae.pt").exists() and not (tmp_path / "checkpoints").exists()
    said = [line for line in capsys.readouterr().out.splitlines() if "other slices than the run's" in line]
    assert len(said) == 1 and str(moved) in said[0]
    assert {"environment", "01_data"} <= set(json.loads((tmp_path / "metrics.json").read_text()))
    assert json.loads((moved / "metrics.json").read_text())["01_data"] == recorded
    assert json.loads((moved / "metrics.json").read_text())["environment"] == old_machine
    assert json.loads((tmp_path / "metrics.json").read_text())["environment"] == pipeline.environment()
    assert small_csv.exists() and (tmp_path / "siteA_0.nii").exists()
