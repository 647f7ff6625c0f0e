"""Run the numbered notebooks headless with papermill, in order (in two lanes side by side where
the cores allow), into one run folder.

    python -m nbutils.pipeline --profile quick                       # what `make run` does
    python -m nbutils.pipeline --data my/volumes.csv [--run name]    # `make run DATA=... [RUN=...]`
    python -m nbutils.pipeline --profile smoke --only 01             # one notebook
    python -m nbutils.pipeline --run trial --options '{"dc_steps": 3}'  # stage 2 with other settings

Without ``--data`` the notebooks use the built-in simulated set and the run folder is
``data/runs/<profile>``. With ``--data CSV`` (the CSV notebook 01 reads; README, "Use it on your
data") they use those volumes and the run folder is ``data/runs/<name>``, where ``name`` is
``--run``, by default the CSV's file name without ``.csv`` (and ``-<profile>`` for a profile
other than quick). The CSV is checked before anything
runs. Executed copies go to ``<run>/notebooks/`` (never next to the sources). At the end a summary
of ``<run>/metrics.json`` is printed (:func:`nbutils.report.results_table`), with the bars stage 2
is held to (:func:`nbutils.report.bars_table`).

On a machine with two or more CPU cores and no GPU the pipeline runs in two lanes where it can
(:data:`LANES`), each lane a process bound to half of the cores whose notebooks run one after the
other: 02 then 03 beside 04, the GMM-DRIT ablation with known labels that 03 would otherwise train
when stage 1 misses the scanners (once 02 has ended) and the references notebooks 06 and 09 would
otherwise train first, and later 09 beside the training split's outputs and the classifiers
retrained on them, which 09 would otherwise make first, then 05-08, 10 and 11 (:func:`prepare`); a
lane that has run out takes
the other lane's last waiting notebook among 05-08, 10 and 11 (:data:`ANY_LANE`). Both lanes get as
many cores (:func:`core_shares`). Elsewhere (a GPU, no CPU affinity as on macOS or Windows,
``--one-at-a-time``) every notebook runs one after the other in its numbered order.
Why, what it saves and how the numbers then differ from a notebook run alone: docs/design.md,
"Two lanes".
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import ExitStack, contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

from .config import NOTEBOOKS, PROFILES, SUPERSEDED, default_run_dir, get_profile, read_metrics, resolve, setup
from .io import Busy, locked


def notebooks(only: list[str] | None = None):
    found = sorted(p for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    return [p for p in found if not only or p.name[:2] in only]


# Lane tasks besides the notebooks (:func:`prepare`): what the notebooks of NEEDED_BY would otherwise
# make first, made in the other lane so that they load it.
REFERENCES = "references"
TRAINING_OUTPUTS = "training-outputs"
KNOWN_LABELS = "known-labels"
NEEDED_BY = {REFERENCES: ("06", "09"), TRAINING_OUTPUTS: ("09",), KNOWN_LABELS: ("03",)}
# Where the machine allows (:func:`core_shares`), each group runs as two lanes side by side, each
# lane's tasks one after the other. A lane's notebooks need only what the notebooks before the group
# and before them in their lane made: 03 reads 02's GM-VAE, 04 only 01's slices, the references only
# the slices; 05-11 and the training outputs read the models of 03 and 04, and nothing of 09. 09 waits
# for the training outputs and the classifiers retrained on them if it wants them before they are made
# (:func:`nbutils.outputs.method_outputs`, :func:`nbutils.classifier.retrained`); 03 likewise for
# the known-labels ablation, trained under a lock (:func:`nbutils.stage2.train_variant`). That task
# reads 02's GM-VAE and E1, made in the other lane: it starts only once 02 has ended (:data:`AFTER`).
LANES = ((("02", "03"), (KNOWN_LABELS, "04", REFERENCES)),
         (("09",), (TRAINING_OUTPUTS, "05", "06", "07", "08", "10", "11")))
# Tasks that read what a notebook of another lane of their group makes: while that notebook is waiting
# or running, their lane starts the next task of its queue instead (:func:`next_task`).
AFTER = {KNOWN_LABELS: ("02",)}
# Notebooks that need nothing of the other tasks of their group: a lane that has run out of tasks
# takes the last of them still waiting in the other lane (on a small run 09 ends long before 05-11).
ANY_LANE = frozenset({"05", "06", "07", "08", "10", "11"})


def plan(found: list[Path], lanes: bool = True, without: frozenset[str] = frozenset()) -> list[list[list[Path | str]]]:
    """``found`` as steps, each a list of lanes that run side by side, each lane a list of tasks (a
    notebook, or a task of :data:`NEEDED_BY`) that run one after the other. Without ``lanes``, or
    where a group of :data:`LANES` leaves fewer than two lanes with a notebook of ``found`` or a task
    that a notebook of the group needs (09 beside its training outputs, as in the whole pipeline),
    each notebook is a step of its own, in order. A group stands where the first of its notebooks in
    ``found`` stands; a task of :data:`NEEDED_BY` goes with it only if a notebook that needs it is in
    ``found``. If it is wanted but its group does not run as lanes, it is a step of its own before the
    first lanes that hold a notebook needing it, so that two lanes never make it at once; with no
    such lanes the notebook makes it itself. Tasks of ``without`` are left out (:func:`needless`)."""
    if not lanes:
        return [[[p]] for p in found]
    by_number = {p.name[:2]: p for p in found}
    wanted = by_number | {task: task for task, needs in NEEDED_BY.items()
                          if set(needs) & set(by_number) and task not in without}
    steps, placed = [], set()
    for p in found:
        if p in placed:
            continue
        group = next((g for g in LANES if any(p.name[:2] in lane for lane in g)), None)
        tasks = [[wanted[t] for t in lane if t in wanted] for lane in group] if group else []
        here = {t.name[:2] for lane in tasks for t in lane if isinstance(t, Path)}
        tasks = [lane for lane in tasks if any(isinstance(t, Path) or set(NEEDED_BY[t]) & here for t in lane)]
        if len(tasks) < 2:
            steps.append([[p]])
            placed.add(p)
            continue
        steps.append(tasks)
        placed |= {t for lane in tasks for t in lane}
    for task in [t for t in NEEDED_BY if t in wanted and t not in placed]:
        first = next((i for i, step in enumerate(steps) if len(step) > 1 and any(
            task_name(t, short=True) in NEEDED_BY[task] for lane in step for t in lane)), None)
        if first is not None:
            steps.insert(first, [[task]])
    return steps


def needless(run, found: list[Path]) -> frozenset[str]:
    """Tasks of :data:`NEEDED_BY` that ``found`` would run for nothing: the known-labels ablation
    where 02 does not run and the E1 ACC it recorded is at or above the bar (or none is recorded),
    so that ``--only 03`` runs 03 on all the cores, as before the task existed."""
    from .stage2 import no_known_labels

    if any(task_name(p, short=True) == "02" for p in found) or not no_known_labels(run):
        return frozenset()
    return frozenset({KNOWN_LABELS})


@contextmanager
def run_folder_lock(folder: Path):
    """Held by the one pipeline (`make run`) or `make seeds` running in ``folder``: another one
    entering it raises :class:`nbutils.io.Busy` saying so, instead of training, writing and moving
    the same files (where the platform has no ``fcntl``, Windows, nothing is held)."""
    with ExitStack() as held:
        try:
            held.enter_context(locked(Path(folder) / "pipeline", wait=False))
        except Busy:
            raise Busy(f"another pipeline (`make run`, `make seeds`) is running in {folder}: wait for it to end, "
                       "or give this one a run folder of its own (RUN=...)") from None
        yield


def core_shares(n: int) -> list[set[int]] | None:
    """The CPU cores this process may use, split into ``n`` disjoint shares of equal size (the last
    ``len(cores) % n`` cores left out): every lane's PyTorch then runs as many threads, so a task's
    numbers do not depend on the lane that ran it (:func:`next_task`; the classifiers 09 retrains,
    made by whichever of 09 and the other lane gets there first); None if they cannot be: fewer
    cores than ``n``, a platform without CPU affinity, or a GPU (which the models train on instead,
    one at a time)."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_setaffinity") else []
    if n < 2 or len(cores) < n:
        return None
    import torch

    if torch.cuda.is_available():
        return None
    size = len(cores) // n
    return [set(cores[size * i: size * (i + 1)]) for i in range(n)]


