"""Run the numbered notebooks headless with papermill, in order, into one run folder.

    python -m nbutils.pipeline --profile quick                       # what `make run` does
    python -m nbutils.pipeline --data my/volumes.csv [--run name]    # `make run DATA=... [RUN=...]`
    python -m nbutils.pipeline --profile smoke --only 01             # one notebook

Without ``--data`` the notebooks use the built-in simulated set and the run folder is
``data/runs/<profile>``. With ``--data CSV`` (the CSV notebook 01 reads; README, "Use it on your
data") they use those volumes and the run folder is ``data/runs/<name>``, where ``name`` is
``--run``, by default the CSV's file name without ``.csv``. The CSV is checked before anything
runs. Executed copies go to ``<run>/notebooks/`` (never next to the sources). At the end a summary
of ``<run>/metrics.json`` is printed (:func:`nbutils.report.results_table`).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .config import NOTEBOOKS, PROFILES, default_run_dir, get_profile, read_metrics, setup
from .report import results_table


def notebooks(only: list[str] | None = None):
    found = sorted(p for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    return [p for p in found if not only or p.name[:2] in only]


def summary(metrics: dict) -> str:
    """One line per headline number: ``notebook  key  value``."""
    lines = []
    for section, values in metrics.items():
        for key, value in (values or {}).items():
            if isinstance(value, (int, float)):
                lines.append(f"{section:<22} {key:<44} {value:.4g}")
    return "\n".join(lines)


def run_folder(profile: str, data: str = "", name: str = "", run_dir: str = "") -> str:
    """The run folder the arguments name ('' = the profile's default). A run on your data gets
    ``data/runs/<name>``, ``name`` defaulting to the CSV's file name; it may not take a profile's
    name, whose folder belongs to the built-in data."""
    if name and run_dir:
        raise ValueError("give a run name (--run, RUN=) or a run folder (--run-dir, RUN_DIR=), not both")
    if run_dir or not (data or name):
        return run_dir
    name = name or Path(data).name.removesuffix(".csv")
    if name in PROFILES or not name or Path(name).name != name:
        raise ValueError(f"run name {name!r}: choose a plain folder name other than {', '.join(PROFILES)} "
                         "(those are the built-in data's runs), e.g. RUN=my-site")
    return str(default_run_dir(name))


def check_data(csv: str, profile: str, seed: int) -> str:
    """The CSV as an absolute path, after :func:`nbutils.data.read_table` has checked it (columns,
    files, domains, splits): a bad CSV stops here, before any notebook runs."""
    from .data import read_table

    path = Path(csv).expanduser().resolve()  # relative to where the command runs (make: the repository)
    read_table(path, get_profile(profile).test_fraction, seed)
    return str(path)


def main(argv=None) -> int:
    import papermill as pm

    from .volumes import DataError

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--data", default="", help="a data CSV (path,domain[,subject][,split][,rescan]); "
                                                "default: the built-in simulated set")
    ap.add_argument("--run", default="", help="run name: the run folder is data/runs/<name> "
                                               "(default with --data: the CSV's file name)")
    ap.add_argument("--run-dir", default="")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", help="two-digit notebook numbers to run")
    args = ap.parse_args(argv)
    try:
        run_dir = run_folder(args.profile, args.data, args.run, args.run_dir)
        data = check_data(args.data, args.profile, args.seed) if args.data else ""
    except (ValueError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    run = setup(args.profile, run_dir, args.seed)
    out = run.dir / "notebooks"
    out.mkdir(exist_ok=True)
    params = dict(profile=run.profile.name, run_dir=str(run.dir), seed=run.seed, data_csv=data)
    os.environ["NB_HEADLESS"] = "1"  # the kernels inherit it: no live widgets (nbutils.explorer)
    timings = {}
    for nb in notebooks(args.only):
        print(f"== {nb.name}  (profile {run.profile.name}, run folder {run.dir})", flush=True)
        declared = pm.inspect_notebook(str(nb))
        start = time.perf_counter()
        try:
            pm.execute_notebook(str(nb), str(out / nb.name), parameters={k: v for k, v in params.items() if k in declared},
                                cwd=str(NOTEBOOKS), progress_bar=True, kernel_name="python3")
        except pm.PapermillExecutionError as err:
            print(f"\n{nb.name} stopped: {err.ename}: {err.evalue}\n(the executed copy with the traceback: "
                  f"{out / nb.name})", file=sys.stderr)
            return 1
        timings[nb.name] = time.perf_counter() - start
        print(f"   done in {timings[nb.name]:.0f} s", flush=True)
    print("\nwall time per notebook (s): " + ", ".join(f"{k[:2]} {v:.0f}" for k, v in timings.items()))
    print(f"total: {sum(timings.values()):.0f} s\n\nheadline numbers ({run.metrics_file}"
          f"{'; simulated data' if not data else ''}):")
    metrics = read_metrics(run.dir)
    table = results_table(metrics)
    # the evaluations' method x measure table once notebooks 05-09 have run, else every number
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}") if len(table) else summary(metrics))
    print(f"\nrun folder: {run.dir}\nfigures and tables: {run.figures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
