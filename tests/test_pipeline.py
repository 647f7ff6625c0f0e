"""`make run DATA=your.csv`: the whole pipeline, notebooks 01-11, on a CSV of synthetic NIfTI volumes
of two sites (smoke profile), and what it leaves: a run folder with its own figures, a
``metrics.json`` the results table reads completely, and caches that follow their inputs."""
import json
import os
import shutil
import signal
from datetime import datetime
from fractions import Fraction
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import site_csv

from nbutils import (classifier, config, data, drit, measures, methods, outputs, pipeline, plots, report, seeds,
                     stage2, usage)
from nbutils.harmonize import Harmonizer

NOTEBOOKS = sorted(p.name for p in config.NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def listing(folder):
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} if folder.is_dir() else {}


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
    """One pipeline run on a traveling-subject CSV (the test subjects were scanned at both sites)."""
    folder = tmp_path_factory.mktemp("my-data")
    csv = site_csv(folder / "volumes")
    before = listing(config.FIGURES)
    assert pipeline.main(["--profile", "smoke", "--data", str(csv), "--run-dir", str(folder / "run")]) == 0
    return folder / "run", before


def test_one_command_runs_every_notebook_on_your_csv_into_its_run_folder(csv_run):
    run_dir, figures_before = csv_run
    assert sorted(p.name for p in (run_dir / "notebooks").glob("*.ipynb")) == NOTEBOOKS
    info = json.loads((run_dir / "slices" / "info.json").read_text())
    assert info["domains"] == ["siteA", "siteB"] and info["source_csv"].endswith("my-site.csv")
    assert {m.checkpoint() for m in methods.MODELS} | {"gmvae.pt"} <= {p.name for p in (run_dir / "checkpoints").iterdir()}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"01_data", "02_gmvae", "03_gmmdrit", "04_dritpp", "05_ssim", "06_fid_kid", "08_intensities",
            "09_beyond"} <= set(metrics)
    # notebooks 05-09 say which models they scored: those 03/04 trained
    assert report.stale_sections(metrics) == [] and set(metrics["05_ssim"]["models"]) == {m.name for m in methods.MODELS}
    # what besides the code made the numbers: the installed packages, the Python, the cores
    from importlib.metadata import version
    assert metrics["environment"]["numpy"] == version("numpy") and metrics["environment"]["cores"] >= 1
    # the run's figures stay in the run; the repository's figures/ (the default run's) is untouched
    figures = {p.name for p in (run_dir / "figures").iterdir()}
    assert {"01_histograms.png", "03_gmmdrit_translations.png", "07_e6_dritpp_anatomy0.png",
            "09_table_yardstick.csv", "09_residual_confusion.png"} <= figures
    named = pd.read_csv(run_dir / "figures" / "09_table_residual_confusion.csv").set_index(["method", "source"])
    np.testing.assert_allclose(named.sum(axis=1), 1, atol=1e-6)  # each source's answers (saved unrounded)
    assert listing(config.FIGURES) == figures_before


@pytest.fixture(scope="module")
def lone_run(tmp_path_factory):
    """One pipeline run on a CSV without traveling subjects (each test subject scanned at one site), as
    IXI-like real data are."""
    folder = tmp_path_factory.mktemp("lone-data")
    csv = site_csv(folder / "volumes", traveling=False)
    assert pipeline.main(["--profile", "smoke", "--data", str(csv), "--run-dir", str(folder / "run")]) == 0
    return folder / "run"


def test_a_csv_without_traveling_subjects_runs_every_notebook_and_leaves_out_only_what_needs_them(lone_run):
    assert sorted(p.name for p in (lone_run / "notebooks").glob("*.ipynb")) == NOTEBOOKS
    metrics = json.loads((lone_run / "metrics.json").read_text())

    def printed(notebook):  # what an executed notebook printed
        cells = nbformat.read(lone_run / "notebooks" / f"{notebook}.ipynb", as_version=4).cells
        return "".join(o.get("text", "") for c in cells if c.cell_type == "code" for o in c.outputs)

    for m in methods.MODELS:
        section = metrics[m.section]
        # the scores against a target scan, the learning curve, the scanner-free yardstick and the sensitivity need
        # one anatomy on two scanners
        assert not [k for k in section if k.startswith(("d2d_", "curve_", "sf_"))], m.name
        assert section["target_sensitivity"] is None and np.isfinite(section["target_change"])
        # the probes and the discriminators' accuracies do not, nor the probe's bar
        assert all(np.isfinite(section[k]) for k in ("probe_zc", "probe_za", "dc_accuracy", "ds1_accuracy",
                                                      "ds2_accuracy")), m.name
        assert section["probe_bar"] == pytest.approx(section["chance"] + (1 - section["chance"]) / 5)
        assert "no traveling subjects" in printed(m.notebook), m.notebook
    assert "no traveling subjects" in printed("09_beyond_the_thesis")
    beyond = metrics["09_beyond"]
    assert not [k for k in beyond if k.startswith(("sf ", "field nearer"))]
    # the thesis's evaluations and the residual scanner need none: every model scored
    for measure in (measures.E2, measures.E3, measures.E5_FID, measures.E7, measures.RESIDUAL_FROZEN_DRAWS):
        assert all(np.isfinite(measure.read(metrics, m.name)) for m in methods.MODELS), measure.label
    # the bars table keeps every bar the run could measure and leaves out the rest
    bars = report.bars_table(metrics).bar.tolist()
    assert [b.split(" ")[0] for b in bars] == ["scanner", "structure", "frozen"], bars
    assert list((lone_run / "harmonized").rglob("*.nii.gz"))


def test_the_lanes_ran_side_by_side_where_the_cores_allow(csv_run):
    run_dir = csv_run[0]
    times = {}
    for nb in (run_dir / "notebooks").glob("*.ipynb"):
        meta = json.loads(nb.read_text())["metadata"]["papermill"]
        times[nb.name[:2]] = (meta["start_time"], meta["end_time"])  # ISO 8601: ordered as strings
    overlap = lambda a, b: times[a][0] < times[b][1] and times[b][0] < times[a][1]
    lanes = pipeline.core_shares(2) is not None
    assert overlap("02", "04") == lanes and overlap("05", "09") == lanes
    assert times["02"][1] < times["03"][0]  # the GM-VAE before GMM-DRIT
    assert max(times["03"][1], times["04"][1]) < min(times["05"][0], times["09"][0])  # the models came first
    # the references 06 and 09 load were trained beside 04, before either started, only in lanes
    started = lambda nb: datetime.fromisoformat(times[nb][0]).timestamp()
    classifier = (run_dir / "checkpoints" / "scanner-classifier.pt").stat().st_mtime
    assert (run_dir / "notebooks" / "references.log").exists() == lanes
    assert (classifier < started("06")) == lanes
    # the training split's outputs 09 retrains classifiers on were made beside 09, before 05, only in lanes
    made = max(p.stat().st_mtime for p in (run_dir / "outputs").glob("train_*.npz"))
    assert (run_dir / "notebooks" / "training-outputs.log").exists() == lanes
    assert (made < started("05")) == lanes


def test_results_table_reads_every_headline_number_a_run_records(csv_run, tmp_path):
    metrics = json.loads((csv_run[0] / "metrics.json").read_text())
    table = report.results_table(metrics).set_index("measure")
    # a CSV without clean truth has no rows that need it; every other measure is there
    truth = (measures.TRUTH_SSIM, measures.TRUTH_PSNR, measures.TRUTH_PSNR_FIELD, measures.FIELD_NEARER, measures.DARK)
    assert list(table.index) == [m.label for m in measures.TABLE if m not in truth]
    for m in measures.TABLE:
        if m.label not in table.index:
            continue
        values = table.loc[m.label, [c.name for c in methods.COMPARED]]
        missing = [c for c, v in values.items() if v is None or np.isnan(v)]
        assert missing == ([methods.IDENTITY.name] if m is measures.E4 else []), (m.label, missing)
        if m.reference and m.reference != measures.RESCAN_CEILING:  # no rescan column in this CSV
            assert np.isfinite(table.loc[m.label, "reference"]), m.label
    # every number the evaluation notebooks record is read by the table, or is a known extra
    read = {m.key(c) for m in measures.TABLE for c in (*report.COLUMNS, m.reference)}
    extras = {"pairs", "feature_net_accuracy", "models", *(m.key(measures.OWN_SCANS) for m in (measures.E5_FID, measures.E5_KID)),
              *(measures.E4.key(f"{c} control of {m.name}") for m in methods.MODELS for c in ("blur", "contrast"))}
    recorded = {k for s in {m.section for m in measures.TABLE} for k in metrics[s]}
    assert recorded - read - extras == set()
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.START}\nold\n{report.END}\nafter\n")
    report.write_readme(metrics, "data/runs/my-site", readme)
    text = readme.read_text()
    first = table.loc[measures.E2.label, methods.GMM_DRIT.name]
    assert "\nold\n" not in text and f"| {first:.3f} |" in text and text.endswith(f"{report.END}\nafter\n")
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="block"):
        report.write_readme(metrics, "x", readme)


