"""Benchmarks that print numbers (speed targets are checked here, not in tests).

    python -m nbutils.bench data     # loading 10,000 slices from the slice store
    python -m nbutils.bench stage2   # seconds per GMM-DRIT / DRIT++ iteration and GFLOP/s
                                     # at each profile's size, beside measured matmul/conv peaks
    python -m nbutils.bench volume   # seconds and memory peak per harmonized 182 x 218 x 182
                                     # volume (quick profile's model; CPU, and CUDA when present)
    python -m nbutils.bench digits   # the GM-VAE on scikit-learn's digits at the thesis's weights
                                     # and at the GMVAE code's: clustering ACC per seed after a
                                     # fixed wall-clock budget (--seconds)
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


def _timed(fn, repeat: int) -> float:
    fn()  # warm-up (kernel selection, allocations)
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def peaks(repeat: int = 5) -> dict:
    """This machine's measured float32 throughput: a 2048 x 2048 matmul, and a 3x3 convolution
    (64 -> 64 channels, 64 x 64 px, batch 16) forward and backward."""
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    matmul = 2 * 2048 ** 3 / _timed(lambda: a @ b, repeat) / 1e9
    conv = torch.nn.Conv2d(64, 64, 3, padding=1)
    x = torch.randn(16, 64, 64, 64, requires_grad=True)
    flops = 2 * 16 * 64 * 64 * 64 * 64 * 9
    fwd = flops / _timed(lambda: conv(x), repeat) / 1e9
    both = 3 * flops / _timed(lambda: conv(x).sum().backward(), repeat) / 1e9
    return {"matmul GFLOP/s": round(matmul, 1), "conv3x3 fwd GFLOP/s": round(fwd, 1),
            "conv3x3 fwd+bwd GFLOP/s": round(both, 1)}


def bench_stage2(profiles=("smoke", "quick", "paper"), repeat: int = 3, peak: float | None = None) -> list[dict]:
    """Seconds per training iteration of both variants at each profile's training size (its crops,
    or whole slices), batch and width, with FLOPs counted by ``torch.utils.flop_counter`` over one iteration; with ``peak``
    (GFLOP/s, e.g. the measured conv forward + backward peak) also the share of it reached."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from . import drit, train
    from .config import PROFILES

    rows = []
    for name in profiles:
        p = PROFILES[name]
        for variant in ("gmm-drit", "drit++"):
            torch.manual_seed(0)
            task = drit.DRITTask(*_stage2_config(p, variant))
            images = np.random.default_rng(0).random((64, p.image_size, p.image_size)).astype(np.float16)
            sampler = drit.PairSampler(images, np.arange(64) % 4, p.drit_batch, crop=p.crop,
                                       masks=np.ones(images.shape, bool), view=task.modules.view_size)
            if variant == "gmm-drit":  # as train_drit does: the frozen E^a's codes, computed once
                sampler.attach_codes(task.modules)
            ctx = train.Context(torch.device("cpu"), task.optimizers)
            with FlopCounterMode(display=False) as counter:
                task.step(sampler(0), 0, ctx)
            seconds = _timed(lambda: task.step(sampler(1), 1, ctx), repeat)
            gflop = counter.get_total_flops() / 1e9
            rows.append(dict(profile=name, variant=variant, size=p.crop or p.image_size, batch=p.drit_batch,
                             width=p.drit_width, s_per_it=round(seconds, 3), GFLOP_per_it=round(gflop, 2),
                             GFLOP_per_s=round(gflop / seconds, 1),
                             min_for_profile_steps=round(seconds * p.drit_steps / 60, 1)))
            if peak:
                rows[-1]["pct_of_conv_peak"] = round(100 * gflop / seconds / peak, 1)
    return rows


def _stage2_config(p, variant: str):
    """(DRITConfig, untrained GM-VAE or None) of profile ``p``, as notebooks 02-04 build them."""
    from . import gmvae, stage2

    slices = (p.image_size, p.image_size)
    gm = gmvae.GMVAE(gmvae.GMVAEConfig(image_shape=(p.view, p.view) if p.view else slices, k=4, width=p.gmvae_width,
                                       **gmvae.preset("appearance"))) if variant == "gmm-drit" else None
    return stage2.model_config(p, slices, 4, variant), gm


