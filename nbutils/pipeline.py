"""Run the numbered notebooks headless with papermill, in order (03 and 04 side by side where
the cores allow), into one run folder.

    python -m nbutils.pipeline --profile quick                       # what `make run` does
    python -m nbutils.pipeline --data my/volumes.csv [--run name]    # `make run DATA=... [RUN=...]`
    python -m nbutils.pipeline --profile smoke --only 01             # one notebook

Without ``--data`` the notebooks use the built-in simulated set and the run folder is
``data/runs/<profile>``. With ``--data CSV`` (the CSV notebook 01 reads; README, "Use it on your
data") they use those volumes and the run folder is ``data/runs/<name>``, where ``name`` is
``--run``, by default the CSV's file name without ``.csv``. The CSV is checked before anything
runs. Executed copies go to ``<run>/notebooks/`` (never next to the sources). At the end a summary
of ``<run>/metrics.json`` is printed (:func:`nbutils.report.results_table`).

Notebooks 03 and 04 train the two stage-2 models, which need nothing of each other (03 reads 02's
GM-VAE, 04 only 01's slices). On a machine with two or more CPU cores and no GPU they run side by
side, each in its own process bound to half of the cores (:data:`SIDE_BY_SIDE`); elsewhere (a GPU,
no CPU affinity as on macOS or Windows, ``--one-at-a-time``) one after the other. Why, what it saves
and how the numbers then differ from a notebook run alone: docs/design.md, "Notebooks 03 and 04 side
by side".
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from .config import NOTEBOOKS, PROFILES, default_run_dir, get_profile, read_metrics, setup
from .report import results_table


def notebooks(only: list[str] | None = None):
    found = sorted(p for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    return [p for p in found if not only or p.name[:2] in only]


# Run side by side where the machine allows (:func:`core_shares`); see the module's docstring.
SIDE_BY_SIDE = ("03", "04")


def steps(found: list[Path]) -> list[list[Path]]:
    """``found`` in order as steps of notebooks that run together: the notebooks numbered in
    :data:`SIDE_BY_SIDE` form one step where the first of them stands, if at least two are in
    ``found``; every other notebook is a step of its own."""
    together = [p for p in found if p.name[:2] in SIDE_BY_SIDE]
    if len(together) < 2:
        return [[p] for p in found]
    return [together if p == together[0] else [p] for p in found if p not in together[1:]]


def core_shares(n: int) -> list[set[int]] | None:
    """The CPU cores this process may use, split into ``n`` disjoint shares of (nearly) equal size;
    None if they cannot be: fewer cores than ``n``, a platform without CPU affinity, or a GPU
    (which the models train on instead, one at a time)."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_setaffinity") else []
    if n < 2 or len(cores) < n:
        return None
    import torch

    if torch.cuda.is_available():
        return None
    return [set(cores[len(cores) * i // n: len(cores) * (i + 1) // n]) for i in range(n)]


def execute(nb: Path, out: Path, params: dict, progress: bool = True) -> tuple[float, str]:
    """Run one notebook with papermill into ``out``: (seconds, '' or the error that stopped it)."""
    import papermill as pm

    start = time.perf_counter()
    try:
        declared = pm.inspect_notebook(str(nb))
        pm.execute_notebook(str(nb), str(out), parameters={k: v for k, v in params.items() if k in declared},
                            cwd=str(NOTEBOOKS), progress_bar=progress, kernel_name="python3")
    except pm.PapermillExecutionError as err:  # a cell raised
        return time.perf_counter() - start, f"{err.ename}: {err.evalue}"
    except Exception as err:  # the kernel died, a timeout, ...: reported the same way, not as a traceback
        return time.perf_counter() - start, f"{type(err).__name__}: {err}"
    return time.perf_counter() - start, ""


def _execute_on(cores: set[int], nb: Path, out: Path, params: dict) -> tuple[float, str]:
    """:func:`execute` in a worker process bound to ``cores``; its kernel inherits them."""
    os.sched_setaffinity(0, cores)
    return execute(nb, out, params, progress=False)


def _result(future) -> tuple[float, str]:
    try:
        return future.result()
    except Exception as err:  # the worker process itself died (killed, out of memory)
        return 0.0, f"{type(err).__name__}: {err}"


def execute_side_by_side(nbs: list[Path], out: Path, params: dict, shares: list[set[int]]) -> list[tuple[float, str]]:
    """Run ``nbs`` at once, each in a fresh process on its share of the cores; waits for all."""
    spawn = multiprocessing.get_context("spawn")  # no fork of a process that holds kernel sockets
    pools = [ProcessPoolExecutor(1, mp_context=spawn) for _ in nbs]
    try:
        futures = [pool.submit(_execute_on, cores, nb, out / nb.name, params)
                   for pool, cores, nb in zip(pools, shares, nbs)]
        return [_result(f) for f in futures]
    finally:
        for pool in pools:
            pool.shutdown(wait=True, cancel_futures=True)


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
    ap.add_argument("--one-at-a-time", action="store_true",
                    help=f"never run notebooks {' and '.join(SIDE_BY_SIDE)} side by side")
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
    timings, started = {}, time.perf_counter()

    def done(nb: Path, seconds: float, error: str) -> bool:
        if error:
            print(f"\n{nb.name} stopped: {error}\n(the executed copy with the traceback: {out / nb.name})",
                  file=sys.stderr)
            return False
        timings[nb.name] = seconds
        print(f"   {nb.name[:2]} done in {seconds:.0f} s", flush=True)
        return True

    for step in steps(notebooks(args.only)):
        shares = None if args.one_at_a_time else core_shares(len(step))
        if len(step) > 1 and shares:
            print(f"== {', '.join(nb.name for nb in step)}  side by side, on cores "
                  f"{' and '.join(','.join(map(str, sorted(c))) for c in shares)} (profile {run.profile.name}, "
                  f"run folder {run.dir})", flush=True)
            results = execute_side_by_side(step, out, params, shares)
            if not all([done(nb, *result) for nb, result in zip(step, results)]):
                return 1
            continue
        for nb in step:
            print(f"== {nb.name}  (profile {run.profile.name}, run folder {run.dir})", flush=True)
            if not done(nb, *execute(nb, out / nb.name, params)):
                return 1
    wall = time.perf_counter() - started
    print("\nwall time per notebook (s): " + ", ".join(f"{k[:2]} {v:.0f}" for k, v in timings.items()))
    print(f"total: {wall:.0f} s{' (notebooks side by side counted once)' if wall < sum(timings.values()) - 1 else ''}"
          f"\n\nheadline numbers ({run.metrics_file}{'; simulated data' if not data else ''}):")
    metrics = read_metrics(run.dir)
    table = results_table(metrics)
    # the evaluations' method x measure table once notebooks 05-09 have run, else every number
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}") if len(table) else summary(metrics))
    print(f"\nrun folder: {run.dir}\nfigures and tables: {run.figures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
