"""Stage 2 over seeds: both models trained anew with other seeds over one run's slices and GM-VAE,
scored as the run scores them, and compared seed by seed.

    python -m nbutils.seeds --seeds 1 2 3 4                          # `make seeds SEEDS="1 2 3 4"`
    python -m nbutils.seeds --run second --seeds 1 2                 # a run on your data (`RUN=second`)
    python -m nbutils.seeds --seeds                                  # the table of the seeds already run

Another stage-2 seed moves either model's scores by about as much as the two models differ
(docs/experiments.md, "GMM-DRIT against DRIT++ over seeds"), so which is ahead is a question over
seeds. The run must be complete up to notebook 09. Seed ``N`` gets its own run folder,
``<run>/seeds/seed<N>``, holding what stage 2 reads from the run: its slices (a relative link, not
a copy), its GM-VAE, the frozen scanner classifier and the paired reference of notebook 09, and the
run's sections 01 and 02 of ``metrics.json``. The pipeline then runs notebooks 03, 04 and 09 there
with ``--seed N``, in two lanes as ``make run`` does (09 beside its training outputs). So the seed
changes stage 2's initial weights and batches, and what follows the run's seed in 09: its scanner-free
draws and its retrained classifiers' weights (`make run SEED=N` would also change the slices and the
GM-VAE). A run made with stage-2 ``options`` (``make run OPTIONS=…``) has its seeds trained with the
same options. The run's own seed trained in such a folder gives the run's numbers (tested). A seed whose
folder has notebook 09's numbers is not run again; a folder made from another state of the run (its
GM-VAE, slices or classifier since changed) is refused: delete it to redo the seed.

The table has the run itself as its own seed and the complete seeds' folders beside it: each
measure of :data:`MEASURES` for GMM-DRIT and DRIT++ (mean and sd over seeds), the mean of the paired
differences, in how many seeds GMM-DRIT is better by the measure's direction, and a 95 %
t-interval over seeds; above it, and under each panel of the figure, the run's controls and
ceilings (:data:`CONTROLS`). It is printed and written to ``<run's figures>/seeds.md`` and
``seeds.csv`` (every seed's scores), with a figure ``seeds.png`` of every seed's pair of scores.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from . import measures, methods, plots
from .config import Run, read_metrics, resolve, setup
from .data import array_files
from .io import atomic_path, atomic_write_text, file_stamp
from .stage2 import BESIDE, Experiment
from .stats import t_interval

# (a key of the model's own section (03/04) or a measure of notebook 09, its label, better: higher
# True, lower False, None for neither: target sensitivity is 1 as far as the scans differ, above overshoots)
MEASURES = (
    ("target_sensitivity", BESIDE["target_sensitivity"], None),
    ("d2d_reference_guided_ssim_vs_target_scan", BESIDE["d2d_reference_guided_ssim_vs_target_scan"], True),
    ("d2d_reference_guided_ssim_vs_clean_truth", BESIDE["d2d_reference_guided_ssim_vs_clean_truth"], True),
    ("d2d_reference_guided_psnr_vs_clean_truth", "PSNR vs clean truth (dB)", True),
    (measures.TRUTH_PSNR_FIELD, "PSNR vs clean truth, smooth field divided out (dB)", True),
    (measures.FIELD_NEARER, "a → b: field nearer b's scan's than a's", True),
    (measures.SOURCE_PROBE, "toward b: source probed from the translations' summary", False),
    (measures.SOURCE_PROBE_DETAIL, "toward b: source probed from the translations' detail", False),
    ("sf_agreement_outputs_ssim", BESIDE["sf_agreement_outputs_ssim"], True),
    ("sf_structure_ssim", BESIDE["sf_structure_ssim"], True),
    ("sf_dark_overlap", "scanner-free dark_overlap", True),
    ("probe_zc", BESIDE["probe_zc"], False),
    ("probe_zc_fed", BESIDE["probe_zc_fed"], False),
    ("share_zc", "scanner share of z^c", False),
    (measures.RESIDUAL_FROZEN_DRAWS, "frozen residual, median of 8 draws", False),
    (measures.RESIDUAL_FROZEN_MATCHED, "frozen residual, answers best renamed", False),
    (measures.RESIDUAL_RETRAINED, "retrained classifier residual", False),
)


def _yardstick(score: str, against: str, ceiling: str) -> list[tuple[str, str]]:
    """notebook 03's keys of identity, histogram matching and ``ceiling`` scored by ``score`` ``against``."""
    return [("03_gmmdrit", f"d2d_{row}_{score}_vs_{against}") for row in ("identity", "histogram_matching", ceiling)]


