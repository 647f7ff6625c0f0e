"""Stage 2 over seeds: both models trained anew with other seeds over one run's slices and GM-VAE,
scored as the run scores them, and compared seed by seed.

    python -m nbutils.seeds --seeds 1 2 3 4                          # `make seeds SEEDS="1 2 3 4"`
    python -m nbutils.seeds --run second --seeds 1 2                 # a run on your data (`RUN=second`)
    python -m nbutils.seeds --seeds                                  # the table of the seeds already run

Another stage-2 seed moves either model's scores by about as much as the two models differ
(docs/experiments.md, "GMM-DRIT against DRIT++ over seeds"), so which is ahead is a question over
seeds. Seed ``N`` gets its own run folder, ``<run>/seeds/seed<N>``, holding what stage 2 reads from
the run: its slices (linked, not copied), its GM-VAE, the frozen scanner classifier and the paired
reference of notebook 09, and the run's sections 01 and 02 of ``metrics.json``. Only stage 2 and
what depends on it differ between seeds: the pipeline runs notebooks 03, 04 and 09 there with
``--seed N``, in two lanes as ``make run`` does. A seed whose folder already has notebook 09's
numbers is not run again (delete the folder to redo it).

The table has the run itself as its own seed and the seeds' folders beside it: each measure of
:data:`MEASURES` for GMM-DRIT and DRIT++, the mean difference, in how many seeds it favours
GMM-DRIT, and a 95 % t-interval over seeds; under it the run's controls and ceilings
(:data:`CONTROLS`). It is printed and written to ``<run's figures>/seeds.{md,csv}``, with a figure
``seeds.png`` of every seed's pair of scores.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from .config import Run, read_metrics, setup
from .io import atomic_write_text

MODELS = {"GMM-DRIT": "03_gmmdrit", "DRIT++": "04_dritpp"}
# (label, section or None for the model's own, key with {model}, higher is better)
MEASURES = (
    ("target sensitivity", None, "target_sensitivity", True),
    ("SSIM vs target scan", None, "d2d_reference_guided_ssim_vs_target_scan", True),
    ("SSIM vs clean truth", None, "d2d_reference_guided_ssim_vs_clean_truth", True),
    ("PSNR vs clean truth (dB)", None, "d2d_reference_guided_psnr_vs_clean_truth", True),
    ("scanner-free agreement", None, "sf_agreement_outputs_ssim", True),
    ("structure", None, "sf_structure_ssim", True),
    ("dark_overlap", None, "sf_dark_overlap", True),
    ("z^c probe", None, "probe_zc", False),
    ("z^c scanner share", None, "share_zc", False),
    ("frozen residual, median of 8 draws", "09_beyond", "residual acc frozen draws median {model}", False),
    ("retrained classifier", "09_beyond", "residual acc retrained {model}", False),
)
# what each measure is read beside: (label, section, key) of the run's own metrics
CONTROLS = (
    ("identity / histogram matching / ceiling vs target scan", "03_gmmdrit",
     ("d2d_identity_ssim_vs_target_scan", "d2d_histogram_matching_ssim_vs_target_scan",
      "d2d_ceiling_b_rescanned_ssim_vs_target_scan")),
    ("identity / histogram matching / ceiling vs clean truth", "03_gmmdrit",
     ("d2d_identity_ssim_vs_clean_truth", "d2d_histogram_matching_ssim_vs_clean_truth",
      "d2d_ceiling_bs_own_scan_ssim_vs_clean_truth")),
    ("agreement of the inputs / GMM-DRIT's / DRIT++'s blur control", None,
     ("03_gmmdrit:sf_agreement_inputs_ssim", "03_gmmdrit:sf_agreement_blur_control_ssim",
      "04_dritpp:sf_agreement_blur_control_ssim")),
    ("structure of the clean truth", "03_gmmdrit", ("sf_structure_clean_truth_ssim",)),
    ("dark_overlap of the inputs", "03_gmmdrit", ("sf_dark_overlap_inputs",)),
    ("probe bar / chance", "03_gmmdrit", ("probe_bar", "chance")),
)
FOLDER = "seeds"


def seed_folder(run: Run, seed: int) -> Path:
    return run.dir / FOLDER / f"seed{seed}"


def run_seed(run: Run) -> int:
    """The stage-2 seed of the run itself, as notebook 03 recorded it with its checkpoint."""
    found = re.search(r"seed (\d+)$", str(read_metrics(run.dir).get("03_gmmdrit", {}).get("checkpoint", "")))
    if not found:
        raise ValueError(f"{run.metrics_file} has no stage-2 results: run notebooks 03, 04 and 09 there first")
    return int(found.group(1))


def prepare(run: Run, seed: int) -> Path:
    """``<run>/seeds/seed<seed>`` with what notebooks 03, 04 and 09 read from the run (module doc)."""
    metrics = read_metrics(run.dir)
    missing = [p for p in (run.slices / "manifest.csv", run.checkpoints / "gmvae.pt") if not p.is_file()]
    missing += [s for s in ("01_data", "02_gmvae") if s not in metrics]
    if missing:
        raise FileNotFoundError(f"the run {run.dir} lacks {', '.join(map(str, missing))}: run notebooks 01 and 02 first")
    folder = seed_folder(run, seed)
    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    if not (folder / "slices").exists():
        (folder / "slices").symlink_to(run.slices.resolve(), target_is_directory=True)
    for name in ("gmvae.pt", "scanner-classifier.pt", "paired-unet.pt"):  # the references: made if absent
        if (run.checkpoints / name).is_file() and not (folder / "checkpoints" / name).exists():
            shutil.copy2(run.checkpoints / name, folder / "checkpoints" / name)
    if not (folder / "metrics.json").exists():
        atomic_write_text(folder / "metrics.json",
                          json.dumps({s: metrics[s] for s in ("01_data", "02_gmvae")}, indent=2, sort_keys=True))
    return folder


def train_seed(run: Run, seed: int) -> int:
    """Prepare seed ``seed``'s folder and run notebooks 03, 04 and 09 there (the pipeline's exit code)."""
    from . import pipeline

    folder = prepare(run, seed)
    if "09_beyond" in read_metrics(folder):
        print(f"seed {seed}: {folder} has its results already (delete the folder to train it again)")
        return 0
    return pipeline.main(["--profile", run.profile.name, "--run-dir", str(folder), "--seed", str(seed),
                          "--only", "03", "04", "09"])


def _value(metrics: dict, section: str, key: str) -> float:
    value = metrics.get(section, {}).get(key)
    return float(value) if isinstance(value, (int, float)) else np.nan


def scores(run: Run) -> pd.DataFrame:
    """One row per seed that has notebook 03's numbers (the run's own seed first) and model, one
    column per measure of :data:`MEASURES` (NaN where a run has none, e.g. no clean truth)."""
    folders = {run_seed(run): run.dir}
    for path in sorted((run.dir / FOLDER).glob("seed*"), key=lambda p: int(p.name[4:]) if p.name[4:].isdigit() else -1):
        if path.name[4:].isdigit() and "03_gmmdrit" in read_metrics(path):
            folders.setdefault(int(path.name[4:]), path)
    rows = []
    for seed, path in folders.items():
        metrics = read_metrics(path)
        for model, own in MODELS.items():
            rows.append({"seed": seed, "model": model} | {
                label: _value(metrics, section or own, key.format(model=model)) for label, section, key, _ in MEASURES})
    return pd.DataFrame(rows)


def compare(df: pd.DataFrame) -> pd.DataFrame:
    """Per measure: each model's mean (sd) over seeds, GMM-DRIT − DRIT++ (mean, seeds where GMM-DRIT
    is better by the measure's direction, 95 % t-interval over seeds; none for fewer than 2 seeds)."""
    from scipy import stats

    a, b = (df[df.model == m].set_index("seed") for m in MODELS)
    rows = []
    for label, _, _, higher in MEASURES:
        d = (a[label] - b[label]).dropna()
        if d.empty:
            continue
        n = len(d)
        half = stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / np.sqrt(n) if n > 1 else np.nan
        better = int(((d > 0) if higher else (d < 0)).sum())
        rows.append({"measure": label, "better": "higher" if higher else "lower", "seeds": n,
                     "GMM-DRIT": _mean_sd(a[label].dropna()), "DRIT++": _mean_sd(b[label].dropna()),
                     "GMM-DRIT − DRIT++": d.mean(), "GMM-DRIT better in": f"{better} of {n}",
                     "95 % t-interval": f"[{d.mean() - half:+.3f}, {d.mean() + half:+.3f}]" if n > 1 else ""})
    return pd.DataFrame(rows)


