"""A scanner classifier: the frozen feature network of FID/KID (E5, no download) and the
residual-scanner probe of notebook 09.

Small CNN on images in [0, 1]: three stride-2 convolutions whose feature maps are summarised
by their per-channel mean and standard deviation (appearance, not layout), plus a soft
intensity histogram of the foreground; a ``features``-wide embedding; a K-way linear head.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from . import clustering
from .nets import _conv, level_stats, soft_histogram
from .stats import bootstrap_mean
from .train import adam


class ScannerClassifier(nn.Module):
    def __init__(self, k: int, width: int = 8, features: int = 32, bins: int = 32):
        super().__init__()
        chans = [width, 2 * width, 4 * width]
        self.k, self.width, self.bins, self.num_features = k, width, bins, features
        self.levels = nn.ModuleList([_conv(1, chans[0], 4, 2, norm=False), _conv(chans[0], chans[1], 4, 2, norm=False),
                                     _conv(chans[1], chans[2], 4, 2, norm=False)])
        self.embed = nn.Sequential(nn.Linear(2 * sum(chans) + bins, features), nn.LeakyReLU(0.2))
        self.head = nn.Linear(features, k)

    def features(self, x01: torch.Tensor) -> torch.Tensor:
        """(N, features) embedding of (N, 1, H, W) images in [0, 1]."""
        x = x01.float() * 2 - 1
        return self.embed(torch.cat([soft_histogram(x, self.bins) * 8, level_stats(self.levels, x)[1]], 1))

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x01))


class FeatureNet(nn.Module):
    """The classifier's embedding as a torchmetrics FID/KID feature extractor (``num_features``
    set, float input in [0, 1], gradients off)."""

    def __init__(self, clf: ScannerClassifier):
        super().__init__()
        self.clf = clf.eval().requires_grad_(False)
        self.num_features = clf.num_features

    def forward(self, x):
        return self.clf.features(x).double()

    def train(self, mode: bool = True):  # always frozen
        return super().train(False)


class ClassifierTask:
    def __init__(self, k: int, width: int, lr: float = 1e-3, device="cpu"):
        self.k, self.width, self.lr = k, width, lr
        self.modules = ScannerClassifier(k, width).to(device)
        self.optimizers = {"clf": adam(self.modules.parameters(), lr=lr)}

    def step(self, batch, it: int, ctx) -> dict[str, float]:
        x, y = batch
        self.modules.train()
        with ctx.autocast():
            logits = self.modules(x)
            loss = F.cross_entropy(logits.float(), y)
        ctx.update(loss, "clf")
        return dict(loss=float(loss.detach()), acc=float((logits.argmax(1) == y).float().mean()))

    def meta(self) -> dict:
        return dict(kind="scanner-classifier", k=self.k, width=self.width, lr=self.lr)


def train_classifier(images, labels, checkpoint, *, k: int | None = None, width: int = 8, steps: int = 400,
                     batch_size: int = 32, every: int = 200, seed: int = 0, device=None, any_seed: bool = False):
    """Train (or load) a scanner classifier on (N, H, W) [0, 1] images and their scanner labels
    (``any_seed``: load a checkpoint trained with another seed, :func:`nbutils.train.fit`)."""
    from .train import EpochSampler, fit, images_to_tensor, pick_device

    labels = np.asarray(labels)
    k = int(labels.max()) + 1 if k is None else k
    device = pick_device() if device is None else torch.device(device)
    torch.manual_seed(seed)  # the initial weights are a function of the seed, not of what ran before
    task = ClassifierTask(k, width, device=device)
    sampler = EpochSampler(len(images), batch_size, seed)

    def batch(i):
        idx = np.sort(sampler(i))
        return images_to_tensor(images, idx, device), torch.from_numpy(labels[idx]).long().to(device)

    history = fit(task, batch, steps, checkpoint, every=every, seed=seed, device=device, desc="scanner classifier",
                  any_seed=any_seed)
    return task.modules.eval(), history


@torch.no_grad()
def predict(clf: ScannerClassifier, images, batch_size: int = 256) -> np.ndarray:
    """Predicted scanner of each (H, W) image in [0, 1]."""
    device = next(clf.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(np.asarray(images[i:i + batch_size], np.float32)).unsqueeze(1).to(device)
        out.append(clf.eval()(x).argmax(1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, int)


def for_run(run, train, images=None, name: str = "scanner-classifier") -> ScannerClassifier:
    """The run's scanner classifier (trained on ``images``, default the raw training slices),
    trained once with the profile's settings and then loaded from ``<run>/checkpoints/<name>.pt``.
    The raw-slice one is the run's frozen reference, which ``make seeds`` shares with every seed:
    it is loaded whatever seed trained it."""
    p = run.profile
    clf, _ = train_classifier(train.images if images is None else images, train.labels,
                              run.checkpoints / f"{name}.pt", k=len(train.domains), steps=p.clf_steps,
                              every=p.checkpoint_every, seed=run.seed, any_seed=images is None)
    return clf


def retrained(run, train, method: str, made) -> ScannerClassifier:
    """The scanner classifier retrained on ``made.scanner_free``, the scanner-free outputs of the
    training split by ``method`` (a name of :data:`nbutils.methods.COMPARED`; ``made``: its
    :class:`nbutils.outputs.Outputs` from :func:`nbutils.outputs.method_outputs`; notebook 09, and
    `make run`'s other lane before it, :func:`nbutils.pipeline.prepare`): trained once into
    ``<run>/checkpoints/classifier-<slug>.pt``, then loaded, and trained anew when the outputs were
    made from other inputs than the ones it learnt from (a model trained again, other slices,
    another seed: ``made.inputs``, :func:`nbutils.outputs.inputs_stamp` taken when the outputs were
    made, kept beside the checkpoint in ``.inputs``). A process asking while another trains it waits
    and loads it. Identity's "outputs" are the raw slices: its classifier is :func:`for_run`'s."""
    from . import methods
    from .io import atomic_write_text, locked

    m = methods.get(method)
    if m == methods.IDENTITY:
        return for_run(run, train)
    if not made.inputs:
        raise ValueError(f"{method}'s outputs carry no stamp of what they were made from: "
                         "take them from nbutils.outputs.method_outputs")
    checkpoint = run.checkpoints / f"classifier-{m.slug}.pt"
    made_from = checkpoint.with_name(checkpoint.name + ".inputs")
    stamp = made.inputs
    with locked(checkpoint):
        fresh = made_from.exists() and made_from.read_text() == stamp
        if not fresh:
            checkpoint.unlink(missing_ok=True)
        clf = for_run(run, train, images=made.scanner_free, name=checkpoint.stem)
        if not fresh:
            atomic_write_text(made_from, stamp)
    return clf


def accuracy(clf: ScannerClassifier, images, labels, groups=None) -> dict[str, float]:
    """Accuracy of ``clf`` on ``images`` and the chance level (the largest class's share); ``matched``:
    the accuracy under the best one-to-one renaming of the predictions (Hungarian, as E1's ACC),
    which says whether the classifier still tells the scanners apart where it names them wrong
    (outputs that moved each source to another scanner's look score low in accuracy, high here), and
    its own chance level ``matched_chance`` (:func:`nbutils.clustering.matched_chance`);
    with ``groups`` (one id per image, e.g. its subject) also the 95 % bootstrap CI of the accuracy
    over those groups (``ci_low``, ``ci_high``: how far another draw of test subjects could move
    it; the classifier and the images' model are held fixed)."""
    labels = np.asarray(labels)
    predicted = predict(clf, images)
    hit = predicted == labels
    out = dict(accuracy=float(hit.mean()), matched=clustering.accuracy(labels, predicted),
               chance=clustering.majority_chance(labels), matched_chance=clustering.matched_chance(labels))
    if groups is not None:
        _, out["ci_low"], out["ci_high"] = bootstrap_mean(hit, groups)
    return out


def predictions_over_draws(clf: ScannerClassifier, harmonizer, images, seeds) -> list[np.ndarray]:
    """What ``clf`` names each of the scanner-free outputs of ``images`` made by ``harmonizer`` (a
    :class:`nbutils.harmonize.Harmonizer`) with each seed: each seed draws the random attribute
    z^a ~ N(0, I) those outputs are made with, and which common appearance a draw gives changes how
    much of the source a classifier still reads."""
    return [predict(clf, outs) for outs in harmonizer.scanner_free_draws(images, seeds)]


def confusion(labels, predicted, names) -> pd.DataFrame:
    """The share of each source's images (rows: ``names[label]``) that were named each scanner
    (columns); each row sums to 1 (a source without images: a row of zeros). ``predicted`` may hold
    several answers per image (one per draw), stacked: ``len(predicted)`` a multiple of ``len(labels)``."""
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    if not len(labels):
        raise ValueError("no images: nothing to tally")
    if len(predicted) % len(labels):
        raise ValueError(f"{len(predicted)} answers for {len(labels)} images: not one or more per image")
    counts = clustering.contingency(np.tile(labels, len(predicted) // len(labels)), predicted, len(names)).T
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    return pd.DataFrame(shares, index=pd.Index(list(names), name="source"), columns=list(names))
