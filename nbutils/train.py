"""One training loop for both stages: device choice, mixed precision, checkpoints, exact resume
(on the CPU: CUDA kernels are not deterministic).

A *task* owns its networks and optimizers and knows one iteration (``task.step``); the loop
feeds it batches, shows a tqdm bar, keeps the loss history and writes an atomic checkpoint
every ``every`` iterations and at the end. Resuming from a checkpoint gives the same final
weights as an uninterrupted run (same seed, same device): the batch of iteration ``i`` and
every random draw inside it are functions of ``(seed, i)`` only, never of how the run got
there.

On CUDA the forward passes run under ``torch.autocast`` (float16) with one gradient scaler
per optimizer; on the CPU in float32.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import pandas as pd
import torch
from torch import nn

from .io import atomic_path


def pick_device(device: str = "") -> torch.device:
    """``device`` if given, else CUDA when present, else the CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def adam(params, **options) -> torch.optim.Adam:
    """``torch.optim.Adam`` with its multi-tensor update (``foreach``). On the CPU PyTorch's default
    is a loop over the tensors; the multi-tensor update does the same arithmetic (the same weights,
    bit for bit: tested) in about half the time (the stage-2 generator's 50 tensors: 5.2 → 2.7 ms
    per step on 2 cores)."""
    return torch.optim.Adam(params, foreach=True, **options)


class Context:
    """What a task needs from the loop: the device, autocast, and a scaled optimizer step."""

    def __init__(self, device: torch.device, optimizers: dict[str, torch.optim.Optimizer]):
        self.device = device
        self.amp = device.type == "cuda"
        self.scalers = {name: torch.amp.GradScaler("cuda", enabled=self.amp) for name in optimizers}
        self.optimizers = optimizers

    def autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.float16)

    def update(self, loss: torch.Tensor, name: str, clip: float = 0.0) -> None:
        """Backward ``loss`` and step optimizer ``name`` (gradients zeroed first; their norm
        clipped to ``clip`` when > 0)."""
        opt, scaler = self.optimizers[name], self.scalers[name]
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if clip:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], clip)
        scaler.step(opt)
        scaler.update()


class Task(Protocol):
    modules: nn.Module  # every network whose weights are checkpointed
    optimizers: dict[str, torch.optim.Optimizer]

    def step(self, batch, it: int, ctx: Context) -> dict[str, float]: ...

    def meta(self) -> dict: ...  # what rebuilds the networks (saved beside the weights)


class EpochSampler:
    """Batch indices for iteration ``i``: consecutive chunks of a fresh permutation per epoch,
    a pure function of ``(seed, i)``."""

    def __init__(self, n: int, batch_size: int, seed: int = 0):
        if n < 1:
            raise ValueError("cannot sample batches from an empty training set")
        self.n, self.batch_size, self.seed = n, batch_size, seed

    def epoch(self, it: int) -> float:
        return it * self.batch_size / self.n

    def __call__(self, it: int) -> np.ndarray:
        start = it * self.batch_size
        epochs = range(start // self.n, (start + self.batch_size - 1) // self.n + 1)
        stream = np.concatenate([np.random.default_rng((self.seed, e)).permutation(self.n) for e in epochs])
        offset = start - epochs[0] * self.n
        return stream[offset: offset + self.batch_size]


def images_to_tensor(images: np.ndarray, idx: np.ndarray, device: torch.device) -> torch.Tensor:
    """Rows ``idx`` of a (memory-mapped, float16) image array as a float32 (N, 1, H, W) tensor."""
    batch = np.asarray(images[np.sort(idx)], dtype=np.float32)
    return torch.from_numpy(batch).unsqueeze(1).to(device, non_blocking=True)


def fit(task: Task, batches: Callable[[int], object], steps: int, checkpoint: str | Path,
        every: int = 200, seed: int = 0, device: torch.device | None = None,
        desc: str = "training", snapshots: bool = False, any_seed: bool = False) -> pd.DataFrame:
    """Train ``task`` until iteration ``steps``, resuming from ``checkpoint`` if it exists.

    ``batches(i)`` returns the batch of iteration ``i`` on ``device``. Returns the loss
    history (one row per iteration, with ``seconds``: training time so far). A checkpoint
    written for other networks (another ``task.meta()``) is refused rather than silently mixed
    in, and so is one trained with another ``seed`` (:func:`refuse_other_seed`), unless it is
    complete and ``any_seed`` is set (a reference a run shares with the stage-2 seeds of
    ``make seeds``: loaded, never trained on with another seed's batches). ``snapshots``: also
    keep the weights of every ``every``-th iteration (for a learning curve) in the folder
    ``<checkpoint>.snapshots/``; see :func:`load_snapshots`.
    """
    from tqdm.auto import tqdm

    checkpoint = Path(checkpoint)
    device = device or pick_device()
    ctx = Context(device, task.optimizers)
    start, history = 0, []
    if checkpoint.exists():
        start, history, trained = _load(checkpoint, task, ctx)
        if not (any_seed and start >= steps):
            refuse_other_seed(checkpoint, trained, seed)
    start_time = time.perf_counter()
    before = history[-1].get("seconds", 0.0) if history else 0.0
    with tqdm(total=steps, initial=min(start, steps), desc=desc, unit="it") as bar:
        for it in range(start, steps):
            torch.manual_seed(seed * 1_000_003 + it)  # every random draw of iteration it
            losses = task.step(batches(it), it, ctx)
            history.append(dict(step=it + 1, **losses, seconds=before + time.perf_counter() - start_time))
            bar.update(1)
            if (it + 1) % 10 == 0 or it + 1 == steps:
                bar.set_postfix({k: f"{v:.3g}" for k, v in list(losses.items())[:4]})
            if (it + 1) % every == 0 or it + 1 == steps:
                _save(checkpoint, task, ctx, it + 1, history, seed)
                if snapshots:
                    folder = snapshot_folder(checkpoint)
                    folder.mkdir(parents=True, exist_ok=True)
                    with atomic_path(folder / f"step_{it + 1:07d}.pt") as tmp:
                        torch.save(dict(step=it + 1, seconds=history[-1]["seconds"], meta=task.meta(),
                                        modules=task.modules.state_dict()), tmp)
    if steps > start:
        rate = (steps - start) / (time.perf_counter() - start_time)
        print(f"{desc}: iterations {start}->{steps} at {rate:.2f} it/s on {device}")
    return pd.DataFrame(history)


def snapshot_folder(checkpoint: str | Path) -> Path:
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name + ".snapshots")