def test_the_models_test_outputs_notebooks_03_04_cache_are_those_notebook_05_would_make(csv_run):
    """Notebooks 03/04 score their model on the test split and cache those outputs for 05-09; they
    must be what translating the test split with the run's checkpoint gives."""
    run = config.setup("smoke", str(csv_run[0]))
    for method in methods.MODELS:  # written while the model's notebook ran, not by notebook 05
        executed = next((run.dir / "notebooks").glob(f"{method.notebook}*.ipynb"))
        assert (run.dir / "outputs" / f"test_{method.slug}.npz").stat().st_mtime < executed.stat().st_mtime
    train, test, cached = outputs.evaluation_data(run, progress=False)
    images = np.asarray(test.images, np.float32)
    for method in methods.MODELS:
        fresh = outputs._model_outputs(Harmonizer.from_run(run, method), images, range(len(train.domains)),
                                       run.seed, method.name)
        # float16 in the cache: within half a float16 step of values in [0, 1]
        np.testing.assert_allclose(cached[method.name].to_target, fresh.to_target, atol=2.5e-4)
        np.testing.assert_allclose(cached[method.name].scanner_free, fresh.scanner_free, atol=2.5e-4)


def test_a_run_s_models_are_not_loaded_for_another_seed(csv_run, tmp_path):
    """Notebooks 05-11 load the run's stage-2 models through Harmonizer.from_run: run with another
    seed over the folder (without notebook 01), they stop instead of scoring seed 0's models as that
    seed's; a checkpoint named explicitly (notebook 10's parameter) is any model."""
    copy = tmp_path / "run"
    shutil.copytree(csv_run[0], copy)
    run = config.setup("smoke", str(copy), seed=1)
    for method in methods.MODELS:
        with pytest.raises(ValueError, match="trained with seed 0, not 1"):
            Harmonizer.from_run(run, method)
        assert Harmonizer.from_run(run, method, checkpoint=run.checkpoints / method.checkpoint()).model