def _mean_sd(v: pd.Series) -> str:
    return f"{v.mean():.3f} ({v.std(ddof=1):.3f})" if len(v) > 1 else f"{v.mean():.3f}"


def controls(run: Run) -> str:
    """The run's controls and ceilings of :data:`CONTROLS`, one line each (those it has)."""
    metrics, lines = read_metrics(run.dir), []
    for label, section, keys in CONTROLS:
        values = [_value(metrics, *(k.split(":") if section is None else (section, k))) for k in keys]
        if not np.isnan(values).all():
            lines.append(f"- {label}: " + " / ".join(f"{v:.3f}" for v in values))
    return "\n".join(lines)


def figure(df: pd.DataFrame, title: str):
    """One panel per measure: each seed's GMM-DRIT and DRIT++ joined by a line."""
    import matplotlib.pyplot as plt

    labels = [label for label, *_ in MEASURES if df[label].notna().any()]
    ncols = 4
    fig, axes = plt.subplots(-(-len(labels) // ncols), ncols, figsize=(3.2 * ncols, 2.6 * -(-len(labels) // ncols)),
                             squeeze=False)
    wide = {m: df[df.model == m].set_index("seed") for m in MODELS}
    for ax, label in zip(axes.flat, labels):
        for seed in wide["GMM-DRIT"].index:
            ax.plot([0, 1], [wide[m].loc[seed, label] for m in MODELS], "o-", color="0.4", alpha=0.7)
            ax.annotate(str(seed), (0, wide["GMM-DRIT"].loc[seed, label]), xytext=(-12, 0),
                        textcoords="offset points", fontsize=7, va="center")
        ax.set_xticks([0, 1], list(MODELS))
        ax.set_xlim(-0.4, 1.3)
        ax.set_title(label, fontsize=9)
    for ax in list(axes.flat)[len(labels):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def report(run: Run) -> str:
    """Write ``seeds.md``, ``seeds.csv`` (every seed's scores) and ``seeds.png`` into the run's
    figures and return the Markdown."""
    from . import plots

    df = scores(run)
    table = compare(df)
    seeds = sorted(df.seed.unique())
    note = (f"GMM-DRIT and DRIT++ over stage-2 seeds {', '.join(map(str, seeds))} (seed {run_seed(run)}: the run "
            f"{run.dir.name} itself; the others trained anew over its slices and GM-VAE by nbutils.seeds), "
            f"profile {run.profile.name}; {plots.SIMULATED}. The run's controls and ceilings:\n{controls(run)}")
    text = note + "\n\n" + plots.markdown_table(table) + "\n\nEvery seed:\n\n" + plots.markdown_table(df)
    run.figures.mkdir(parents=True, exist_ok=True)
    df.to_csv(run.figures / "seeds.csv", index=False)
    atomic_write_text(run.figures / "seeds.md", text + "\n")
    plots.save_figure(figure(df, f"Stage 2 over seeds, run {run.dir.name} ({plots.SIMULATED})"), "seeds", run.figures)
    return text


def main(argv=None) -> int:
    from .pipeline import run_folder

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--data", default="", help="the run's data CSV (its run folder is named after it, as in make run)")
    ap.add_argument("--run", default="", help="run name: data/runs/<name>")
    ap.add_argument("--run-dir", default="")
    ap.add_argument("--seeds", type=int, nargs="*", default=[], help="stage-2 seeds to train (none: only the table)")
    args = ap.parse_args(argv)
    try:
        run = setup(args.profile, run_folder(args.profile, args.data, args.run, args.run_dir))
        own = run_seed(run)
        for seed in args.seeds:
            if seed == own:
                print(f"seed {seed} is the run's own: its numbers are the run's")
                continue
            print(f"\n===== stage-2 seed {seed} =====", flush=True)
            if train_seed(run, seed):
                print(f"error: seed {seed} stopped (the executed notebooks: {seed_folder(run, seed) / 'notebooks'})",
                      file=sys.stderr)
                return 1
        print("\n" + report(run) + f"\n\nwritten: {run.figures / 'seeds.md'}, seeds.csv, seeds.png")
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