def kernel_manager():
    """The kernel manager papermill starts kernels with: on POSIX one that talks to its kernel over
    Unix sockets (ZeroMQ's ``ipc`` transport) rather than TCP ports on localhost, which no other
    machine or container can reach and which ipykernel does not warn about; elsewhere the default.
    Each kernel's sockets get a name of their own in the temporary folder (the default,
    ``kernel-ipc-N`` in the notebook's folder, would be shared by the two lanes' kernels)."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import Unicode, default

    if os.name != "posix":
        return AsyncKernelManager

    class UnixSocketKernelManager(AsyncKernelManager):
        transport = Unicode("ipc")

        @default("ip")
        def _ip_default(self):
            return str(Path(tempfile.gettempdir()) / f"kernel-{uuid.uuid4().hex}-ipc")

    return UnixSocketKernelManager


def execute(nb: Path, out: Path, params: dict, progress: bool = True) -> tuple[float, str]:
    """Run one notebook with papermill into ``out``: (seconds, '' or the error that stopped it)."""
    import papermill as pm

    start = time.perf_counter()
    try:
        declared = pm.inspect_notebook(str(nb))
        pm.execute_notebook(str(nb), str(out), parameters={k: v for k, v in params.items() if k in declared},
                            cwd=str(NOTEBOOKS), progress_bar=progress, kernel_name="python3",
                            kernel_manager_class=kernel_manager())
    except pm.PapermillExecutionError as err:  # a cell raised
        return time.perf_counter() - start, f"{err.ename}: {err.evalue}"
    except Exception as err:  # the kernel died, a timeout, ...: reported the same way, not as a traceback
        return time.perf_counter() - start, f"{type(err).__name__}: {err}"
    return time.perf_counter() - start, ""


def prepare(task: str, params: dict, log: Path) -> tuple[float, str]:
    """Make what the notebooks of ``NEEDED_BY[task]`` would otherwise make first, so that they load it:

    - :data:`REFERENCES`, from the run's slices alone: the scanner classifier of the raw training
      slices (:func:`nbutils.classifier.for_run`) and the paired supervised reference
      (:func:`nbutils.supervised.for_run`);
    - :data:`TRAINING_OUTPUTS`, from the models of 03 and 04: every method's scanner-free outputs
      of the training split (:func:`nbutils.outputs.method_outputs`) and the scanner classifier 09
      retrains on each (:func:`nbutils.classifier.retrained`);
    - :data:`KNOWN_LABELS`, from 02's GM-VAE and E1 ACC: GMM-DRIT trained with the known labels,
      if E1 ACC is below ``params["known_labels_below"]`` (default the stage-1 bar, as notebook 03's)
      (:meth:`nbutils.stage2.Experiment.known_labels_ablation`), which 03 then scores.

    The printout and progress bars go to ``log``. (seconds, '' or the error that stopped it), as
    :func:`execute`."""
    start = time.perf_counter()
    try:
        with open(log, "w") as f, redirect_stdout(f), redirect_stderr(f):
            import torch

            from . import classifier, methods, outputs, stage2, supervised
            from .data import for_run

            if task not in NEEDED_BY:
                raise ValueError(f"no such task {task!r}; the tasks: {', '.join(NEEDED_BY)}")
            torch.set_num_threads(len(os.sched_getaffinity(0)))  # as the lane's kernels have
            run = setup(params["profile"], params["run_dir"], params["seed"])
            if task == KNOWN_LABELS:
                import matplotlib.pyplot as plt

                model = stage2.Experiment(run, methods.GMM_DRIT, options=params.get("options", ""))
                made = model.known_labels_ablation(params.get("known_labels_below", stage2.E1_BAR))
                print(made if isinstance(made, str) else f"{made.label}: {made}")
                plt.close("all")  # its loss curves, saved; the lane's process lives on
                return time.perf_counter() - start, ""
            train = for_run(run, "train")
            if task == REFERENCES:
                classifier.for_run(run, train)
                supervised.for_run(run)
            else:  # TRAINING_OUTPUTS
                for method, made in outputs.method_outputs(run, train, "train", train, targets=False).items():
                    classifier.retrained(run, train, method, made)
    except Exception as err:
        return time.perf_counter() - start, f"{type(err).__name__}: {err} (the log: {log})"
    return time.perf_counter() - start, ""


def task_name(task: Path | str, short: bool = False) -> str:
    """A notebook's file name (``short``: its number), or a task of :data:`NEEDED_BY` (unless
    ``short``: and who needs it)."""
    if isinstance(task, Path):
        return task.name[:2] if short else task.name
    return task if short else f"{task} (for {', '.join(NEEDED_BY[task])})"


def run_task(task: Path | str, out: Path, params: dict, progress: bool = True) -> tuple[float, str]:
    """A notebook (its executed copy into ``out``) or a task of :data:`NEEDED_BY` (its log into ``out``)."""
    if isinstance(task, str):
        return prepare(task, params, out / f"{task}.log")
    return execute(task, out / task.name, params, progress)


def _execute_on(cores: set[int], task: Path | str, out: Path, params: dict) -> tuple[float, str]:
    """A lane's task in its worker process bound to ``cores``; a notebook's kernel inherits them."""
    os.sched_setaffinity(0, cores)
    return run_task(task, out, params, progress=False)


def _result(future) -> tuple[float, str]:
    try:
        return future.result()
    except Exception as err:  # the worker process itself died (killed, out of memory)
        return 0.0, f"{type(err).__name__}: {err}"


def next_task(queues: list[list[Path | str]], i: int, any_lane: frozenset[str],
              unended: frozenset[str] = frozenset(), after: dict = AFTER) -> Path | str | None:
    """Take the task lane ``i`` starts next off its queue: the first of its own whose prerequisites
    (``after``) are not among the short names of ``unended`` (the step's tasks waiting or running),
    else, with none of its own left, the last of the longest other queue whose last task's short
    name is in ``any_lane``; None if there is none."""
    for k, task in enumerate(queues[i]):
        if not set(after.get(task_name(task, short=True), ())) & unended:
            return queues[i].pop(k)
    if queues[i]:  # its own tasks wait for the other lanes
        return None
    other = max((q for q in queues if q and task_name(q[-1], short=True) in any_lane), key=len, default=None)
    return other.pop() if other else None


def lane_processes(n: int) -> list[ProcessPoolExecutor]:
    """``n`` worker processes, one per lane; a pipeline call keeps them for all its steps of lanes,
    since each spends seconds importing papermill (jsonschema's format checkers) before its first task."""
    spawn = multiprocessing.get_context("spawn")  # no fork of a process that holds kernel sockets
    return [ProcessPoolExecutor(1, mp_context=spawn) for _ in range(n)]


def execute_lanes(lanes: list[list[Path | str]], out: Path, params: dict, shares: list[set[int]], done,
                  any_lane: frozenset[str] = ANY_LANE, pools: list[ProcessPoolExecutor] | None = None,
                  after: dict = AFTER) -> bool:
    """Run ``lanes`` at once, each in a process of its own (``pools``, one per lane, else fresh ones)
    on its share of the cores, its tasks one after the other; a task that needs a task of another lane
    to have ended first (``after``) waits, its lane running its next task meanwhile, or idle if it has
    none (:func:`next_task`). A lane that has run out of tasks takes
    the last waiting task of another lane if that task's short name (:func:`task_name`) is in
    ``any_lane`` and the lanes have as many cores each (so that no number depends on which lane ran
    it: threads split sums differently; docs/design.md, "Two lanes"). ``done(task, seconds, error)``
    is called as each task ends and returns whether it succeeded; after a failure no task starts
    (those running finish). Whether all succeeded."""
    own = pools is None
    pools = lane_processes(len(lanes)) if own else pools
    queues, running, ok = [list(lane) for lane in lanes], {}, True
    if len({len(cores) for cores in shares[:len(lanes)]}) > 1:
        any_lane = frozenset()

    def start(i: int) -> None:
        nonlocal ok
        unended = frozenset(task_name(t, short=True) for t in [*(t for q in queues for t in q),
                                                               *(t for _, t in running.values())])
        first = queues[i][0] if queues[i] else None
        task = next_task(queues, i, any_lane, unended, after)
        if task is None:
            return
        # where the plan printed before no longer says where or when it runs
        if task not in lanes[i]:
            print(f"   lane {i + 1} is free and takes {task_name(task, short=True)}", flush=True)
        elif task is not first:
            print(f"   lane {i + 1} runs {task_name(task, short=True)} before {task_name(first, short=True)}, which "
                  f"waits for {' and '.join(after[task_name(first, short=True)])}", flush=True)
        try:
            running[pools[i].submit(_execute_on, shares[i], task, out, params)] = i, task
        except RuntimeError as err:  # the lane's process died while it waited (killed, out of memory)
            done(task, 0.0, f"{type(err).__name__}: {err}")
            ok = False

    try:
        for i in range(len(lanes)):
            if ok:
                start(i)
        while running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                i, task = running.pop(future)
                if not done(task, *_result(future)):
                    ok = False
            busy = {i for i, _ in running.values()}
            for i in range(len(lanes)):  # the lanes freed, and those whose tasks waited for what ended
                if ok and i not in busy:
                    start(i)
        return ok
    finally:
        for pool in pools if own else ():
            pool.shutdown(wait=True, cancel_futures=True)


PACKAGES = ("torch", "numpy", "scipy", "pandas", "scikit-learn", "scikit-image", "nibabel", "nilearn",
            "torchmetrics")


def environment() -> dict:
    """What made this pipeline call's numbers besides the code: Python, the packages that compute
    them, the CPU, its cores and torch's threads. Recorded in ``metrics.json`` under ``environment``
    at each call, so that two runs' numbers can be told apart by cause (constraints.txt pins the
    packages ``make`` installs). What cannot be read is left empty; it never stops a run."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return ""

    try:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "")
    except OSError:  # not Linux, or not readable here
        cpu = ""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0
    return dict(python=platform.python_version(), machine=platform.machine(), cpu=cpu or platform.processor(),
                cores=cores, torch_threads=torch.get_num_threads(),
                device="cuda" if torch.cuda.is_available() else "cpu",
                **{name: installed(name) for name in PACKAGES})


def summary(metrics: dict) -> str:
    """One line per headline number: ``notebook  key  value``."""
    lines = []
    for section, values in metrics.items():
        if section == "environment":  # not a result
            continue
        for key, value in (values or {}).items():
            if isinstance(value, (int, float)):
                lines.append(f"{section:<22} {key:<44} {value:.4g}")
    return "\n".join(lines)


def run_folder(profile: str, data: str = "", name: str = "", run_dir: str = "") -> str:
    """The run folder the arguments name ('' = the profile's default). A run on your data gets
    ``data/runs/<name>``, ``name`` defaulting to the CSV's file name, followed by ``-<profile>``
    for a profile other than quick (so that a smoke or paper run of the same CSV does not replace
    the quick run's slices and models); it may not take a profile's name, whose folder belongs to
    the built-in data (nor may ``run_dir`` be that folder, except for that profile's built-in run)."""
    if name and run_dir:
        raise ValueError("give a run name (--run, RUN=) or a run folder (--run-dir, RUN_DIR=), not both")
    if run_dir:
        owner = {resolve(default_run_dir(p)).resolve(): p for p in PROFILES}.get(resolve(run_dir).resolve())
        if owner and (data or get_profile(profile).name != owner):
            raise ValueError(f"run folder {run_dir}: it is the built-in data's {owner} run; "
                             "give your run a folder of its own (RUN=name, or another RUN_DIR)")
    if run_dir or not (data or name):
        return run_dir
    if not name:
        name, profile = Path(data).name.removesuffix(".csv"), get_profile(profile).name
        name += "" if profile == "quick" else f"-{profile}"
    if name in PROFILES or name in (".", "..") or not name or Path(name).name != name:
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
    from .stage2 import check_options
    from .volumes import DataError

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--data", default="", help="a data CSV (path,domain[,subject][,split][,rescan]); "
                                                "default: the built-in simulated set")
    ap.add_argument("--run", default="", help="run name: the run folder is data/runs/<name> "
                                               "(default with --data: the CSV's file name, "
                                               "-<profile> added for a profile other than quick)")
    ap.add_argument("--run-dir", default="")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--options", default="", help="stage-2 settings over the profile's for notebooks 03/04, a JSON "
                                                   "object of nbutils.drit.DRITConfig fields, e.g. "
                                                   "'{\"dc_steps\": 3}' (best in a run folder of its own: --run)")
    ap.add_argument("--only", nargs="*", help="two-digit notebook numbers to run")
    ap.add_argument("--one-at-a-time", action="store_true",
                    help="run every notebook one after the other, in order (no lanes side by side)")
    args = ap.parse_args(argv)
    try:
        if args.only is not None:
            known = [p.name[:2] for p in notebooks()]
            if not args.only or set(args.only) - set(known):
                raise ValueError(f"--only {' '.join(args.only) or '(nothing)'}: give two-digit notebook numbers, "
                                 f"of {' '.join(known)}")
        if args.seed < 0:
            raise ValueError(f"seed {args.seed}: give 0 or more")
        run_dir = run_folder(args.profile, args.data, args.run, args.run_dir)
        data = check_data(args.data, args.profile, args.seed) if args.data else ""
        check_options(get_profile(args.profile), args.options)  # before anything runs
    except (ValueError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    run = setup(args.profile, run_dir, args.seed)
    try:
        with run_folder_lock(run.dir):
            return run_notebooks(run, notebooks(args.only), data, args.options, args.one_at_a_time)
    except Busy as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def run_notebooks(run, tasks: list[Path], data: str, options: str, one_at_a_time: bool) -> int:
    """Run ``tasks`` (notebooks) into ``run``'s folder as :func:`main` plans them, then print the
    results; 0, or 1 if a task failed."""
    from .report import data_label, print_bars, results_table, stale_note  # a lane's process needs none of it

    # the record of this call's machine and packages (`--only` rewrites it); when notebook 01 runs,
    # only after it, so that what it sets aside keeps the record of the call that made it
    if not any(task_name(t, short=True) == "01" for t in tasks):
        run.record("environment", environment())
    out = run.dir / "notebooks"
    out.mkdir(exist_ok=True)
    params = dict(profile=run.profile.name, run_dir=str(run.dir), seed=run.seed, data_csv=data, options=options)
    os.environ["NB_HEADLESS"] = "1"  # the kernels inherit it: no live widgets (nbutils.explorer)
    timings, started = {}, time.perf_counter()
    aside = set((run.dir / SUPERSEDED).glob("*"))  # what notebook 01 sets aside is said when it ends

    def done(task: Path | str, seconds: float, error: str) -> bool:
        if task_name(task, short=True) == "01":
            run.record("environment", environment())
            for folder in sorted(set((run.dir / SUPERSEDED).glob("*")) - aside):  # Run.set_aside's
                size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6
                print(f"   notebook 01 made other slices than the run's: the old ones and what was made from them "
                      f"({size:,.0f} MB) were moved to {folder}", flush=True)
        if error:
            where = f"\n(the executed copy with the traceback: {out / task.name})" if isinstance(task, Path) else ""
            print(f"\n{task_name(task)} stopped: {error}{where}", file=sys.stderr)
            return False
        timings[task_name(task, short=True)] = seconds
        print(f"   {task_name(task, short=True)} done in {seconds:.0f} s", flush=True)
        return True

    shares = None if one_at_a_time else core_shares(2)  # every group of LANES has two lanes
    pools = []  # the lanes' processes, made at the first step of lanes, kept to the last
    try:
        for step in plan(tasks, lanes=shares is not None, without=needless(run, tasks)):
            if len(step) > 1:
                print(f"== side by side, on cores {' and '.join(','.join(map(str, sorted(c))) for c in shares)} "
                      f"(profile {run.profile.name}, run folder {run.dir}):\n"
                      + "\n".join(f"   lane {i + 1}: {', then '.join(task_name(t) for t in lane)}"
                                   for i, lane in enumerate(step)), flush=True)
                pools = pools or lane_processes(len(shares))
                if not execute_lanes(step, out, params, shares, done, pools=pools):
                    return 1
                continue
            task = step[0][0]
            print(f"== {task_name(task)}  (profile {run.profile.name}, run folder {run.dir})", flush=True)
            if not done(task, *run_task(task, out, params)):
                return 1
    finally:
        for pool in pools:
            pool.shutdown(wait=True, cancel_futures=True)
    wall, label = time.perf_counter() - started, data_label(run.dir)  # what the run's data are, once
    print("\nwall time per notebook (s): " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(timings.items())))
    print(f"total: {wall:.0f} s{' (lanes side by side counted once)' if wall < sum(timings.values()) - 1 else ''}"
          f"\n\nheadline numbers ({run.metrics_file}; {label}):")
    metrics = read_metrics(run.dir)
    table = results_table(metrics)
    if note := stale_note(metrics):
        print(note)
    # the evaluations' method x measure table once notebooks 05-09 have run, else every number
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}") if len(table) else summary(metrics))
    print_bars(metrics, label)
    print(f"\nrun folder: {run.dir}\nfigures and tables: {run.figures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