def test_cached_outputs_are_recomputed_when_their_inputs_change(csv_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(csv_run[0], copy)  # copies keep their modification times
    run = config.setup("smoke", str(copy))
    caches = copy / "outputs"
    stamps = listing(caches)
    _, test, first = outputs.evaluation_data(run, progress=False)
    assert listing(caches) == stamps  # up to date: read, not recomputed

    with open(copy / "slices" / "test.npy", "r+b") as f:  # the slices rebuilt: other images, same shape
        images = np.load(f)
        f.seek(0)
        np.save(f, (1 - images.astype(np.float32)).astype(np.float16))
    _, test, second = outputs.evaluation_data(run, progress=False)
    assert all(listing(caches)[name] > stamps[name] for name in stamps if name.startswith("test_"))  # not train_
    hist = methods.HISTOGRAM.name
    assert not np.allclose(first[hist].scanner_free, second[hist].scanner_free)
    np.testing.assert_array_equal(second[methods.IDENTITY.name].scanner_free, np.asarray(test.images, np.float32))

    stamps = listing(caches)
    checkpoint = copy / "checkpoints" / methods.DRITPP.checkpoint()
    os.utime(checkpoint, ns=(checkpoint.stat().st_atime_ns, checkpoint.stat().st_mtime_ns + 10**9))  # retrained
    outputs.evaluation_data(run, progress=False)
    changed = {name for name, t in listing(caches).items() if t != stamps[name]}
    assert changed == {f"test_{methods.DRITPP.slug}.npz"}


def _without_training_outputs(run_dir, copy):
    """A copy of the run whose training split's outputs (09's, made by the lane task) are not yet made."""
    shutil.copytree(run_dir, copy)
    for cached in (copy / "outputs").glob("train_*.npz"):
        cached.unlink()
    return copy


def test_outputs_another_process_is_making_are_waited_for_and_read_not_made_again(csv_run, tmp_path, monkeypatch):
    """What lets 09 and the training outputs of `make run`'s other lane ask for the same cache: each
    method's outputs are made once, under a lock; whoever asks meanwhile waits and reads them."""
    import threading
    import time

    copy = _without_training_outputs(csv_run[0], tmp_path / "run")
    run = config.setup("smoke", str(copy))
    train = data.for_run(run, "train")
    made = []
    for name in ("_model_outputs", "_histogram_outputs"):
        def slowly(*args, _name=name, _make=getattr(outputs, name), **kwargs):
            made.append(_name)
            time.sleep(0.5)  # the other thread asks meanwhile
            return _make(*args, **kwargs)
        monkeypatch.setattr(outputs, name, slowly)
    got = [None, None]

    def ask(i):
        got[i] = outputs.method_outputs(run, train, "train", train, targets=False, progress=False)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert None not in got  # neither thread raised
    made_by_either = sorted("_model_outputs" if m.is_model else "_histogram_outputs"
                            for m in methods.COMPARED if m != methods.IDENTITY)
    assert sorted(made) == made_by_either  # each once, not twice
    # the maker and the reader get the same (the cache's float16), and so does a later call
    again = outputs.method_outputs(run, train, "train", train, targets=False, progress=False)
    assert sorted(made) == made_by_either
    for name in again:
        for first in got:
            np.testing.assert_array_equal(first[name].scanner_free, again[name].scanner_free)
            assert first[name].scanner_free.dtype == np.float32


def test_the_lane_tasks_make_what_their_notebooks_then_load(csv_run, tmp_path):
    """What `make run`'s other lane does for 06 and 09 (pipeline.prepare), called directly: it runs
    here whatever the cores, where the pipeline runs it only in lanes."""
    copy = _without_training_outputs(csv_run[0], tmp_path / "run")
    retrained = {f"classifier-{m.slug}.pt" for m in methods.COMPARED if m != methods.IDENTITY}
    for name in retrained:
        (copy / "checkpoints" / name).unlink()
    params = dict(profile="smoke", run_dir=str(copy), seed=0)
    seconds, error = pipeline.prepare(pipeline.TRAINING_OUTPUTS, params, tmp_path / "training-outputs.log")
    assert error == "" and "harmonizing the train split" in (tmp_path / "training-outputs.log").read_text()
    run = config.setup("smoke", str(copy))
    stamps, made = listing(copy / "outputs"), listing(copy / "checkpoints")
    assert {f"train_{m.slug}.npz" for m in methods.COMPARED if m != methods.IDENTITY} <= set(stamps)
    assert retrained <= set(made)
    train = data.for_run(run, "train")
    for method, o in outputs.method_outputs(run, train, "train", train, targets=False, progress=False).items():
        classifier.retrained(run, train, method, o)
    assert listing(copy / "outputs") == stamps and listing(copy / "checkpoints") == made  # read, not made again
    seconds, error = pipeline.prepare("nothing", params, tmp_path / "nothing.log")
    assert error.startswith("ValueError: no such task 'nothing'")


def test_a_retrained_classifier_asked_for_twice_at_once_is_trained_once(csv_run, tmp_path, monkeypatch):
    """09 and `make run`'s other lane may ask for the same retrained classifier at once: it is
    trained under a file lock, and whoever asks meanwhile waits and loads it (two threads here: the
    lock is per open file, so it holds between threads as between processes)."""
    import threading
    import time

    copy = tmp_path / "run"
    shutil.copytree(csv_run[0], copy)
    checkpoint = copy / "checkpoints" / f"classifier-{methods.GMM_DRIT.slug}.pt"
    checkpoint.unlink()
    run = config.setup("smoke", str(copy))
    train = data.for_run(run, "train")
    made = outputs.method_outputs(run, train, "train", train, targets=False, progress=False)[methods.GMM_DRIT.name]
    trained = []

    def slowly(*args, _train=classifier.train_classifier, **kwargs):
        trained.append(Path(args[2]).exists())  # False: this call trains it, True: it loads it
        time.sleep(0.5)  # the other thread asks meanwhile
        return _train(*args, **kwargs)

    monkeypatch.setattr(classifier, "train_classifier", slowly)
    got = [None, None]

    def ask(i):
        got[i] = classifier.retrained(run, train, methods.GMM_DRIT.name, made)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert None not in got and sorted(trained) == [False, True]  # trained once, then loaded
    assert all(torch.equal(a, b) for a, b in zip(got[0].state_dict().values(), got[1].state_dict().values()))


def test_cached_outputs_made_by_an_earlier_way_of_making_them_are_made_again(csv_run, tmp_path, monkeypatch):
    """A cache records outputs.MADE_BY: outputs cached before the way they are made changed (e.g. GMM-DRIT's
    target codes) are not read as today's, though the slices and the checkpoint are the same files."""
    copy = tmp_path / "run"
    shutil.copytree(csv_run[0], copy)
    run = config.setup("smoke", str(copy))
    test = data.for_run(run, "test")
    first = outputs.method_outputs(run, test, "test", data.for_run(run, "train"), progress=False)
    cache = outputs._cache_path(run, "test", methods.GMM_DRIT)
    made = cache.stat().st_mtime_ns
    outputs.method_outputs(run, test, "test", data.for_run(run, "train"), progress=False)
    assert cache.stat().st_mtime_ns == made  # the same: read
    monkeypatch.setattr(outputs, "MADE_BY", outputs.MADE_BY + 1)
    again = outputs.method_outputs(run, test, "test", data.for_run(run, "train"), progress=False)
    assert cache.stat().st_mtime_ns != made and again[methods.GMM_DRIT.name].inputs != first[methods.GMM_DRIT.name].inputs


def test_a_retrained_classifier_is_trained_anew_when_the_outputs_it_learnt_from_would_be(csv_run, tmp_path):
    """Notebook 09's classifier retrained on GMM-DRIT's scanner-free training outputs follows what
    those outputs were made from: loaded while it is the same, trained anew once it has changed (as
    when notebook 03 trains again), by the stamp the outputs carry, not by the model on disk."""
    copy = tmp_path / "run"
    shutil.copytree(csv_run[0], copy)
    run = config.setup("smoke", str(copy))
    train = data.for_run(run, "train")
    made = outputs.method_outputs(run, train, "train", train, targets=False, progress=False)[methods.GMM_DRIT.name]
    assert made.inputs == outputs.inputs_stamp(run, methods.GMM_DRIT)
    checkpoint = copy / "checkpoints" / f"classifier-{methods.GMM_DRIT.slug}.pt"
    first = classifier.retrained(run, train, methods.GMM_DRIT.name, made)
    stamp = checkpoint.stat().st_mtime_ns
    model = copy / "checkpoints" / methods.GMM_DRIT.checkpoint()
    os.utime(model, ns=(model.stat().st_atime_ns, model.stat().st_mtime_ns + 10**9))  # "trained again"
    classifier.retrained(run, train, methods.GMM_DRIT.name, made)  # outputs made before: what it learnt from
    assert checkpoint.stat().st_mtime_ns == stamp  # loaded
    noise = np.random.default_rng(0).random(made.scanner_free.shape, np.float32)  # the new model's outputs
    new = outputs.Outputs(noise, made.to_target, outputs.inputs_stamp(run, methods.GMM_DRIT))
    again = classifier.retrained(run, train, methods.GMM_DRIT.name, new)
    assert checkpoint.stat().st_mtime_ns != stamp
    assert (checkpoint.with_name(checkpoint.name + ".inputs")).read_text() == new.inputs != made.inputs
    assert any(not torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    with pytest.raises(ValueError, match="no stamp"):  # outputs that do not say what made them
        classifier.retrained(run, train, methods.GMM_DRIT.name, outputs.Outputs(noise, made.to_target))
    # identity's is the raw slices' classifier
    raw = classifier.for_run(run, train)
    identity = outputs.Outputs(np.asarray(train.images, np.float32), made.to_target)
    assert all(torch.equal(a, b) for a, b in zip(raw.state_dict().values(), classifier.retrained(
        run, train, methods.IDENTITY.name, identity).state_dict().values()))


def test_steps_above_the_checkpoint_s_train_on_from_it_and_below_it_load_it(csv_run, tmp_path):
    """Notebooks 03/04's ``steps``: the run's DRIT++ trained on by 4 iterations keeps its first
    iterations' history exactly, ends at the new count with a snapshot there; fewer steps than the
    checkpoint's load it as it is."""
    copy = tmp_path / "run"
    shutil.copytree(csv_run[0], copy)
    run = config.setup("smoke", str(copy))
    done = run.profile.drit_steps
    before = stage2.Experiment(run, methods.DRITPP)
    before.train()
    longer = stage2.Experiment(run, methods.DRITPP, steps=done + 4)
    assert f"{done + 4} iterations" in str(longer)
    longer.train()
    assert longer.history["step"].max() == done + 4
    pd.testing.assert_frame_equal(longer.history.iloc[:done], before.history)
    snapshots = copy / "checkpoints" / (methods.DRITPP.checkpoint() + ".snapshots")
    assert f"step_{done + 4:07d}.pt" in {p.name for p in snapshots.iterdir()}
    shorter = stage2.Experiment(run, methods.DRITPP, steps=2)
    shorter.train()
    assert shorter.history["step"].max() == done + 4


def test_gmm_drit_is_trained_with_known_labels_beside_only_when_stage_1_misses_the_scanners(csv_run, tmp_path):
    """Notebook 03, section 5: below the E1 bar GMM-DRIT is trained again with the labels as codes,
    scored and diagnosed in its own section, and shown beside the inferred-code model; at or above
    it, and for DRIT++, nothing is trained."""
    copy = tmp_path / "run"
    shutil.copytree(csv_run[0], copy)
    run = config.setup("smoke", str(copy))
    acc = config.read_metrics(copy)["02_gmvae"]["ACC"]
    ablation = copy / "checkpoints" / methods.GMM_DRIT.checkpoint(known_labels=True)
    exp = stage2.Experiment(run, methods.GMM_DRIT)
    if ablation.exists():  # the run's own notebook 03 trained it (its E1 under the bar): start without
        ablation.unlink()
        run.record(exp.key + "_known_labels", {})
    for below in (acc, 0.0):  # E1 at or above the bar
        assert "finds the scanners" in exp.beside_known_labels(below=below) and not ablation.exists()
    assert "only GMM-DRIT" in stage2.Experiment(run, methods.DRITPP).beside_known_labels(below=1.01)
    table = exp.beside_known_labels(below=acc + 0.01).set_index("measure")
    assert ablation.exists()
    metrics = config.read_metrics(copy)
    inferred, known = metrics[exp.key], metrics[exp.key + "_known_labels"]
    assert known["checkpoint"].startswith(ablation.name) and inferred["checkpoint"].startswith(methods.GMM_DRIT.checkpoint())
    kept = {k: label for k, label in stage2.BESIDE.items() if "clean_truth" not in k}  # this CSV has no clean truth
    assert list(table.index) == list(kept.values())
    for key, label in kept.items():
        assert table.loc[label].tolist() == [np.round(inferred[key], 4), np.round(known[key], 4)]
    assert list(table.columns) == [f"GMM-DRIT (inferred codes, E1 ACC {acc:.3f})", "GMM-DRIT (known labels)"]
    assert {"probe_zc", "share_zc_at_probe_bar", "source_map_scanner_free"} <= set(known)
    # the probe's controls read the test slices without the model: the same for both (their meaning: test_usage)
    assert all(isinstance(known[k], float) and known[k] == inferred[k] for k in ("probe_inputs", "probe_inputs_detail"))
    assert drit.from_checkpoint(ablation).cfg.known_labels
    assert (run.figures / f"{exp.key}_beside_known_labels.csv").exists()
    assert (run.figures / f"{exp.key}_known_labels_translations.png").exists()


def test_the_known_labels_lane_task_trains_the_ablation_notebook_03_would_train_and_03_then_loads_it(csv_run, tmp_path):
    """`make run`'s other lane trains the ablation (pipeline.prepare, called directly: it runs here whatever
    the cores) with the weights 03 would train, and only below the E1 bar; 03 then loads it and scores it."""
    runs = {}
    for way in ("notebook", "lane"):
        copy = runs[way] = tmp_path / way
        shutil.copytree(csv_run[0], copy)
        (copy / "checkpoints" / methods.GMM_DRIT.checkpoint(known_labels=True)).unlink(missing_ok=True)
    acc = config.read_metrics(runs["lane"])["02_gmvae"]["ACC"]
    ablation = runs["lane"] / "checkpoints" / methods.GMM_DRIT.checkpoint(known_labels=True)
    params = dict(profile="smoke", run_dir=str(runs["lane"]), seed=0, options="")
    log = tmp_path / "known-labels.log"
    assert pipeline.prepare(pipeline.KNOWN_LABELS, params | {"known_labels_below": acc}, log)[1] == ""
    assert "finds the scanners" in log.read_text() and not ablation.exists()
    assert pipeline.prepare(pipeline.KNOWN_LABELS, params | {"known_labels_below": acc + 0.01}, log)[1] == ""
    assert "GMM-DRIT (known labels)" in log.read_text() and ablation.exists()
    made = ablation.stat().st_mtime_ns
    run = config.setup("smoke", str(runs["notebook"]))
    in_notebook = stage2.Experiment(run, methods.GMM_DRIT).known_labels_ablation(below=acc + 0.01)
    lane = drit.from_checkpoint(ablation).state_dict()
    assert lane.keys() == in_notebook.model.state_dict().keys()
    assert all(torch.equal(v, lane[k]) for k, v in in_notebook.model.state_dict().items())
    table = stage2.Experiment(config.setup("smoke", str(runs["lane"])), methods.GMM_DRIT).beside_known_labels(
        below=acc + 0.01)
    assert ablation.stat().st_mtime_ns == made and len(table) > 3  # loaded, then scored
    assert config.read_metrics(runs["lane"])["03_gmmdrit_known_labels"]["checkpoint"].startswith(ablation.name)


def test_a_seed_trains_stage_2_anew_over_the_run_s_slices_and_gm_vae_and_the_run_s_own_seed_gives_its_numbers(csv_run, tmp_path, monkeypatch):
    """`make seeds`: seed 1 trains notebooks 03, 04 and 09 in a folder of its own that reads the run's
    slices, GM-VAE and frozen classifier and leaves the run as it was; the run's own seed trained
    there gives the run's numbers, so only the seed differs; a seed with results is not trained
    again; the table has one row per seed and model."""
    copy = tmp_path / "run"
    shutil.copytree(csv_run[0], copy)
    run = config.setup("smoke", str(copy))
    assert seeds.run_seed(run) == 0
    before = {name: listing(copy / name) for name in ("slices", "checkpoints", "outputs")}
    sections = config.read_metrics(copy)
    assert seeds.main(["--profile", "smoke", "--run-dir", str(copy), "--seeds", "0", "1"]) == 0
    assert {name: listing(copy / name) for name in before} == before
    assert {k: v for k, v in config.read_metrics(copy).items() if k != "environment"} == {
        k: v for k, v in sections.items() if k != "environment"}
    one = seeds.seed_folder(run, 1)
    assert (one / "slices").is_symlink() and (one / "slices").resolve() == run.slices.resolve()
    for name in ("gmvae.pt", "scanner-classifier.pt"):
        assert (one / "checkpoints" / name).read_bytes() == (run.checkpoints / name).read_bytes()
    mine = config.read_metrics(one)
    assert {stage2.Experiment.seed_of(mine[m.section]) for m in methods.MODELS} == {1}
    assert mine["02_gmvae"] == sections["02_gmvae"]
    assert not (seeds.seed_folder(run, 0)).exists()  # the run's own seed is the run
    found, left_out = seeds.folders(run)
    df = seeds.scores(found)
    assert df[["seed", "model"]].values.tolist() == [[0, "GMM-DRIT"], [0, "DRIT++"], [1, "GMM-DRIT"], [1, "DRIT++"]]
    assert df.loc[df.seed == 1, "SSIM vs target scan (reference-guided, a ≠ b)"].tolist() == [
        mine[m.section]["d2d_reference_guided_ssim_vs_target_scan"] for m in methods.MODELS]
    assert df.loc[df.seed == 1, "frozen residual, median of 8 draws"].tolist() == [
        measures.RESIDUAL_FROZEN_DRAWS.read(mine, m.name) for m in methods.MODELS]
    no_truth = {label for source, label, _ in seeds.MEASURES  # this CSV has no clean truth
                if "truth" in label or source in ("sf_dark_overlap", measures.FIELD_NEARER)}
    assert set(df.columns[df.isna().all()]) == no_truth and not df.drop(columns=list(no_truth)).isna().any().any()
    assert len(pd.read_csv(run.figures / "seeds.csv")) == 4 and (run.figures / "seeds.png").exists()
    md = (run.figures / "seeds.md").read_text()
    assert "clean truth" not in md and f"{sections['03_gmmdrit']['d2d_identity_ssim_vs_target_scan']:.3f}" in md
    monkeypatch.setattr(pipeline, "main", lambda argv: pytest.fail("a complete seed was trained again"))
    assert seeds.train_seed(run, 1) == 0
    monkeypatch.undo()
    assert seeds.train_seed(run, 0) == 0  # the run's own seed in a folder of its own
    theirs = config.read_metrics(seeds.seed_folder(run, 0))
    for source, label, _ in seeds.MEASURES:
        if label not in no_truth:
            for m in methods.MODELS:
                assert seeds._read(theirs, m, source) == seeds._read(sections, m, source), (label, m.name)
    base = json.loads((one / "base.json").read_text())
    (one / "base.json").write_text(json.dumps(base | {"manifest.csv": "1 2"}))  # made while the manifest was stamped
    assert seeds.folders(run)[1] == [] and seeds.prepare(run, 1) == one
    (one / "base.json").write_text("{}")  # as if the run had changed since seed 1 was made
    assert seeds.folders(run)[1] == ["seed 1 (made from another state of the run)"]
    with pytest.raises(ValueError, match="another state of the run"):
        seeds.prepare(run, 1)
    (one / "base.json").unlink()  # a folder of older code, without the record: not taken over with its models
    with pytest.raises(ValueError, match="no record of the run state"):
        seeds.prepare(run, 1)


def test_a_run_made_with_stage_2_options_has_its_seeds_trained_with_them(tmp_path, monkeypatch):
    run = config.setup("smoke", str(tmp_path / "run"))
    for m in methods.MODELS:
        run.record(m.section, {"steps": 20})
    assert seeds.run_options(run) == ""
    monkeypatch.setattr(seeds, "prepare", lambda run, seed: tmp_path / f"seed{seed}")
    argv = []
    monkeypatch.setattr(pipeline, "main", lambda args: argv.append(args) or 0)
    assert seeds.train_seed(run, 1) == 0 and "--options" not in argv[-1]
    for m in methods.MODELS:
        run.record(m.section, {"steps": 20, "options": '{"dc_steps": 2}'})
    assert seeds.run_options(run) == '{"dc_steps": 2}'
    assert seeds.train_seed(run, 2) == 0 and argv[-1][-2:] == ["--options", '{"dc_steps": 2}']
    run.record(methods.DRITPP.section, {"steps": 20})
    with pytest.raises(ValueError, match="different stage-2 options"):
        seeds.run_options(run)


def test_a_seeds_table_needs_a_complete_run_and_seeds_of_zero_or_more(tmp_path, capsys):
    assert seeds.main(["--profile", "smoke", "--run-dir", str(tmp_path / "none")]) == 2
    assert "holds no run" in capsys.readouterr().err and not (tmp_path / "none").exists()
    assert seeds.main(["--profile", "smoke", "--run-dir", str(tmp_path), "--seeds", "-1"]) == 2
    assert "≥ 0" in capsys.readouterr().err


def test_the_seeds_table_counts_for_each_measure_in_its_own_direction():
    """A known answer: the built-in five seeds' SSIM against the target scan of an earlier table
    (GMM-DRIT / DRIT++; their differences' t-interval was [+0.011, +0.036], GMM-DRIT ahead in 5 of
    5), the z^c probe lower for GMM-DRIT in 2 of them, and target sensitivity, which has no better side."""
    a, b = [0.7505, 0.7721, 0.7627, 0.7641, 0.7654], [0.7360, 0.7330, 0.7475, 0.7363, 0.7429]
    probes = [(0.5, 0.9), (0.6, 0.7), (0.9, 0.8), (1.0, 1.0), (0.95, 0.9)]
    labels = {source: label for source, label, _ in seeds.MEASURES}
    ssim, probe, sens = (labels[k] for k in ("d2d_reference_guided_ssim_vs_target_scan", "probe_zc", "target_sensitivity"))
    rows = []
    for seed in range(5):
        for model, score, p in (("GMM-DRIT", a[seed], probes[seed][0]), ("DRIT++", b[seed], probes[seed][1])):
            rows.append({"seed": seed, "model": model, ssim: score, probe: p, sens: 1.0})
    table = seeds.compare(pd.DataFrame(rows)).set_index("measure")
    assert list(table.index) == [sens, ssim, probe]
    assert table.loc[ssim, "GMM-DRIT better in"] == "5 of 5" and table.loc[ssim, "95 % t-interval"] == "[+0.011, +0.036]"
    assert table.loc[ssim, "GMM-DRIT − DRIT++"] == pytest.approx(np.mean(a) - np.mean(b))
    assert table.loc[ssim, "GMM-DRIT"] == f"{np.mean(a):.3f} ({np.std(a, ddof=1):.3f})"
    assert table.loc[probe, "GMM-DRIT better in"] == "2 of 5" and table.loc[probe, "better"] == "lower"
    assert table.loc[sens, "GMM-DRIT better in"] == "" and table.loc[sens, "GMM-DRIT − DRIT++"] == 0
    assert table.loc[sens, "better"] == "neither (1: as far as the scans differ)"


def test_each_run_keeps_its_figures_and_only_the_default_run_writes_figures(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "DATA", tmp_path / "data")
    monkeypatch.setattr(config, "FIGURES", tmp_path / "figures")
    default, smoke = config.setup("quick"), config.setup("smoke")
    mine = config.setup("quick", str(tmp_path / "data" / "runs" / "my-site"))
    assert default.figures == tmp_path / "figures" and default.is_default
    assert mine.figures == mine.dir / "figures" and smoke.figures == smoke.dir / "figures"
    import matplotlib.pyplot as plt

    for run in (default, mine, smoke):
        fig = plt.figure()
        plots.save_figure(fig, "01_histograms", run.figures)
        plt.close(fig)
    assert all((run.figures / "01_histograms.png").exists() for run in (default, mine, smoke))


def test_the_plan_puts_only_the_lanes_groups_side_by_side_and_each_lane_gets_its_own_cores(monkeypatch):
    numbers = lambda steps: [[[pipeline.task_name(t, short=True) for t in lane] for lane in step]
                             for step in steps]
    assert numbers(pipeline.plan(pipeline.notebooks())) == [
        [["01"]], [["02", "03"], ["known-labels", "04", "references"]],
        [["09"], ["training-outputs", "05", "06", "07", "08", "10", "11"]]]
    everything_in_order = [[[p]] for p in pipeline.notebooks()]
    assert pipeline.plan(pipeline.notebooks(), lanes=False) == everything_in_order
    # no references asked for; the known-labels ablation beside 03 (trained only if E1 is below its bar)
    assert numbers(pipeline.plan(pipeline.notebooks(["03", "04"]))) == [[["03"], ["known-labels", "04"]]]
    assert numbers(pipeline.plan(pipeline.notebooks(["03"]))) == [[["03"], ["known-labels"]]]
    # where it is known to be needless (pipeline.needless), 03 runs alone on all the cores as before
    assert numbers(pipeline.plan(pipeline.notebooks(["03"]), without=frozenset({"known-labels"}))) == [[["03"]]]
    assert numbers(pipeline.plan(pipeline.notebooks(["03", "04"]), without=frozenset({"known-labels"}))) == [
        [["03"], ["04"]]]
    assert numbers(pipeline.plan(pipeline.notebooks(["04", "05", "06"]))) == [[["04"]], [["05"]], [["06"]]]
    # 09 runs beside its training outputs as in the whole pipeline, whatever else runs (its residual
    # classifiers train on one core, as in `make run`); its references come first
    assert numbers(pipeline.plan(pipeline.notebooks(["02", "03", "09"]))) == [
        [["02", "03"], ["known-labels", "references"]], [["09"], ["training-outputs"]]]
    assert numbers(pipeline.plan(pipeline.notebooks(["03", "04", "09"]))) == [
        [["03"], ["known-labels", "04", "references"]], [["09"], ["training-outputs"]]]
    assert numbers(pipeline.plan(pipeline.notebooks(["03", "04", "09", "10"]))) == [
        [["03"], ["known-labels", "04", "references"]], [["09"], ["training-outputs", "10"]]]
    # without their group's lanes the references come first, so that 06 and 09 do not both train them
    assert numbers(pipeline.plan(pipeline.notebooks(["01", "06", "09"]))) == [
        [["01"]], [["references"]], [["09"], ["training-outputs", "06"]]]
    assert numbers(pipeline.plan(pipeline.notebooks(["05", "09"]))) == [
        [["references"]], [["09"], ["training-outputs", "05"]]]
    assert numbers(pipeline.plan(pipeline.notebooks(["01", "09"]))) == [
        [["01"]], [["references"]], [["09"], ["training-outputs"]]]
    assert numbers(pipeline.plan(pipeline.notebooks(["06"]))) == [[["06"]]]
    monkeypatch.setattr(pipeline.os, "sched_getaffinity", lambda pid: {0, 2, 3, 5, 7}, raising=False)
    monkeypatch.setattr(pipeline.os, "sched_setaffinity", lambda pid, cores: None, raising=False)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert pipeline.core_shares(2) == [{0, 2}, {3, 5}]  # as many threads in each lane: 7 left out
    assert pipeline.core_shares(5) == [{0}, {2}, {3}, {5}, {7}]
    assert pipeline.core_shares(6) is None and pipeline.core_shares(1) is None
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)  # a GPU trains them one after the other
    assert pipeline.core_shares(2) is None


def _toy_notebooks(folder, cells):
    import nbformat

    out = []
    for name, code in cells.items():
        nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)]), folder / name)
        out.append(folder / name)
    return out


