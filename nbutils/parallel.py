"""Map a function over items on every CPU core with threads, results in order.

For work whose heavy parts release the GIL (NumPy on whole arrays, SciPy's filters, zlib when
NIfTI files are written): on the 2-core machines this project is tested on, rendering the
simulated scanners ran 2.2 x and SSIM's pairs 1.4-1.8 x faster than in one thread. Each
item is computed exactly as it would be alone, so the results do not depend on the number of threads.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from tqdm.auto import tqdm


def cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def thread_map(fn, items, desc: str | None = None, progress: bool = True) -> list:
    """``[fn(item) for item in items]``, computed in :func:`cores` threads; ``desc``: a progress
    bar with this title. (``tqdm.contrib.concurrent.thread_map`` would compute the rest of the
    items after one raised.)"""
    items = list(items)
    bar = lambda it: tqdm(it, total=len(items), desc=desc, disable=desc is None or not progress)
    if cores() < 2 or len(items) < 2:
        return [fn(item) for item in bar(items)]
    pool = ThreadPoolExecutor(min(cores(), len(items)))
    try:
        return list(bar(pool.map(fn, items)))
    finally:  # on an error or an interrupt, the items not started yet are dropped, not computed
        pool.shutdown(wait=True, cancel_futures=True)
