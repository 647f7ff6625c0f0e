"""Notebook 01 on a real-data CSV (no clean truth), run headless as papermill would.

nbmake runs every notebook on the built-in data; this covers the other path."""
import json

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
    # the CSV lists more volumes: what the run made from the old slices is set aside, not loaded later
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "gmvae.pt").write_text("trained on the old slices")
    with open(small_csv, "a") as f:
        for d in ("siteA", "siteB"):
            write_volume(f"{d}_3.nii", seed=3)
            f.write(f"{d}_3.nii,{d},{d}-3\n")
    execute()
    assert sum(json.loads((run_dir / "metrics.json").read_text())["01_data"].values()) == 8 * 2
    assert not (run_dir / "checkpoints").exists()
    (moved,) = (run_dir / "superseded").iterdir()
    assert (moved / "checkpoints" / "gmvae.pt").read_text() == "trained on the old slices"
    assert sum(json.loads((moved / "metrics.json").read_text())["01_data"].values()) == 6 * 2


def test_pipeline_runs_notebooks_into_the_run_folder_and_summarises(tmp_path, capsys):
    from nbutils import pipeline

    assert [p.name[:2] for p in pipeline.notebooks(["01"])] == ["01"]
    pipeline.main(["--profile", "smoke", "--run-dir", str(tmp_path), "--only", "01"])
    out = capsys.readouterr().out
    assert (tmp_path / "notebooks" / "01_data_slicing.ipynb").exists()
    assert not list(NOTEBOOKS.glob("*.out.ipynb"))
    summary = [line.split() for line in out.splitlines() if line.startswith("01_data ")]
    recorded = json.loads((tmp_path / "metrics.json").read_text())["01_data"]
    assert {row[1]: float(row[2]) for row in summary} == pytest.approx(recorded, rel=1e-3)