def test_lanes_run_side_by_side_each_on_its_own_cores_their_notebooks_in_order_and_a_free_lane_takes_what_any_may(tmp_path, capsys):
    """Lane 1 runs f0; lane 2 runs h0, which ends only once s0 has run, and would then run k0 and s0.
    Lane 1, free after f0, takes s0 (the last waiting, and one any lane may take) but not k0."""
    shares = pipeline.core_shares(2)
    if shares is None:
        pytest.skip("one core, a GPU or no CPU affinity here: the pipeline runs every notebook one after the other")
    import nbformat

    marker = tmp_path / "s0-ran"
    code = "import os, time, torch\nprint(sorted(os.sched_getaffinity(0)), torch.get_num_threads(), time.time())"
    hold = (f"import os, time\nfor _ in range(3000):\n    if os.path.exists({str(marker)!r}): break\n    time.sleep(0.1)\n"
            f"else:\n    raise TimeoutError('s0 was not taken by the free lane')\n" + code)
    f0, h0, k0, s0 = _toy_notebooks(tmp_path, {"f0.ipynb": code, "h0.ipynb": hold, "k0.ipynb": code,
                                               "s0.ipynb": code + f"\nopen({str(marker)!r}, 'w').close()"})
    (tmp_path / "out").mkdir()
    ended = []
    ok = pipeline.execute_lanes([[f0], [h0, k0, s0]], tmp_path / "out", {}, shares,
                                lambda task, seconds, error: ended.append((task.name, error)) or not error,
                                any_lane=frozenset({"s0"}))
    assert ok and sorted(ended) == [(n, "") for n in ("f0.ipynb", "h0.ipynb", "k0.ipynb", "s0.ipynb")]
    assert [line.strip() for line in capsys.readouterr().out.splitlines() if "takes" in line] == [
        "lane 1 is free and takes s0"]  # said, as the plan printed before the lanes started no longer holds
    printed = {}
    for nb, cores in ((f0, shares[0]), (s0, shares[0]), (h0, shares[1]), (k0, shares[1])):
        # the kernel inherits its lane's cores; PyTorch uses as many threads
        cores_seen, threads, at = nbformat.read(tmp_path / "out" / nb.name, 4).cells[0].outputs[-1]["text"].rsplit(" ", 2)
        assert (cores_seen, int(threads)) == (str(sorted(cores)), len(cores)), nb.name
        printed[nb.name] = float(at)
    assert printed["f0.ipynb"] < printed["s0.ipynb"] < printed["h0.ipynb"] < printed["k0.ipynb"]