def _rows(measure: measures.Measure, *rows: str) -> list[tuple[measures.Measure, str]]:
    """The rows ``rows`` (methods, ceilings, chance) that ``measure`` records."""
    return [(measure, row) for row in rows]


# each measure's controls and ceilings in the run: {measure's source: (what, [(section, key) or (measure, row)])}
CONTROLS = {
    "d2d_reference_guided_ssim_vs_target_scan": ("identity / histogram matching / rescan ceiling",
                                                 _yardstick("ssim", "target_scan", "ceiling_b_rescanned")),
    "d2d_reference_guided_ssim_vs_clean_truth": ("identity / histogram matching / b's own scan",
                                                 _yardstick("ssim", "clean_truth", "ceiling_bs_own_scan")),
    "d2d_reference_guided_psnr_vs_clean_truth": ("identity / histogram matching / b's own scan",
                                                 _yardstick("psnr", "clean_truth", "ceiling_bs_own_scan")),
    measures.TRUTH_PSNR_FIELD: ("identity / histogram matching / b's own scan", _rows(
        measures.TRUTH_PSNR_FIELD, methods.IDENTITY.name, methods.HISTOGRAM.name, measures.SCAN_CEILING)),
    measures.FIELD_NEARER: ("identity / histogram matching / rescan ceiling", _rows(
        measures.FIELD_NEARER, methods.IDENTITY.name, methods.HISTOGRAM.name, measures.RESCAN_CEILING)),
    **{m: ("chance / identity / histogram matching", _rows(m, measures.CHANCE, methods.IDENTITY.name,
                                                            methods.HISTOGRAM.name))
       for m in (measures.SOURCE_PROBE, measures.SOURCE_PROBE_DETAIL)},
    "sf_agreement_outputs_ssim": ("the inputs / GMM-DRIT's / DRIT++'s blur control", [
        ("03_gmmdrit", "sf_agreement_inputs_ssim"), ("03_gmmdrit", "sf_agreement_blur_control_ssim"),
        ("04_dritpp", "sf_agreement_blur_control_ssim")]),
    "sf_structure_ssim": ("the clean truth", [("03_gmmdrit", "sf_structure_clean_truth_ssim")]),
    "sf_dark_overlap": ("the inputs", [("03_gmmdrit", "sf_dark_overlap_inputs")]),
    **{k: ("bar / chance", [("03_gmmdrit", "probe_bar"), ("03_gmmdrit", "chance")])
       for k in ("probe_zc", "probe_zc_fed")},
    **{m: ("chance / histogram matching", _rows(m, measures.CHANCE, methods.HISTOGRAM.name))
       for m in (measures.RESIDUAL_FROZEN_DRAWS, measures.RESIDUAL_FROZEN_MATCHED, measures.RESIDUAL_RETRAINED)},
}
FOLDER = "seeds"
BASE = "base.json"  # in a seed's folder: the state of the run it was made from


def seed_folder(run: Run, seed: int) -> Path:
    return run.dir / FOLDER / f"seed{seed}"


def run_seed(run: Run) -> int:
    """The stage-2 seed the run itself was scored with (notebooks 03 and 04 record it)."""
    metrics = read_metrics(run.dir)
    found = {Experiment.seed_of(metrics.get(m.section, {})) for m in methods.MODELS}
    if None in found or len(found) != 1:
        raise ValueError(f"{run.metrics_file} has no stage-2 results of one seed: run notebooks 03, 04 and 09 there first")
    return found.pop()


