"""The paired oracle for the content map (docs/experiments.md, "An oracle for the content map").

Not the thesis's method and not an option of the package: a measurement of what E^c can reach when it is told
which content maps must agree, which an unpaired harmonizer is never told. GMM-DRIT is trained as notebook 03
trains it (``stage2.Experiment``: the run's slices, GM-VAE, profile and seed), plus

    weight * L1(E^c(x_a), E^c(x_b))

on the same window of one anatomy of the run's ``paired`` split seen by two scanners (four pairs per iteration,
each read with its own frozen E^a codes and its window's position; both sides learn). The term enters the
generator's total through the slot of ``w_field_layout``: ``drit.field_layout_loss`` is replaced by it for this
process (and the layout targets, which it does not read, by zeros); nothing else in the step changes. Then the
model is scored, diagnosed and probed as notebook 03 does, and the source probe of its translations is read
(``usage.source_probe``, as notebook 09 reads it).

    python docs/scripts/paired_oracle.py RUN_DIR WEIGHT OUT_JSON

RUN_DIR: a *copy* of a finished quick-profile run of data with a paired split (the built-in set, or a set made by
``python -m nbutils.phantom``): its GM-VAE and slices are used, its GMM-DRIT checkpoint, figures and
``metrics.json`` section are overwritten. WEIGHT 0 trains the default model again. OUT_JSON: the section's numbers.

It patches ``nbutils.drit`` internals (``DRITTask.__init__``, ``field_layout_loss``, ``layout.field_targets``) and
is not run by ``make test``: last run with the package code of 09871b1, where it gave the numbers of the docs (its
E^a codes then computed by a copy of ``PairSampler.attach_codes``, which it now calls: the same codes, checked).
"""
import json
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from nbutils import config, crops, data, drit, methods, stage2, supervised, usage

PAIRS = 4  # pairs per iteration


def main(run_dir: str, weight: float, out: str) -> None:
    run = config.setup("quick", run_dir, 0)
    paired = data.for_run(run, "paired")
    rows = supervised.pairs_of(paired)  # (anatomies, K): each scanner's row of that anatomy, -1 if unseen
    if not len(rows):
        raise SystemExit(f"{run_dir} has no paired split: build the data with the simulator's paired anatomies")
    seen = [np.flatnonzero(r >= 0) for r in rows]
    images, masks = np.asarray(paired.images, np.float32), np.asarray(paired.masks, bool)
    state = {"it": 0}

    keep_init = drit.DRITTask.__init__

    def init(task, *args, **kwargs):  # remember the task train_drit builds
        keep_init(task, *args, **kwargs)
        state["task"] = task

    def oracle(generator, *layout):
        m, cfg = state["task"].modules, state["task"].cfg
        if "codes" not in state:  # the frozen E^a's codes of every paired slice, once, as training computes its own
            sampler = drit.PairSampler(images, np.asarray(paired.labels), 1, crop=cfg.image_shape[0], masks=masks,
                                       view=m.view_size)
            sampler.attach_codes(m)
            state["codes"] = sampler.codes
        rng = np.random.default_rng((12345, state["it"]))
        state["it"] += 1
        anat = rng.integers(0, len(rows), PAIRS)
        a, b = np.array([rng.choice(seen[j], 2, replace=False) for j in anat]).T
        src, dst = rows[anat, a], rows[anat, b]
        size = cfg.image_shape[0]
        starts = crops.crop_starts(masks[src], size, rng)  # the same window of both scans

        def encode(r):
            x = torch.from_numpy(crops.take(images[r], starts, size)).unsqueeze(1) * 2 - 1
            z = torch.from_numpy(r)
            return m.encode(x, (state["codes"][0][z], state["codes"][1][z]), torch.from_numpy(starts).float(),
                            cfg.slices)

        return F.l1_loss(encode(src), encode(dst))

    drit.DRITTask.__init__ = init
    drit.field_layout_loss = oracle
    drit.layout.field_targets = lambda whole, groups, k, order: np.zeros((k, 1), np.float32)

    experiment = stage2.Experiment(run, methods.GMM_DRIT, options={"w_field_layout": weight} if weight else None)
    start = time.time()
    experiment.train(retrain=True)
    seconds = time.time() - start
    experiment.score()
    experiment.source_maps()
    experiment.diagnose()
    experiment.probe_control()
    section = config.read_metrics(run.dir)[experiment.key]
    found = {k: v for k, v in section.items() if not isinstance(v, (dict, list))}
    found |= {"oracle_weight": weight, "wall_train": seconds,
              "source_probe": usage.source_probe(experiment.test_set, {"GMM-DRIT": experiment.result["guided"]})
              .to_dict(orient="records")}
    with open(out, "w") as f:
        json.dump(found, f, indent=1, default=str)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    main(sys.argv[1], float(sys.argv[2]), sys.argv[3])
