"""nbutils: the small support module behind the GMM-DRIT notebooks.

One concept per file: ``config`` (profiles, run folders, metrics.json), ``io``
(atomic writes), ``volumes`` (one NIfTI volume), ``data`` (CSV → slices, manifest,
arrays), ``phantom`` (the built-in simulated scanners), ``ixi`` (IXI CSV helper),
``metrics``, ``baselines``, ``plots`` and ``pipeline`` (papermill runner).
"""
from .config import Run, get_profile, setup  # noqa: F401
from .volumes import DataError  # noqa: F401

__version__ = "0.1.0"
