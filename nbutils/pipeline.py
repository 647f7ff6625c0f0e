"""Run the numbered notebooks headless with papermill, in order, into one run folder.

    python -m nbutils.pipeline --profile quick            # what `make run` does
    python -m nbutils.pipeline --profile smoke --only 01  # one notebook

Executed copies go to ``<run>/notebooks/`` (never next to the sources). At the end a
summary of ``<run>/metrics.json`` is printed (:func:`nbutils.report.results_table`).
"""
from __future__ import annotations

import argparse
import sys
import time

from .config import NOTEBOOKS, read_metrics, setup
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


def main(argv=None) -> int:
    import papermill as pm

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--run-dir", default="")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", help="two-digit notebook numbers to run")
    args = ap.parse_args(argv)
    run = setup(args.profile, args.run_dir, args.seed)
    out = run.dir / "notebooks"
    out.mkdir(exist_ok=True)
    params = dict(profile=run.profile.name, run_dir=str(run.dir), seed=run.seed)
    timings = {}
    for nb in notebooks(args.only):
        print(f"== {nb.name}  (profile {run.profile.name}, run folder {run.dir})", flush=True)
        start = time.perf_counter()
        pm.execute_notebook(str(nb), str(out / nb.name), parameters=params, cwd=str(NOTEBOOKS),
                            progress_bar=True, kernel_name="python3")
        timings[nb.name] = time.perf_counter() - start
        print(f"   done in {timings[nb.name]:.0f} s", flush=True)
    print("\nwall time per notebook (s): " + ", ".join(f"{k[:2]} {v:.0f}" for k, v in timings.items()))
    print(f"total: {sum(timings.values()):.0f} s\n\nheadline numbers ({run.metrics_file}; simulated data):")
    metrics = read_metrics(run.dir)
    table = results_table(metrics)
    # the evaluations' method x measure table once notebooks 05-09 have run, else every number
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}") if len(table) else summary(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
