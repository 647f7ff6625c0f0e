"""The scanner-means term's own measure on a trained stage-2 model, beside its sampling floor.

``nbutils.scanner_means`` holds each scanner's running mean of z^c, region by region of the whole slice, to the
others'. This reads that measure (the term's ``value``) on a trained model's training windows, E^c frozen, batches
drawn as training draws them, three ways: with the scanners' labels, with the model's own codes (GMM-DRIT's inferred
scanner code; DRIT++'s are the labels), and with labels drawn at random per slice, which no content map can carry:
the floor the running means' sampling leaves. Read with the term's default momentum (0.99, the last 100 of 600
batches) and with 0.999 (the last 100 of 1,500), each per channel and whitened (``content_mean_whiten``; keys ending
in " whitened").

    python docs/scripts/scanner_means_floor.py RUN_DIR [gmm-drit|dritpp] ['{"w_content_mean": 100.0}']

RUN_DIR: a quick-profile run whose model of that method was trained with those stage-2 options (its checkpoint is
loaded, never trained). Prints one line of JSON. Simulated scanners unless the run's data are real.
"""
import json
import sys

import numpy as np
import torch

from nbutils import config, drit, methods, stage2
from nbutils.scanner_means import ScannerMeans


def main(run_dir: str, method: str = "gmm-drit", options: str = "") -> dict:
    run = config.setup("quick", run_dir, 0)
    exp = stage2.Experiment(run, {"gmm-drit": methods.GMM_DRIT, "dritpp": methods.DRITPP}[method],
                            options=json.loads(options) if options else None)
    checkpoint = run.checkpoints / exp.method.checkpoint(False)
    if not checkpoint.exists():
        raise SystemExit(f"{checkpoint} does not exist: train the model first (notebook 03 or 04)")
    exp.train()  # loads the complete checkpoint
    model, train = exp.model.eval(), exp.train_set
    labels, k = train.labels, len(train.domains)
    drawn = np.random.default_rng(0).integers(0, k, len(labels))  # random labels, one per slice
    device = next(model.parameters()).device
    sampler = drit.PairSampler(train.images, labels, run.profile.drit_batch, seed=0, device=device,
                               crop=run.profile.crop, masks=train.masks, view=model.view_size)
    if model.cfg.variant == "gmm-drit":
        sampler.attach_codes(model)
    onehot = lambda rows: torch.nn.functional.one_hot(torch.as_tensor(rows, device=device).long(), k).float()
    found = {}
    for momentum, batches in ((0.99, 600), (0.999, 1500)):
        means = {(name, whiten): ScannerMeans(k, model.content.channels, model.content_map_size, momentum,
                                              whiten=whiten).to(device)
                 for name in ("labels", "codes", "random") for whiten in (False, True)}
        values = {key: [] for key in means}
        with torch.no_grad():
            for it in range(batches):
                b = sampler(it)
                zc, codes, origin = model.batch_content(b)
                grid = model.cell_grid(origin, zc.shape[-2:])
                rows = np.concatenate([np.sort(sampler.a(it)), np.sort(sampler.b(it))])  # the batches' slices
                for name, code in (("labels", onehot(labels[rows])), ("codes", codes[1].float()),
                                   ("random", onehot(drawn[rows]))):
                    for whiten in (False, True):
                        values[name, whiten].append(float(means[name, whiten](zc, grid, code)[1]))
        for whiten in (False, True):
            found[str(momentum) + " whitened" * whiten] = {name: float(np.mean(values[name, whiten][-100:]))
                                                            for name in ("labels", "codes", "random")}
    print(json.dumps(found))
    return found


if __name__ == "__main__":
    main(*sys.argv[1:])