def test_a_free_lane_takes_the_last_waiting_task_any_lane_may_take():
    nb = {n: config.NOTEBOOKS / f"{n}_x.ipynb" for n in ("03", "05", "06", "07", "09")}
    queues = [[nb["09"]], [pipeline.TRAINING_OUTPUTS, nb["05"], nb["06"], nb["07"]]]
    assert pipeline.next_task(queues, 0, pipeline.ANY_LANE) == nb["09"]  # its own first
    assert pipeline.next_task(queues, 0, pipeline.ANY_LANE) == nb["07"]  # then the other's last
    assert pipeline.next_task(queues, 1, pipeline.ANY_LANE) == pipeline.TRAINING_OUTPUTS
    assert queues == [[], [nb["05"], nb["06"]]]
    assert pipeline.next_task([[], [nb["05"], nb["03"]]], 0, pipeline.ANY_LANE) is None  # 03 is not for any lane
    assert pipeline.next_task([[], [nb["05"]]], 0, frozenset()) is None
    assert pipeline.next_task([[], []], 1, pipeline.ANY_LANE) is None


def test_a_task_that_needs_another_lane_s_notebook_waits_for_it_and_its_lane_runs_the_next_task_meanwhile():
    nb = {n: config.NOTEBOOKS / f"{n}_x.ipynb" for n in ("02", "04", "05")}
    queue = lambda: [[], [pipeline.KNOWN_LABELS, nb["04"], pipeline.REFERENCES]]
    queues = queue()  # 02 still waiting or running: the known-labels ablation, which reads its GM-VAE, waits
    assert pipeline.next_task(queues, 1, pipeline.ANY_LANE, frozenset({"02", "03"})) == nb["04"]
    assert pipeline.next_task(queues, 1, pipeline.ANY_LANE, frozenset({"02"})) == pipeline.REFERENCES
    assert pipeline.next_task(queues, 1, pipeline.ANY_LANE, frozenset({"02"})) is None  # nothing else: idle
    assert pipeline.next_task(queues, 1, pipeline.ANY_LANE, frozenset({"03"})) == pipeline.KNOWN_LABELS
    queues = queue()  # 02 ended (or not in this step): in order
    assert [pipeline.next_task(queues, 1, pipeline.ANY_LANE, frozenset({"03"})) for _ in range(3)] == queue()[1]
    # a lane whose own tasks all wait takes nothing of another lane's
    assert pipeline.next_task([[pipeline.KNOWN_LABELS], [nb["05"]]], 0, pipeline.ANY_LANE, frozenset({"02"})) is None


