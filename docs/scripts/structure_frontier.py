"""Can the scanner-free bars be met together? Structure kept (≥ 0.95) against the residual scanner (≤ 0.50) and the
agreement, along a blend of each model's scanner-free outputs with histogram matching's:

    (1 − α) · the model's scanner-free output + α · the input matched to the pooled training histogram

α 0 is the model, α 1 histogram matching, which keeps the input's noise and detail (structure 0.99). Each blend is
scored as notebook 09 scores a method: the agreement beside the inputs and its own blur control, structure and
dark_overlap (`paired.agreement_table`, on the run's cached draw of z^a); the frozen classifier's accuracy on that
draw and, as the bar reads it, its median over 8 draws of z^a (seeds SEED … SEED + 7, as notebook 09 draws them);
and a classifier retrained on the same blend of the training split's outputs (as notebook 09 retrains one on each
method's; its checkpoints go to a temporary folder). A measurement of the bars' trade, not a method: the blend is
not offered as one (docs/experiments.md, "Structure against the residual"). Reads a finished quick-profile run
(SEED: a seed folder of `make seeds`, `<run>/seeds/seed<N>`, with its seed N; default 0, the run itself); trains no
stage-2 model and writes nothing into the run. Not run by `make test`. Writes OUT_JSON and, beside it,
a PNG of one anatomy's inputs, the models at α 0 and 0.4, and histogram matching.

    python docs/scripts/structure_frontier.py RUN_DIR OUT_JSON [SEED]
"""
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from nbutils import classifier, clustering, config, methods, outputs, paired, plots
from nbutils.harmonize import Harmonizer

ALPHAS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)
COLUMNS = ("inputs", "blur_control", "outputs", "margin", "margin_ci_low", "structure", "structure_blur_control",
           "structure_clean_truth", "dark_overlap")

run = config.setup("quick", sys.argv[1], int(sys.argv[3]) if len(sys.argv) > 3 else 0)
train, test, outs = outputs.evaluation_data(run, progress=False)
train_outs = outputs.method_outputs(run, train, "train", train, targets=False, progress=False)
frozen_clf = classifier.for_run(run, train)
scratch = Path(tempfile.mkdtemp())
matched, matched_train = (o[methods.HISTOGRAM.name].scanner_free for o in (outs, train_outs))
blend = lambda model, other, alpha: ((1 - alpha) * model + alpha * other).astype(np.float32)
hits = lambda clf, images: float((classifier.predict(clf, images) == test.labels).mean())
chance = clustering.majority_chance(test.labels)


def score(method, model, draws, alpha) -> dict:
    out = blend(model, matched, alpha)
    row = paired.agreement_table(test, {method.name: out}).iloc[0]
    # the frozen classifier on the cached draw (first), then on the other seven
    over = [hits(frozen_clf, out)] + [hits(frozen_clf, blend(d, matched, alpha)) for d in draws]
    retrained, _ = classifier.train_classifier(
        blend(train_outs[method.name].scanner_free, matched_train, alpha), train.labels,
        scratch / f"{method.slug}-{alpha}.pt", k=len(train.domains), steps=run.profile.clf_steps,
        every=run.profile.checkpoint_every, seed=run.seed)
    return dict(method=method.name, alpha=alpha, frozen=over[0], frozen_median8=float(np.median(over)),
                retrained=hits(retrained, out), chance=chance, **{k: row[k] for k in COLUMNS if k in row})


rows = []
for method in methods.MODELS:
    model = outs[method.name].scanner_free.astype(np.float32)
    # the other 7 draws of z^a; the first (seed 0) made the cached output, as in notebook 09
    draws = Harmonizer.from_run(run, method.name).scanner_free_draws(test.images, range(run.seed + 1, run.seed + 8))
    for alpha in ALPHAS:
        rows.append(r := score(method, model, draws, alpha))
        print(f"{method.name:9s} α {alpha:.1f}: structure {r['structure']:.3f}  frozen {r['frozen']:.3f}, median of 8 "
              f"{r['frozen_median8']:.3f}, retrained {r['retrained']:.3f} (chance {r['chance']:.2f})  agreement "
              f"{r['outputs']:.3f} (inputs {r['inputs']:.3f}, blur control {r['blur_control']:.3f}, margin's CI from "
              f"{r['margin_ci_low']:.3f})  dark_overlap {r.get('dark_overlap', float('nan')):.3f}", flush=True)
json.dump(rows, open(sys.argv[2], "w"), indent=1)
shutil.rmtree(scratch)

# to look at: one anatomy seen by every scanner (rows): its input, each model at α 0 and 0.4, histogram matching
panels = {}
for r in plots.anatomy_rows(test.manifest, 0):
    name = test.domains[test.labels[r]]
    panels[f"{name} input"] = test.images[r]
    for method in methods.MODELS:
        for alpha in (0.0, 0.4):
            panels[f"{name}: {method.name} α {alpha:g}"] = blend(outs[method.name].scanner_free[r], matched[r], alpha)
    panels[f"{name}: histogram matching"] = matched[r]
plots.montage(panels, "Scanner-free outputs blended with histogram matching · " + plots.SIMULATED,
              ncols=6).savefig(sys.argv[2].rsplit(".", 1)[0] + ".png", dpi=110)