def run_options(run: Run) -> str:
    """The stage-2 settings the run's models were trained with over the profile's (notebooks 03/04's
    ``options``, ``make run OPTIONS=…``; "" for none): a run's seeds are trained with them too. Raises
    if its two models were trained with different settings."""
    metrics = read_metrics(run.dir)
    found = {metrics.get(m.section, {}).get("options", "") for m in methods.MODELS}
    if len(found) > 1:
        raise ValueError(f"the run's models were trained with different stage-2 options ({sorted(found)}): "
                         "train them again with the same options (make run OPTIONS=…)")
    return found.pop()


def base_state(run: Run) -> dict:
    """What a seed's folder takes from the run (profile, iterations, GM-VAE, slices, frozen
    classifier, stage-2 options if any), to tell whether the run has changed since; raises if the run
    is not complete up to notebook 09 or its models were trained with other iterations than the
    profile's."""
    metrics = read_metrics(run.dir)
    stamped = [run.checkpoints / "gmvae.pt", run.checkpoints / "scanner-classifier.pt"]
    needed = [run.slices / "manifest.csv", *stamped]
    missing = [str(p) for p in needed if not p.is_file()]
    missing += [f"section {s} of metrics.json" for s in ("01_data", "02_gmvae", "09_beyond") if s not in metrics]
    if missing:
        raise FileNotFoundError(f"the run {run.dir} lacks {', '.join(missing)}: run notebooks 01-09 there first")
    steps = {metrics.get(m.section, {}).get("steps") for m in methods.MODELS}
    if steps != {run.profile.drit_steps}:
        raise ValueError(f"the run's models were trained for {sorted(steps, key=str)} iterations, profile "
                         f"{run.profile.name} trains {run.profile.drit_steps}: give the run's profile (PROFILE=)")
    state = {"profile": run.profile.name, "steps": run.profile.drit_steps,
             **{p.name: file_stamp(p) for p in (*stamped, *array_files(run.slices))}}
    options = run_options(run)
    return state | ({"options": options} if options else {})  # seeds made before options existed had none


def made_from(folder: Path) -> dict | None:
    """The :func:`base_state` a seed's folder was made from (None if it has none). Folders made while
    the state also stamped the manifest, which notebook 01 now rewrites when only the volumes' paths
    changed, are read without it."""
    if not (folder / BASE).is_file():
        return None
    made = json.loads((folder / BASE).read_text())
    made.pop("manifest.csv", None)
    return made


def prepare(run: Run, seed: int) -> Path:
    """``<run>/seeds/seed<seed>`` with what notebooks 03, 04 and 09 read from the run (module doc)."""
    state = base_state(run)
    folder = seed_folder(run, seed)
    made = made_from(folder)
    if made is not None and made != state:
        raise ValueError(f"{folder} was made from another state of the run (its GM-VAE, slices, classifier or "
                         "profile have changed since): delete the folder to train this seed again")
    if made is None and folder.is_dir() and any(folder.iterdir()):
        raise ValueError(f"{folder} holds files but no record of the run state they were made from (older code, "
                         "or not made by `make seeds`): delete the folder to train this seed again")
    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    link = folder / "slices"
    if link.is_symlink() and not link.exists():
        link.unlink()  # the run folder was moved
    if not link.is_symlink():
        link.symlink_to(os.path.relpath(run.slices.resolve(), folder.resolve()), target_is_directory=True)
    metrics = read_metrics(run.dir)
    for name in ("gmvae.pt", "scanner-classifier.pt", "paired-unet.pt"):  # paired-unet: only with a paired split
        if (run.checkpoints / name).is_file() and not (folder / "checkpoints" / name).exists():
            with atomic_path(folder / "checkpoints" / name) as tmp:
                shutil.copy2(run.checkpoints / name, tmp)
    if made is None:
        atomic_write_text(folder / "metrics.json",
                          json.dumps({s: metrics[s] for s in ("01_data", "02_gmvae")}, indent=2, sort_keys=True))
        atomic_write_text(folder / BASE, json.dumps(state, indent=2, sort_keys=True))
    return folder


