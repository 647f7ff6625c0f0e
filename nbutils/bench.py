"""Benchmarks that print numbers (speed targets are checked here, not in tests).

    python -m nbutils.bench data     # loading 10,000 slices from the slice store
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .data import load_slices


def bench_data(n: int = 10_000, sizes=(64, 182)) -> list[dict]:
    """Write a slice store of ``n`` random slices per size, then time opening it and reading
    every slice into float32 memory (cold page cache is not attempted: this is the warm case)."""
    rows = []
    for size in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            rng = np.random.default_rng(0)
            np.save(tmp / "train.npy", rng.random((n, size, size), dtype=np.float32).astype(np.float16))
            np.save(tmp / "train_mask.npy", np.ones((n, size, size), bool))
            pd.DataFrame({"split": "train", "index": np.arange(n), "domain_index": 0,
                          "subject": "s", "domain": "d"}).to_csv(tmp / "manifest.csv", index=False)
            (tmp / "info.json").write_text(json.dumps({"domains": ["d"]}))
            start = time.perf_counter()
            s = load_slices(tmp, "train")
            opened = time.perf_counter() - start
            x = np.array(s.images)  # every byte read into memory, still float16
            read = time.perf_counter() - start
            x = x.astype(np.float32)
            converted = time.perf_counter() - start
            rows.append(dict(slices=n, size=size, MB_on_disk=round(x.size * 2 / 1e6, 1),
                             open_memmap_s=round(opened, 4), read_all_s=round(read, 3),
                             read_all_as_float32_s=round(converted, 3)))
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["data"])
    args = ap.parse_args(argv)
    if args.what == "data":
        print(pd.DataFrame(bench_data()).to_string(index=False))


if __name__ == "__main__":
    main()