def test_the_known_labels_task_is_left_out_only_where_the_run_s_recorded_e1_says_it_trains_nothing(tmp_path):
    run = config.setup("smoke", str(tmp_path / "run"))
    without_02, with_02 = pipeline.notebooks(["03", "04"]), pipeline.notebooks(["02", "03"])
    assert pipeline.needless(run, without_02) == {pipeline.KNOWN_LABELS}  # no E1 recorded: 03 trains nothing either
    for acc, needless in ((stage2.E1_BAR, {pipeline.KNOWN_LABELS}), (stage2.E1_BAR - 0.01, set())):
        run.record("02_gmvae", {"ACC": acc})
        assert pipeline.needless(run, without_02) == needless
        assert pipeline.needless(run, with_02) == set()  # 02 runs first and may record another E1


def test_lanes_start_a_waiting_task_once_what_it_needs_has_ended(tmp_path, capsys):
    """Lane 2's k waits for lane 1's x: lane 2 runs y first, k only after x has ended."""
    if pipeline.core_shares(2) is None:
        pytest.skip("one core, a GPU or no CPU affinity here: no lanes")
    cores = sorted(os.sched_getaffinity(0))
    ended = []
    # tasks no lane knows end at once with an error, which this `done` accepts
    assert pipeline.execute_lanes([["x"], ["k", "y"]], tmp_path, {}, [{cores[0]}, {cores[1]}],
                                  lambda task, seconds, error: ended.append(task) or True, after={"k": ("x",)})
    assert sorted(ended[:2]) == ["x", "y"] and ended[2] == "k"
    assert "lane 2 runs y before k, which waits for x" in capsys.readouterr().out


def test_lanes_of_unequal_cores_take_nothing_of_each_other(tmp_path, monkeypatch):
    """With a lane on 1 core and one on 2, a notebook's threads, and so its numbers, would depend on
    which lane ran it: no task is taken across lanes."""
    if pipeline.core_shares(2) is None:
        pytest.skip("one core, a GPU or no CPU affinity here: no lanes")
    cores = sorted(os.sched_getaffinity(0))
    seen, take = [], pipeline.next_task
    monkeypatch.setattr(pipeline, "next_task",
                        lambda queues, i, any_lane, *waits: seen.append(any_lane) or take(queues, i, any_lane, *waits))
    for shares, expected in (([{cores[0]}, set(cores[:2])], frozenset()), ([{cores[0]}, {cores[1]}], pipeline.ANY_LANE)):
        seen.clear()
        # tasks no lane knows end at once with an error, which this `done` accepts
        assert pipeline.execute_lanes([["x"], ["y"]], tmp_path, {}, shares, lambda task, seconds, error: True)
        assert seen and set(seen) == {expected}


def test_after_a_failure_in_one_lane_no_task_starts_and_the_other_lane_s_running_task_ends(tmp_path):
    shares = pipeline.core_shares(2)
    if shares is None:
        pytest.skip("one core, a GPU or no CPU affinity here: no lanes")
    marker = tmp_path / "failed"
    fails, after, slow = _toy_notebooks(tmp_path, {
        "fails.ipynb": f"open({str(marker)!r}, 'w').close()\nraise ValueError('no GM-VAE')",
        "after.ipynb": "print(1)",
        # still running when the failure is reported: it waits for it, then a little longer
        "slow.ipynb": f"import os, time\nwhile not os.path.exists({str(marker)!r}): time.sleep(0.1)\ntime.sleep(5)"})
    (tmp_path / "out").mkdir()
    ended = []
    ok = pipeline.execute_lanes([[fails, after], [slow, after]], tmp_path / "out", {}, shares,
                                lambda task, seconds, error: ended.append((task.name, error)) or not error)
    assert not ok and ended == [("fails.ipynb", "ValueError: no GM-VAE"), ("slow.ipynb", "")]
    assert not (tmp_path / "out" / "after.ipynb").exists()


def test_a_lane_whose_process_died_while_it_waited_reports_its_task_failed(tmp_path):
    """A pipeline call keeps its lanes' processes between steps (:func:`pipeline.lane_processes`). One
    killed in between (out of memory) fails the next task it is given, reported as any failure is,
    not raised; and no other task starts."""
    shares = pipeline.core_shares(2)
    if shares is None:
        pytest.skip("one core, a GPU or no CPU affinity here: no lanes")
    from concurrent.futures.process import BrokenProcessPool

    first, second = _toy_notebooks(tmp_path, {"first.ipynb": "print(1)", "second.ipynb": "print(2)"})
    pools = pipeline.lane_processes(2)
    try:
        os.kill(pools[0].submit(os.getpid).result(timeout=60), signal.SIGKILL)
        with pytest.raises(BrokenProcessPool):  # broken by now, at the submission or in its result
            pools[0].submit(os.getpid).result(timeout=60)
        ended = []
        (tmp_path / "out").mkdir()
        ok = pipeline.execute_lanes([[first], [second]], tmp_path / "out", {}, shares,
                                    lambda task, seconds, error: ended.append((task.name, error)) or not error,
                                    pools=pools)
    finally:
        for pool in pools:
            pool.shutdown(cancel_futures=True)
    assert not ok and [name for name, _ in ended] == ["first.ipynb"] and "BrokenProcessPool" in ended[0][1]
    assert not (tmp_path / "out" / "second.ipynb").exists()


def test_a_notebook_that_fails_or_is_missing_is_reported_not_raised(tmp_path):
    nb, = _toy_notebooks(tmp_path, {"fails.ipynb": "raise ValueError('no GM-VAE')"})
    seconds, error = pipeline.execute(nb, tmp_path / "out.ipynb", {}, progress=False)
    assert error == "ValueError: no GM-VAE" and (tmp_path / "out.ipynb").exists()
    seconds, error = pipeline.execute(tmp_path / "missing.ipynb", tmp_path / "out2.ipynb", {}, progress=False)
    assert error.startswith("FileNotFoundError")


@pytest.mark.skipif(os.name != "posix", reason="Unix sockets: POSIX only")
def test_the_kernels_talk_over_sockets_of_their_own_and_leave_none_behind(tmp_path, capfd):
    """Over TCP every kernel warned that its traffic was unencrypted; over ZeroMQ's ipc transport it does
    not, and each kernel's sockets are named apart, so the two lanes' kernels cannot take the same ones."""
    code = "from ipykernel.kernelapp import IPKernelApp\napp = IPKernelApp.instance()\nprint(app.transport, app.ip)"
    import nbformat

    nbs = _toy_notebooks(tmp_path, {"a.ipynb": code, "b.ipynb": code})
    seen = []
    for nb in nbs:
        assert pipeline.execute(nb, tmp_path / f"out-{nb.name}", {}, progress=False)[1] == ""
        transport, ip = nbformat.read(tmp_path / f"out-{nb.name}", 4).cells[0].outputs[0]["text"].split()
        assert transport == "ipc" and Path(ip).is_absolute()
        seen.append(ip)
        assert not list(Path(ip).parent.glob(Path(ip).name + "*"))  # the socket files were removed
    assert seen[0] != seen[1]
    assert "without encryption" not in capfd.readouterr().err


def test_what_the_environment_record_cannot_read_is_left_empty_and_stops_nothing(monkeypatch):
    from importlib import metadata

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    monkeypatch.setattr(pipeline.Path, "read_text", lambda self, *a, **k: (_ for _ in ()).throw(PermissionError(self)))
    env = pipeline.environment()
    assert all(env[name] == "" for name in pipeline.PACKAGES) and env["python"] and env["cores"] >= 1
    assert "environment" not in pipeline.summary({"environment": env, "01_data": {"slices": 3}})
    assert "made with Python" in report.readme_section({"environment": env}, "x")


def test_the_results_say_what_the_run_s_data_are_and_call_only_simulated_sets_simulated(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(plots, "SIMULATED", plots.SIMULATED)  # describe_data sets it for the kernel
    run = tmp_path / "run"
    (run / "slices").mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"environment": {"python": "3.11"}}))
    assert "**Simulated data**" in report.readme_section({}, run)  # no slices yet: the built-in set's run
    csv = tmp_path / "mine" / "scans.csv"
    csv.parent.mkdir()
    (run / "slices" / "info.json").write_text(json.dumps({"source_csv": str(csv)}))
    text = report.readme_section({}, run)
    assert "Simulated data" not in text and "sim-A" not in text
    assert "**Data**: data of scans.csv (not simulated by this project)" in text
    assert report.main(["--run-dir", str(run)]) == 0
    assert "data of scans.csv (not simulated by this project)" in capsys.readouterr().out
    (csv.parent / "README.txt").write_text(plots.SIMULATION_MARK + "\n")  # a set nbutils.phantom made
    assert "**Simulated data**" in report.readme_section({}, run)