def train_seed(run: Run, seed: int) -> int:
    """Prepare seed ``seed``'s folder and run notebooks 03, 04 and 09 there (the pipeline's exit code)."""
    from . import pipeline

    folder = prepare(run, seed)
    if _complete(folder):
        print(f"seed {seed}: {folder} has its results already (delete the folder to train it again)")
        return 0
    options = run_options(run)  # the run's own stage-2 settings, if it was made with any
    return pipeline.main(["--profile", run.profile.name, "--run-dir", str(folder), "--seed", str(seed),
                          "--only", "03", "04", "09", *(["--options", options] if options else [])])


def _complete(folder: Path) -> bool:
    metrics = read_metrics(folder)
    return all(m.section in metrics for m in methods.MODELS) and "09_beyond" in metrics


def folders(run: Run) -> tuple[dict[int, Path], list[str]]:
    """{seed: run folder} of the run's own seed and of every complete seed made from the run as it
    is now, and a note on each seed folder left out."""
    found, left_out, state = {run_seed(run): run.dir}, [], base_state(run)
    for path in sorted((run.dir / FOLDER).glob("seed*")):
        seed = path.name.removeprefix("seed")
        if not seed.isdigit() or int(seed) in found:
            continue
        if not _complete(path):
            left_out.append(f"seed {seed} (incomplete)")
        elif made_from(path) != state:
            left_out.append(f"seed {seed} (made from another state of the run)")
        else:
            found[int(seed)] = path
    return dict(sorted(found.items())), left_out


def _value(metrics: dict, where, key: str) -> float:
    """``key`` of section ``where`` of a whole ``metrics.json``, or row ``key`` of measure ``where``
    (NaN where it is not recorded)."""
    value = where.read(metrics, key) if isinstance(where, measures.Measure) else metrics.get(where, {}).get(key)
    return float(value) if isinstance(value, (int, float)) else np.nan


def _read(metrics: dict, method, source) -> float:
    """``method``'s value of the measure ``source`` of :data:`MEASURES`."""
    return (_value(metrics, source, method.name) if isinstance(source, measures.Measure)
            else _value(metrics, method.section, source))


def scores(seeds: dict[int, Path]) -> pd.DataFrame:
    """One row per seed and model, one column per measure of :data:`MEASURES` (NaN where a run has
    none, e.g. no clean truth in your data)."""
    rows = []
    for seed, path in seeds.items():
        metrics = read_metrics(path)
        rows += [{"seed": seed, "model": m.name} | {label: _read(metrics, m, source) for source, label, _ in MEASURES}
                 for m in methods.MODELS]
    return pd.DataFrame(rows)


def compare(df: pd.DataFrame) -> pd.DataFrame:
    """Per measure: each model's mean (sd) over the seeds, and GMM-DRIT − DRIT++ per seed: its mean,
    in how many seeds GMM-DRIT is better by the measure's direction, a 95 % t-interval over seeds."""
    a, b = (df[df.model == m.name].set_index("seed") for m in methods.MODELS)
    rows = []
    for _, label, higher in MEASURES:
        if label not in df:
            continue
        d = (a[label] - b[label]).dropna()
        if d.empty:
            continue
        mean, lo, hi = t_interval(d)
        better = "" if higher is None else f"{int(((d > 0) if higher else (d < 0)).sum())} of {len(d)}"
        side = {True: "higher", False: "lower", None: "neither (1: as far as the scans differ)"}[higher]
        rows.append({"measure": label, "better": side,
                     "seeds": len(d), "GMM-DRIT": _mean_sd(a.loc[d.index, label]),
                     "DRIT++": _mean_sd(b.loc[d.index, label]), "GMM-DRIT − DRIT++": mean,
                     "GMM-DRIT better in": better,
                     "95 % t-interval": f"[{lo:+.3f}, {hi:+.3f}]" if len(d) > 1 else ""})
    return pd.DataFrame(rows)


