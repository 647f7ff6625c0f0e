"""Every harmonization method, named once: its display name, slug, checkpoint and producing notebook.

The display name is what tables, figures and ``metrics.json`` keys show; the slug names its files
(cached outputs, figures, classifiers); the checkpoint (models only) lives in ``<run>/checkpoints/``
and is made by ``notebook``. Nothing here imports torch: a report reads these names without
loading a model.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    name: str  # display name: tables, figures, metrics.json keys
    slug: str  # file names: cached outputs, figures, checkpoints, classifiers
    notebook: str = ""  # the notebook that trains it (models only)
    section: str = ""  # its notebook's section of metrics.json (models only)
    variant: str = ""  # drit.DRITConfig.variant (stage-2 models only)

    @property
    def is_model(self) -> bool:
        return bool(self.notebook)

    def checkpoint(self, known_labels: bool = False) -> str:
        """The checkpoint's file name; ``known_labels``: the ablation conditioned on the true scanner."""
        if not self.is_model:
            raise ValueError(f"{self.name} is not trained: it has no checkpoint")
        return f"{self.slug}{'-known' if known_labels else ''}.pt"


GMM_DRIT = Method("GMM-DRIT", "gmm-drit", "03_gmmdrit_training", "03_gmmdrit", "gmm-drit")
DRITPP = Method("DRIT++", "dritpp", "04_dritpp_baseline", "04_dritpp", "drit++")
HISTOGRAM = Method("histogram matching", "histogram-matching")
IDENTITY = Method("identity", "identity")
# the yardstick of notebook 09, trained on paired data the others never see; a small model on a small
# paired split: a reference for what paired supervision reaches at this budget, not a bound (README, "The yardstick")
SUPERVISED = Method("paired supervision (reference; not available to unpaired methods)", "paired-unet",
                    "09_beyond_the_thesis", "09_beyond")

MODELS = (GMM_DRIT, DRITPP)  # the unpaired stage-2 models compared
BASELINES = (HISTOGRAM, IDENTITY)
COMPARED = (*MODELS, *BASELINES)  # every method of notebooks 05-09, in table order
ALL = (*COMPARED, SUPERVISED)


def get(key: str | Method) -> Method:
    """The method called ``key`` (display name, slug or stage-2 variant)."""
    if isinstance(key, Method):
        return key
    for m in ALL:
        if key in (m.name, m.slug) or (m.variant and key == m.variant):
            return m
    raise ValueError(f"unknown method {key!r}: choose one of {', '.join(m.slug for m in ALL)} "
                     f"(or {', '.join(m.name for m in ALL[:-1])})")