def test_scores_made_from_other_models_than_notebooks_03_04_last_trained_are_named_not_mixed_in(tmp_path):
    """After a model is trained again (``--only 03``, or notebook 03 by hand), the sections of notebooks 05-09 still
    hold the old model's scores: the results say so, and the README's Results are not rewritten from them."""
    ids = {m.name: f"{m.checkpoint()} 100 {i}" for i, m in enumerate(methods.MODELS)}
    metrics = {m.section: {"checkpoint": f"{ids[m.name]} seed 0"} for m in methods.MODELS}
    metrics |= {s: {"models": dict(ids)} for s in report.SCORED}
    assert report.stale_sections(metrics) == [] and report.stale_note(metrics) == ""
    metrics[methods.GMM_DRIT.section]["checkpoint"] = f"{methods.GMM_DRIT.checkpoint()} 100 9 seed 0"  # trained again
    assert report.stale_sections(metrics) == list(report.SCORED)
    assert "05_ssim, 06_fid_kid, 08_intensities, 09_beyond" in report.stale_note(metrics)
    del metrics["09_beyond"]["models"]  # recorded before sections said which models they scored: stale too
    metrics |= {s: {"models": {m.name: ids[m.name] for m in methods.MODELS} | {methods.GMM_DRIT.name:
                                                                               f"{methods.GMM_DRIT.checkpoint()} 100 9"}}
                for s in ("05_ssim", "06_fid_kid", "08_intensities")}
    assert report.stale_sections(metrics) == ["09_beyond"]
    readme = tmp_path / "README.md"
    readme.write_text(f"{report.START}\n{report.END}\n")
    with pytest.raises(ValueError, match="09_beyond"):
        report.write_readme(metrics, tmp_path, readme)
    assert report.stale_sections({"01_data": {}}) == []  # no model trained yet: nothing to compare


def test_a_second_pipeline_in_a_run_folder_in_use_stops_before_it_writes_anything(tmp_path, capsys, monkeypatch):
    from nbutils.io import locked

    ran = []
    monkeypatch.setattr(pipeline, "run_notebooks", lambda run, tasks, *rest: ran.append(run.dir) or 0)
    folder = tmp_path / "run"
    with locked(folder / "pipeline"):  # as a pipeline running there holds it
        assert pipeline.main(["--profile", "smoke", "--run-dir", str(folder), "--only", "11"]) == 2
        assert "another pipeline (`make run`, `make seeds`) is running in" in capsys.readouterr().err
        assert not ran and not (folder / "metrics.json").exists()
        # another run folder is free
        assert pipeline.main(["--profile", "smoke", "--run-dir", str(tmp_path / "other"), "--only", "11"]) == 0
        # nor `make seeds` over the run, which would read what that pipeline is making
        (folder / "metrics.json").write_text("{}")
        assert seeds.main(["--profile", "smoke", "--run-dir", str(folder), "--seeds", "1"]) == 2
        assert "another pipeline (`make run`, `make seeds`) is running in" in capsys.readouterr().err
        assert not (folder / "seeds").exists()
    assert pipeline.main(["--profile", "smoke", "--run-dir", str(folder), "--only", "11"]) == 0  # ended: free
    assert ran == [tmp_path / "other", folder]


def test_a_run_on_your_data_is_named_after_the_csv_unless_named(tmp_path):
    runs = config.DATA / "runs"
    assert pipeline.run_folder("quick") == ""  # the built-in data's default run
    assert pipeline.run_folder("quick", data="x/ixi.csv") == str(runs / "ixi")
    # another profile's run of the same CSV does not replace the quick run's slices and models
    assert pipeline.run_folder("smoke", data="x/ixi.csv") == str(runs / "ixi-smoke")
    assert pipeline.run_folder("paper", data="x/ixi.csv", name="guys") == str(runs / "guys")
    assert pipeline.run_folder("quick", data="x/ixi.csv", name="guys") == str(runs / "guys")
    assert pipeline.run_folder("quick", data="x/ixi.csv", run_dir="/tmp/r") == "/tmp/r"
    for bad in ("quick", "smoke", "../up", "a/b", "..", "."):
        with pytest.raises(ValueError, match="run name"):
            pipeline.run_folder("quick", data="x/ixi.csv", name=bad)
    with pytest.raises(ValueError, match="not both"):
        pipeline.run_folder("quick", name="a", run_dir="b")
    # a built-in run's folder is that run's: not your data's, nor another profile's
    assert pipeline.run_folder("smoke", run_dir=str(runs / "smoke")) == str(runs / "smoke")
    (tmp_path / "alias").symlink_to(runs / "quick")
    for profile, data, folder in (("quick", "x/ixi.csv", "data/runs/quick"), ("smoke", "", str(runs / "quick")),
                                  ("quick", "x.csv", "data/runs/x/../quick/"), ("quick", "x.csv", tmp_path / "alias")):
        with pytest.raises(ValueError, match="built-in data's quick run"):
            pipeline.run_folder(profile, data=data, run_dir=str(folder))


@pytest.mark.parametrize("case, message", [
    ("missing csv", "no such CSV"),
    ("missing column", "missing column"),
    ("missing file", "do not exist"),
])
def test_a_bad_csv_stops_before_any_notebook_runs(case, message, tmp_path, capsys, write_volume):
    csv = tmp_path / "bad.csv"
    if case == "missing column":
        csv.write_text("path\na.nii\n")
    elif case == "missing file":
        csv.write_text("path,domain\nnowhere.nii,siteA\nnowhere2.nii,siteA\n")
    run_dir = tmp_path / "run"
    assert pipeline.main(["--profile", "smoke", "--data", str(csv), "--run-dir", str(run_dir)]) == 2
    assert message in capsys.readouterr().err and not run_dir.exists()


def test_stage_2_options_reach_the_model_through_papermill_and_a_model_trained_otherwise_is_refused(csv_run, tmp_path,
                                                                                                   capsys):
    """``--options`` (``make run OPTIONS=…``) reaches notebooks 03/04's ``options``: the model is trained with
    them (its checkpoint's settings) and the section records them; the same run without them refuses that
    checkpoint rather than score it as the profile's model; bad options stop before anything runs."""
    run_dir = tmp_path / "run"
    shutil.copytree(csv_run[0], run_dir, symlinks=True)
    checkpoint = run_dir / "checkpoints" / methods.DRITPP.checkpoint()
    checkpoint.unlink()
    shutil.rmtree(checkpoint.with_name(checkpoint.name + ".snapshots"), ignore_errors=True)
    only = ["--profile", "smoke", "--run-dir", str(run_dir), "--only", "04"]
    assert pipeline.main(only + ["--options", '{"dc_steps": 2, "dc_lr": 0.4}']) == 0
    trained = torch.load(checkpoint, weights_only=False)["meta"]["config"]
    assert trained["dc_steps"] == 2 and trained["dc_lr"] == 0.4
    section = config.read_metrics(run_dir)[methods.DRITPP.section]
    assert json.loads(section["options"]) == {"dc_lr": 0.4, "dc_steps": 2}
    capsys.readouterr()
    assert pipeline.main(only) == 1  # the profile's settings: the checkpoint trained otherwise is refused
    assert "written for other settings" in capsys.readouterr().err
    assert config.read_metrics(run_dir)[methods.DRITPP.section] == section
    for bad, message in (('{"k": 3}', "unknown stage-2 option"), ('{"dc_steps": 3', "JSON object"),
                         ("[3]", "JSON object"), ('{"dc_steps": "3"}', "must be int"),
                         ('{"w_field_layout": 1.0}', "cannot be given to DRIT++"), ('{"dc_lr": NaN}', "finite number"),
                         ('{"w_invariance": -5}', "finite number"), ('{"lr": 0}', "above 0")):
        assert pipeline.main(["--profile", "smoke", "--run-dir", str(tmp_path / "new"), "--options", bad]) == 2
        assert message in capsys.readouterr().err and not (tmp_path / "new").exists()
    # what to run, and the seed, are checked before anything runs too: a typo runs nothing silently no more
    for bad, message in ((["--only", "3"], "two-digit notebook numbers"), (["--only"], "two-digit notebook numbers"),
                         (["--seed", "-1"], "give 0 or more")):
        assert pipeline.main(["--profile", "smoke", "--run-dir", str(tmp_path / "new")] + bad) == 2
        assert message in capsys.readouterr().err and not (tmp_path / "new").exists()