def _mean_sd(v: pd.Series) -> str:
    return f"{v.mean():.3f} ({v.std(ddof=1):.3f})" if len(v) > 1 else f"{v.mean():.3f}"


def controls(run: Run) -> dict[str, str]:
    """{measure's label: its controls and ceilings in the run (:data:`CONTROLS`)}, for those it has."""
    metrics, out = read_metrics(run.dir), {}
    for source, label, _ in MEASURES:
        what, keys = CONTROLS.get(source, ("", []))
        values = [_value(metrics, where, key) for where, key in keys]
        if not np.isnan(values).all():
            out[label] = f"{what} " + " / ".join("–" if np.isnan(v) else f"{v:.3f}" for v in values)
    return out


def report(run: Run) -> str:
    """Write ``seeds.md``, ``seeds.csv`` and ``seeds.png`` into the run's figures; the Markdown."""
    seeds, left_out = folders(run)
    df = scores(seeds).dropna(axis=1, how="all")
    own, notes = run_seed(run), controls(run)
    note = (f"GMM-DRIT and DRIT++ over stage-2 seeds {', '.join(map(str, seeds))} (seed {own}: the run {run.dir.name} "
            f"itself; the others trained anew over its slices and GM-VAE by nbutils.seeds), profile "
            f"{run.profile.name}; {plots.SIMULATED}."
            + (f" Left out: {', '.join(left_out)}." if left_out else "")
            + f" The run's controls and ceilings (seed {own}):\n"
            + "\n".join(f"- {label}: {text}" for label, text in notes.items()))
    text = note + "\n\n" + plots.markdown_table(compare(df)) + "\n\nEvery seed:\n\n" + plots.markdown_table(df)
    with atomic_path(run.figures / "seeds.csv") as tmp:
        df.to_csv(tmp, index=False)
    atomic_write_text(run.figures / "seeds.md", text + "\n")
    columns = [label for _, label, _ in MEASURES if label in df]
    fig = plots.paired_dots(df, columns, tuple(m.name for m in methods.MODELS), "model", "seed",
                            f"Stage 2 over seeds, run {run.dir.name} ({plots.SIMULATED}); "
                            f"under each measure the run's controls (seed {own})", notes)
    plots.save_figure(fig, "seeds", run.figures)
    return text


def main(argv=None) -> int:
    from .config import default_run_dir
    from .io import Busy
    from .pipeline import run_folder, run_folder_lock

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="quick", help="the run's profile")
    ap.add_argument("--data", default="", help="the run's data CSV (the run folder is named after it, as in make run)")
    ap.add_argument("--run", default="", help="run name: data/runs/<name>")
    ap.add_argument("--run-dir", default="")
    ap.add_argument("--seeds", type=int, nargs="*", default=[], help="stage-2 seeds to train (none: only the table)")
    args = ap.parse_args(argv)
    try:
        if any(s < 0 for s in args.seeds):
            raise ValueError(f"seeds are whole numbers ≥ 0, not {args.seeds}")
        folder = run_folder(args.profile, args.data, args.run, args.run_dir) or default_run_dir(args.profile)
        if not (resolve(folder) / "metrics.json").is_file():
            raise FileNotFoundError(f"{resolve(folder)} holds no run: make run first (with the same PROFILE, DATA, RUN)")
        run = setup(args.profile, str(folder))
        with run_folder_lock(run.dir):  # no `make run` over the run, nor other seeds, meanwhile
            own = run_seed(run)
            base_state(run)
            for seed in args.seeds:
                if seed == own:
                    print(f"seed {seed} is the run's own: its numbers are the run's")
                    continue
                print(f"\n===== stage-2 seed {seed} =====", flush=True)
                if train_seed(run, seed):
                    print(f"error: seed {seed} stopped (the executed notebooks: "
                          f"{seed_folder(run, seed) / 'notebooks'})", file=sys.stderr)
                    return 1
            print("\n" + report(run) + f"\n\nwritten: {run.figures / 'seeds.md'}, seeds.csv, seeds.png")
    except (ValueError, FileNotFoundError, Busy) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