def bench_volume(profile: str = "quick", repeat: int = 2) -> list[dict]:
    """Seconds to harmonize one 182 x 218 x 182 volume (nilearn's MNI template, every coronal slice
    with brain) with the profile's stage-2 model (untrained weights: the time does not depend on
    them), scanner-free (toward a scanner costs the same plus encoding the reference slices once),
    on the CPU and on CUDA when present; and the process's resident-memory peak so far (the
    first row includes loading the template)."""
    import resource

    import nibabel as nib
    import torch

    from . import drit
    from .config import PROFILES
    from .harmonize import Harmonizer, harmonize_volume
    from .phantom import load_template
    from .volumes import MNI_AFFINE

    p = PROFILES[profile]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tpl = load_template()
        src = Path(tmp) / "template.nii.gz"
        nib.save(nib.Nifti1Image(np.where(tpl.mask, tpl.t1, 0).astype(np.float32), MNI_AFFINE), str(src))
        brain_slices = int((tpl.mask.sum(axis=(0, 2)) > 0).sum())
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        for device in devices:
            torch.manual_seed(0)
            model = drit.Translator(*_stage2_config(p, "gmm-drit")).to(device).eval()
            harm = Harmonizer(model)
            run = lambda: harmonize_volume(harm, src, Path(tmp) / "out.nii.gz", "scanner-free", seed=0, progress=False)
            seconds = _timed(run, repeat)
            rows.append(dict(profile=profile, device=device, slices=brain_slices, size=p.image_size,
                             s_per_volume=round(seconds, 2), ms_per_slice=round(1000 * seconds / brain_slices, 1),
                             peak_rss_MB=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))
    return rows


# loss weights of the digits check: the thesis's (the model's defaults), the public GMVAE code's
# own defaults (jariasf/GMVAE, pytorch/main.py: 1 / 1 / 1), and the thesis's weights at the
# balance the "appearance" preset keeps (BCE scaled to 182 x 182 pixels, the batch-marginal term)
DIGITS_WEIGHTS = {"thesis 0.7/2/1": {}, "GMVAE code 1/1/1": dict(w_rec=1.0, w_gauss=1.0, w_categ=1.0),
                  "thesis 0.7/2/1, BCE scaled to 182x182, marginal 20": dict(rec_pixels=182 * 182, w_marginal=20.0)}


def bench_digits(seconds: float = 60.0, seeds=(0, 1, 2), batch_size: int = 64, weights=DIGITS_WEIGHTS) -> list[dict]:
    """The GM-VAE as a general clustering model: scikit-learn's 8 x 8 digits, K = 10, Gaussian
    size 64, grid pooling, trained for ``seconds`` of wall time per seed and weight setting, then
    ACC / NMI / ARI of argmax q(y|x) on all 1,797 digits.

    A regression check of the model itself against the public GMVAE code it follows
    (jariasf/GMVAE). At the thesis's balance (0.7 BCE + 2.0 L_gauss + 1.0 KL_y) both collapse on
    8 x 8 images: a nat in z costs 2.9 nats of a 64-pixel BCE, z is switched off and q(y|x) goes
    uniform (a faithful re-implementation of that code, run here, did the same: docs/experiments.md, "Stage 1").
    At that code's own defaults (1 / 1 / 1) both cluster; that is the setting to compare."""
    import torch
    from sklearn.datasets import load_digits

    from . import clustering, gmvae, train

    digits = load_digits()
    images = (digits.images / 16).astype(np.float32)
    rows = []
    for name, overrides in weights.items():
        for seed in seeds:
            torch.manual_seed(seed)
            cfg = gmvae.GMVAEConfig(image_shape=(8, 8), k=10, pooling="grid", **overrides)
            task = gmvae.GMVAETask(cfg, len(images), batch_size)
            sampler = train.EpochSampler(len(images), batch_size, seed)
            ctx = train.Context(torch.device("cpu"), task.optimizers)
            start, it = time.perf_counter(), 0
            while time.perf_counter() - start < seconds:
                torch.manual_seed(seed * 1_000_003 + it)
                task.step(train.images_to_tensor(images, sampler(it), torch.device("cpu")), it, ctx)
                it += 1
            wall = time.perf_counter() - start
            clusters = gmvae.encode_all(task.modules.eval(), images)["prob"].argmax(1)
            t = clustering.scores(digits.target, clusters, permutations=20)
            rows.append(dict(weights=name, seed=seed, iterations=it, wall_s=round(wall, 1),
                             ACC=round(t.loc["ACC", "value"], 3), NMI=round(t.loc["NMI", "value"], 3),
                             ARI=round(t.loc["ARI", "value"], 3), ACC_chance=round(t.loc["ACC", "chance_mean"], 3),
                             components_used=len(np.unique(clusters))))
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["data", "stage2", "volume", "digits"])
    ap.add_argument("--profiles", nargs="*", default=["smoke", "quick", "paper"])
    ap.add_argument("--seconds", type=float, default=60.0, help="digits: training wall time per seed and setting")
    args = ap.parse_args(argv)
    if args.what == "data":
        print(pd.DataFrame(bench_data()).to_string(index=False))
    elif args.what == "volume":
        print(pd.DataFrame(bench_volume()).to_string(index=False))
    elif args.what == "digits":
        table = pd.DataFrame(bench_digits(args.seconds))
        print(table.to_string(index=False))
        print(table.groupby("weights", sort=False)[["ACC", "NMI", "ARI", "components_used"]].mean().round(3).to_string())
    else:
        import torch

        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")
        peak = peaks()
        print("measured peaks:", peak)
        table = pd.DataFrame(bench_stage2(args.profiles, peak=peak["conv3x3 fwd+bwd GFLOP/s"]))
        print(table.to_string(index=False))


if __name__ == "__main__":
    main()