def test_make_hands_options_to_the_pipeline_as_typed(tmp_path):
    """``make run OPTIONS=…`` passes the text through the environment: a quote or a $ in it reaches the
    pipeline's check intact (here an unknown name, refused before any folder is made)."""
    import subprocess
    import sys

    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    bad = '{"it\'s $HOME $$x": 1}'
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    # this interpreter, and .venv taken as built: the test never installs anything
    out = subprocess.run(["make", "--no-print-directory", "-C", str(config.ROOT), "-o", ".venv/.installed", "run",
                          f"PY={sys.executable}", f"RUN_DIR={tmp_path / 'new run'}", f"OPTIONS={bad}"],
                         capture_output=True, text=True, env=env)  # a space in RUN_DIR too
    assert out.returncode != 0 and not (tmp_path / "new run").exists()
    assert "unknown stage-2 option(s) it's $HOME $$x:" in out.stderr


def test_the_bars_table_says_which_model_meets_which_bar_and_leaves_out_what_was_not_recorded():
    gmm, dritpp, ident, hm = (m.name for m in (methods.GMM_DRIT, methods.DRITPP, methods.IDENTITY, methods.HISTOGRAM))
    # GMM-DRIT exactly at the sensitivity and probe bars (met), DRIT++ past them
    metrics = {methods.GMM_DRIT.section: dict(target_sensitivity=0.5, probe_zc=0.40, probe_bar=0.40, chance=0.25,
                                              target_sensitivity_oracle=0.8),
               methods.DRITPP.section: dict(target_sensitivity=0.3, probe_zc=0.90, probe_bar=0.40, chance=0.25)}

    def record(measure, values):
        metrics.setdefault(measure.section, {}).update(measure.record(values))

    record(measures.SCAN_SSIM, {gmm: 0.70, dritpp: 0.66, ident: 0.67, hm: 0.65})  # DRIT++ above HM, under identity
    record(measures.TRUTH_SSIM, {gmm: 0.80, dritpp: 0.82, ident: 0.81})
    record(measures.E2, {gmm: 0.95, dritpp: 0.94})  # GMM-DRIT at the bar of 0.95: met
    record(measures.RESIDUAL_FROZEN_DRAWS, {gmm: 0.50, dritpp: 0.51, measures.CHANCE: 0.25})
    record(measures.CONSISTENCY, {gmm: 0.9, dritpp: 0.8, measures.INPUTS: 0.7})
    record(measures.BLUR_CONTROL, {gmm: 0.75, dritpp: 0.85})  # DRIT++ above the inputs, under its blur control
    record(measures.TRUTH_PSNR, {gmm: 17.0, dritpp: 18.0})
    bars = report.bars_table(metrics).set_index("bar")
    assert bars["met"].to_dict() == {
        "target sensitivity ≥ 0.5": "yes / no",
        "scanner probe from z^c ≤ 0.40 (a fifth of the way from chance to 1)": "yes / no",
        "SSIM vs target scan, a → b: above identity and histogram matching": "yes / no",
        "SSIM vs clean truth, a → b: above identity": "no / yes",
        "SSIM vs clean truth, a → b: GMM-DRIT ≥ DRIT++": "no",
        "PSNR vs clean truth, a → b (dB): GMM-DRIT ≥ DRIT++": "no",
        "scanner-free agreement above the inputs' and the blur control's": "yes / no",
        "structure kept, input vs scanner-free (E2) ≥ 0.95": "yes / no",
        "frozen classifier's residual accuracy, median over scanner-free draws ≤ 0.50 (a third of the way from "
        "chance to 1)": "yes / no"}
    assert bars.loc["target sensitivity ≥ 0.5", "controls and ceilings"].startswith(
        "the clean truths (a noise-free oracle) 0.800, 1 = as far as the scans differ")
    assert bars.loc["scanner-free agreement above the inputs' and the blur control's", "controls and ceilings"] \
        == "inputs 0.700; blur controls 0.750 / 0.850"
    # the difference itself, which three decimals of each model's value can hide
    assert bars.loc["SSIM vs clean truth, a → b: GMM-DRIT ≥ DRIT++", "controls and ceilings"].startswith("GMM-DRIT − DRIT++ -")
    assert ("| scanner probe from z^c ≤ 0.40 (a fifth of the way from chance to 1) | 0.400 | 0.900 | chance 0.25 "
            "| yes / no |") \
        in report.bars_section(metrics)
    # the probe of z^c as G is fed it (models trained on windows) beside, once both models recorded it
    metrics[methods.GMM_DRIT.section]["probe_zc_fed"] = 0.35
    assert "| chance 0.25 | yes / no |" in report.bars_section(metrics)
    metrics[methods.DRITPP.section]["probe_zc_fed"] = 0.85
    assert "| 0.400 | 0.900 | chance 0.25; z^c as G is fed, window by window: 0.350 / 0.850 | yes / no |" \
        in report.bars_section(metrics)
    # the probe's controls, GMM-DRIT's section's (the same slices for both models), as far as recorded
    metrics[methods.GMM_DRIT.section] |= dict(probe_inputs=0.76, probe_inputs_detail=float("nan"))
    assert "window by window: 0.350 / 0.850; the scans summarised as z^c is: 0.76 | yes / no |" \
        in report.bars_section(metrics)
    metrics[methods.GMM_DRIT.section]["probe_inputs_detail"] = 0.9
    assert "summarised as z^c is: 0.76; the scans' detail after a log high-pass: 0.90 | yes / no |" \
        in report.bars_section(metrics)
    record(measures.TRUTH_PSNR, {gmm: 18.0})  # level counts as "at least"
    assert report.bars_table(metrics).set_index("bar").loc["PSNR vs clean truth, a → b (dB): GMM-DRIT ≥ DRIT++",
                                                             "met"] == "yes"
    assert report.bars_table({}).empty and report.bars_section({}) == ""
    # the residual's bar follows chance: with two balanced scanners chance is 0.50 and the bar 2/3
    def residual_row():
        bars = report.bars_table(metrics)
        return bars[bars.bar.str.startswith("frozen classifier's")].squeeze()

    record(measures.RESIDUAL_FROZEN_DRAWS, {gmm: 0.60, dritpp: 0.70, ident: 0.95, measures.CHANCE: 0.50})
    row = residual_row()
    assert row.bar.startswith("frozen classifier's residual accuracy, median over scanner-free draws ≤ 0.67 ")
    assert row.met == "yes / no" and row["controls and ceilings"].startswith("chance 0.50, the inputs 0.95")
    # a test split of one scanner's slices in nine: the bar 0.93 stays under 1, and under the inputs' 0.95
    record(measures.RESIDUAL_FROZEN_DRAWS, {measures.CHANCE: 0.90})
    row = residual_row()
    assert row.bar.endswith("≤ 0.93 (a third of the way from chance to 1)") and row.met == "yes / yes"
    # the label says the share the bar is computed with
    assert report.share_words(report.RESIDUAL_SHARE) == "a third" and report.residual_bar(0.25) == pytest.approx(0.5)
    assert [report.share_words(Fraction(*f)) for f in ((1, 2), (1, 4), (2, 5), (1, 10))] == ["half", "a quarter",
                                                                                             "40%", "10%"]
    assert report.share_words(0.2) == "a fifth" and report.share_words(0.15 / 0.75) == "a fifth"
    assert report.share_words(0.15 / (2 / 3)) == "22%"  # the probe's old bar, chance + 0.15, with three scanners
    # inputs that read within the bar: nothing to tell the outputs from, the bar is not judged
    record(measures.RESIDUAL_FROZEN_DRAWS, {ident: 0.92})
    assert residual_row().met == "not judged: the inputs read within the bar"
    residual_rows = metrics[measures.RESIDUAL_FROZEN_DRAWS.section]
    residual_rows.pop(measures.RESIDUAL_FROZEN_DRAWS.key(measures.CHANCE))
    assert residual_row().empty  # no chance, no bar
    # values recorded as missing (null or NaN in metrics.json) leave their bar out; a missing control reads n/a
    metrics[methods.GMM_DRIT.section] |= dict(target_sensitivity=None, sf_structure_clean_truth_ssim=None)
    metrics[methods.DRITPP.section]["probe_zc"] = float("nan")
    metrics[measures.BLUR_CONTROL.section][measures.BLUR_CONTROL.key(dritpp)] = None
    metrics[measures.TRUTH_SSIM.section].pop(measures.TRUTH_SSIM.key(ident))
    bars = report.bars_table(metrics)
    assert not bars.bar.str.startswith(("target sensitivity", "scanner probe", "scanner-free agreement",
                                        "SSIM vs clean truth, a → b: above")).any()
    assert "SSIM vs clean truth, a → b: GMM-DRIT ≥ DRIT++" in set(bars.bar)
    assert "the clean truth keeps n/a" in set(bars["controls and ceilings"])
