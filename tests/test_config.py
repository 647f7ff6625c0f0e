import json
import subprocess
import sys

import pytest

from nbutils import config


def test_profile_comes_from_parameter_then_environment_then_quick(monkeypatch):
    monkeypatch.delenv("NB_PROFILE", raising=False)
    assert config.get_profile("").name == "quick"
    monkeypatch.setenv("NB_PROFILE", "smoke")
    assert config.get_profile("").name == "smoke"
    assert config.get_profile("paper").name == "paper"
    with pytest.raises(ValueError, match="unknown profile 'fast'"):
        config.get_profile("fast")


def test_profiles_budgets_are_ordered():
    s, q, p = (config.PROFILES[n] for n in ("smoke", "quick", "paper"))
    assert s.image_size < q.image_size == p.image_size == 182  # quick works at 1 mm too, on crops
    assert 0 < s.crop < s.image_size and 0 < q.crop < q.image_size and p.crop == 0
    assert q.view == q.crop and p.view == 0
    assert s.sim_train_subjects < q.sim_train_subjects < p.sim_train_subjects


def test_setup_resolves_run_folder_from_the_repository_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    run = config.setup("smoke", "data/runs/test-setup", seed=3)
    assert run.dir == (config.ROOT / "data/runs/test-setup").resolve()
    assert run.figures == run.dir / "figures" and run.figures.is_dir()
    run.dir.joinpath("figures").rmdir()
    run.dir.rmdir()


def test_record_merges_keys_and_require_names_the_notebook(tmp_path):
    run = config.setup("smoke", str(tmp_path), seed=0)
    run.record("01_data", {"a": 1})
    run.record("02_gmvae", {"acc": 0.5, "nan": float("nan")})
    saved = json.loads(run.metrics_file.read_text())
    assert saved == {"01_data": {"a": 1}, "02_gmvae": {"acc": 0.5, "nan": None}}
    with pytest.raises(FileNotFoundError, match="run notebook 01"):
        run.require(tmp_path / "slices", "01")


def test_records_of_processes_writing_at_once_are_all_kept(tmp_path):
    # the pipeline's two lanes run side by side and both record into one metrics.json:
    # each record reads, changes and writes the whole file, so without the lock one would drop the other's
    script = ("import os, sys, time; from nbutils import config\n"
              "run = config.setup('smoke', sys.argv[1])\n"
              "open(os.path.join(sys.argv[1], 'ready-' + sys.argv[2]), 'w').close()\n"
              "while len([f for f in os.listdir(sys.argv[1]) if f.startswith('ready-')]) < 2: time.sleep(0.001)\n"
              "for i in range(150): run.record(f'{sys.argv[2]}_{i}', {'i': i})\n")
    env = {"PYTHONPATH": str(config.ROOT), "PATH": "/usr/bin:/bin"}
    writers = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), name], env=env) for name in "ab"]
    assert [w.wait(timeout=300) for w in writers] == [0, 0]
    metrics = config.read_metrics(tmp_path)
    assert sorted(metrics) == sorted(f"{name}_{i}" for name in "ab" for i in range(150))
    assert all(metrics[f"b_{i}"] == {"i": i} for i in range(150))


def test_figures_say_simulated_only_for_a_simulated_set(tmp_path, monkeypatch):
    """Figures of a run on the project's simulated set carry the simulated label; a run on
    someone's own volumes carries its CSV's name instead (never 'simulated')."""
    import json

    from nbutils import plots

    monkeypatch.setattr(plots, "SIMULATED", plots.BUILT_IN)
    sim, own = tmp_path / "sim", tmp_path / "own"
    for folder in (sim, own):
        folder.mkdir()
        (folder / "volumes.csv").write_text("path,domain\n")
    (sim / "README.txt").write_text(plots.SIMULATION_MARK + " from nilearn's template.\n")
    (own / "README.txt").write_text("our scanners\n")
    assert plots.describe_data(sim / "volumes.csv") == plots.BUILT_IN
    second = tmp_path / "second"
    second.mkdir()
    (second / "README.txt").write_text(plots.SIMULATION_MARK + " from nilearn's template.\n"
                                       "Scanners: alt-X, alt-Y (simulations, not real devices).\nNot the built-in scanners.\n")
    label = plots.describe_data(second / "volumes.csv")
    assert "simulated" in label and "alt-X, alt-Y" in label and "built-in" not in label
    label = plots.describe_data(own / "volumes.csv")
    assert "volumes.csv" in label and "simulated scanners" not in label
    # config.setup reads the run's slices/info.json and sets the label for the whole kernel
    run_dir = tmp_path / "run"
    (run_dir / "slices").mkdir(parents=True)
    (run_dir / "slices" / "info.json").write_text(json.dumps({"source_csv": str(sim / "volumes.csv")}))
    config.setup("smoke", str(run_dir))
    assert plots.SIMULATED == plots.BUILT_IN


def test_set_aside_moves_the_slices_and_what_was_made_from_them_and_nothing_else(tmp_path, monkeypatch):
    run = config.setup("smoke", str(tmp_path / "run"), seed=0)
    write = lambda files: [((run.dir / n).parent.mkdir(parents=True, exist_ok=True), (run.dir / n).write_text(t))
                           for n, t in files.items()]
    write({"slices/manifest.csv": "old slices"})
    run.record("environment", {"python": "3.11"})
    assert run.set_aside() is None and (run.slices / "manifest.csv").exists()  # nothing made from them yet
    fresh = config.setup("smoke", str(tmp_path / "fresh"), seed=0)
    (fresh.dir / "outputs").mkdir()  # a folder of the user's in a run folder that has no slices yet
    assert fresh.set_aside() is None and (fresh.dir / "outputs").is_dir()
    made = {"slices/manifest.csv": "old slices", "checkpoints/gmvae.pt": "w", "outputs/test_dritpp.npz": "o",
            "seeds/seed1/x": "s", "harmonized/scanner-free/a.nii.gz": "h"}
    kept = {"notebooks/01_data_slicing.ipynb": "n", "figures/01_histograms.png": "f", ".metrics.json.lock": "",
            "volumes.csv": "the user's own", "raw/a.nii": "the user's own"}
    write(made | kept)
    run.record("02_gmvae", {"acc": 0.9})
    monkeypatch.setattr(config.time, "gmtime", lambda: config.time.struct_time((2026, 1, 2, 3, 4, 5, 0, 1, 0)))
    to = run.set_aside()
    assert to == run.dir / config.SUPERSEDED / "20260102-030405"
    for name, text in made.items():
        assert not (run.dir / name).exists() and (to / name).read_text() == text
    for name, text in kept.items():
        assert (run.dir / name).read_text() == text
    assert sorted(p.name for p in to.iterdir()) == ["checkpoints", "harmonized", "metrics.json", "outputs", "seeds",
                                                    "slices"]
    assert json.loads((to / "metrics.json").read_text()) == {"environment": {"python": "3.11"}, "02_gmvae": {"acc": 0.9}}
    assert json.loads(run.metrics_file.read_text()) == {"environment": {"python": "3.11"}}  # the machine's record stays
    run.record("01_data", {"a": 1})  # a second set-aside in the same second gets a folder of its own
    again = run.set_aside()
    assert again == to.with_name(to.name + "-2") and json.loads((again / "metrics.json").read_text())["01_data"] == {"a": 1}
    assert json.loads((to / "metrics.json").read_text())["02_gmvae"] == {"acc": 0.9}