def load_snapshots(checkpoint: str | Path, device: torch.device | str = "cpu") -> list[dict]:
    """The snapshots :func:`fit` kept beside ``checkpoint``, by step: dicts with ``step``,
    ``seconds`` (training time), ``meta`` and ``modules`` (the weights)."""
    files = sorted(snapshot_folder(checkpoint).glob("step_*.pt"))
    return [torch.load(f, map_location=device, weights_only=False) for f in files]


def _save(path: Path, task: Task, ctx: Context, step: int, history: list, seed: int) -> None:
    state = dict(step=step, history=history, meta=task.meta(), seed=seed, modules=task.modules.state_dict(),
                 optimizers={k: o.state_dict() for k, o in task.optimizers.items()},
                 scalers={k: s.state_dict() for k, s in ctx.scalers.items()})
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def refuse_other_seed(path: str | Path, trained: int | None, seed: int) -> None:
    """Raise if the checkpoint ``path`` was ``trained`` with another seed than ``seed``: a run folder
    holds one seed's models, and a notebook run with another seed over it without notebook 01
    (papermill, ``--only``) would otherwise score them as its own. ``trained`` None: a checkpoint
    written before checkpoints kept their seed, taken as it is."""
    if trained is not None and trained != seed:
        raise ValueError(f"{path} was trained with seed {trained}, not {seed}. If this run folder is seed "
                         f"{trained}'s, set the notebook's seed parameter to {trained} (papermill -p seed {trained}). "
                         f"To train seed {seed}: run notebook 01 with seed {seed} first (it sets this folder's slices "
                         f"and models aside), give seed {seed} a run folder of its own (make run SEED={seed} "
                         f"RUN=name), or, for stage 2 over a run's slices, make seeds SEEDS={seed}.")


def _load(path: Path, task: Task, ctx: Context) -> tuple[int, list, int | None]:
    """Load ``task``'s networks and optimizers from ``path``; (step, history, the seed it was trained with)."""
    state = load_checkpoint(path, ctx.device)
    if state["meta"] != task.meta():
        raise ValueError(f"{path} was written for other settings ({state['meta']}) than these "
                         f"({task.meta()}): delete it, or set retrain, to start afresh.")
    task.modules.load_state_dict(state["modules"])
    for k, opt in task.optimizers.items():
        # how the update is computed (e.g. adam's foreach) is this code's choice, not the checkpoint's
        how = [{o: g[o] for o in ("foreach", "fused") if o in g} for g in opt.param_groups]
        opt.load_state_dict(state["optimizers"][k])
        for g, h in zip(opt.param_groups, how):
            g.update(h)
    for k, scaler in ctx.scalers.items():
        if state["scalers"].get(k):
            scaler.load_state_dict(state["scalers"][k])
    return state["step"], list(state["history"]), state.get("seed")


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict:
    """A checkpoint written by :func:`fit` (weights, optimizer states, history, meta)."""
    path = Path(path)
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as err:  # truncated or foreign file: say which and what to do
        raise ValueError(f"{path} is not a readable checkpoint ({err}); delete it and train again.") from err
