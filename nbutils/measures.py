"""The headline measures of notebooks 05-09: each named once, with how its ``metrics.json`` keys are
written and read.

A measure records one value per *row* (a method, or a reference such as ``real vs real``) under the
key ``"<stem> <row>"`` in its notebook's section of ``metrics.json``. The notebooks write through
:meth:`Measure.record` / :meth:`Measure.means`, :mod:`nbutils.report` reads through
:meth:`Measure.read`: no key is formatted by hand on either side.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .methods import IDENTITY
from .paired import CLEAN_TRUTH, RESCAN_CEILING, SCAN_CEILING, TARGET_SCAN

# reference rows recorded beside the methods
REAL_VS_REAL = "real vs real"  # E3: two real slices of the target
BEFORE = "before (inputs)"  # E4: the inputs, before harmonization
FLOOR = "floor (real vs real)"  # E5: two random halves of the real set
OWN_SCANS = "control: b's own test scans"  # E5: the target's real scans of the test anatomies
INPUTS = "inputs"  # scanner-free consistency of the inputs themselves
CHANCE = "chance"  # residual scanner: the largest class's share
TRUTH_OF_TARGET = "b's clean truth"  # source probe: one image per anatomy whatever the source (reads chance)


@dataclass(frozen=True)
class Measure:
    label: str  # the row of the results table
    section: str  # the metrics.json section (the notebook that records it)
    stem: str  # keys are "<stem> <row>"
    higher: bool  # higher is better
    thesis: str  # the thesis's GMM-DRIT / DRIT++ numbers (its real scanners), quoted
    reference: str = ""  # the row that is this measure's reference (ceiling, floor, before, chance)

    def key(self, row: str) -> str:
        return f"{self.stem} {row}"

    def record(self, values: Mapping[str, float]) -> dict[str, float]:
        """``{row: value}`` as ``metrics.json`` keys of this measure (NaN rows left out)."""
        return {self.key(row): float(v) for row, v in values.items() if v == v}

    def means(self, table, column: str, by: str = "method") -> dict[str, float]:
        """The mean of ``column`` per ``by`` of a per-unit score table, as keys of this measure."""
        return self.record(table.groupby(by, sort=False)[column].mean())

    def read(self, metrics: dict, row: str) -> float | None:
        """The value recorded for ``row`` in a whole ``metrics.json`` (None when not recorded)."""
        return metrics.get(self.section, {}).get(self.key(row))

    def recorded(self, metrics: dict) -> bool:
        return any(k.startswith(self.stem + " ") for k in metrics.get(self.section, {}))


E2 = Measure("E2 structure SSIM, input vs scanner-free", "05_ssim", "E2 structure", True, "0.96–0.97 / 0.21–0.32")
E3 = Measure("E3 luminance SSIM, translated vs real target", "05_ssim", "E3 luminance", True,
             "0.95–0.99 / 0.92–0.98", REAL_VS_REAL)
E4 = Measure("E4 cross-scanner luminance SSIM after", "05_ssim", "E4 luminance", True, "0.99 / 0.99 (0.97 before)",
             BEFORE)
E5_FID = Measure("E5 FID (classifier features)", "06_fid_kid", "E5 FID", False, "0.7611 / 11.71 (its own features)",
                 FLOOR)
E5_KID = Measure("E5 KID (classifier features)", "06_fid_kid", "E5 KID", False, "0.000578 / 0.013435", FLOOR)
E7 = Measure("E7 mean pairwise W1 between scanners", "08_intensities", "E7 mean pairwise W1", False, "figure only",
             IDENTITY.name)
SCAN_SSIM = Measure("SSIM vs target scan, a → b", "09_beyond", "vs target scan SSIM", True, "not measurable",
                    RESCAN_CEILING)
SCAN_PSNR = Measure("PSNR vs target scan, a → b (dB)", "09_beyond", "vs target scan PSNR", True, "not measurable",
                    RESCAN_CEILING)
TRUTH_SSIM = Measure("SSIM vs clean truth, a → b", "09_beyond", "vs truth SSIM", True, "not measurable", SCAN_CEILING)
TRUTH_PSNR = Measure("PSNR vs clean truth, a → b (dB)", "09_beyond", "vs truth PSNR", True, "not measurable",
                     SCAN_CEILING)
TRUTH_PSNR_FIELD = Measure("PSNR vs clean truth, a → b, smooth field divided out (oracle, dB)", "09_beyond",
                           "vs truth PSNR field out", True, "not measurable", SCAN_CEILING)  # paired.field_gap, order 3
CONSISTENCY = Measure("scanner-free consistency SSIM", "09_beyond", "sf consistency SSIM", True, "not measurable",
                      INPUTS)
BLUR_CONTROL = Measure("scanner-free consistency SSIM, blur control", "09_beyond", "sf blur control SSIM", True,
                       "not measurable", INPUTS)
MARGIN = Measure("scanner-free consistency, margin over the stronger control", "09_beyond", "sf margin over controls",
                 True, "not measurable")
DARK = Measure("scanner-free: darkest 5 % of the brain where the clean truth's are (Dice)", "09_beyond",
               "sf dark overlap", True, "not measurable", INPUTS)
RESIDUAL_FROZEN = Measure("residual scanner acc., frozen raw classifier", "09_beyond", "residual acc frozen", False,
                          "not measurable", CHANCE)
RESIDUAL_FROZEN_DRAWS = Measure("residual scanner acc., frozen raw classifier, median over scanner-free draws",
                                "09_beyond", "residual acc frozen draws median", False, "not measurable", CHANCE)
RESIDUAL_FROZEN_MATCHED = Measure("residual scanner acc., frozen raw classifier, its answers best renamed", "09_beyond",
                                  "residual acc frozen matched", False, "not measurable", CHANCE)
RESIDUAL_RETRAINED = Measure("residual scanner acc., retrained classifier", "09_beyond", "residual acc retrained",
                             False, "not measurable", CHANCE)

FIELD_NEARER = Measure("a → b: share of pairs whose smooth field is nearer b's scan's than a's", "09_beyond",
                       "field nearer target", True, "not measurable", RESCAN_CEILING)

# usage.source_probe: the translations toward b read as the z^c probe reads z^c; its reference row, b's clean truth
# (TRUTH_OF_TARGET), reads about chance by construction and is shown in notebook 09, not recorded
SOURCE_PROBE = Measure("toward b, a = b too: source scanner probed from the translations' summary", "09_beyond",
                       "source probe summary", False, "not measurable", CHANCE)
SOURCE_PROBE_DETAIL = Measure("toward b, a = b too: source scanner probed from the translations' detail", "09_beyond",
                              "source probe detail", False, "not measurable", CHANCE)

TABLE = (E2, E3, E4, E5_FID, E5_KID, E7, SCAN_SSIM, SCAN_PSNR, TRUTH_SSIM, TRUTH_PSNR, TRUTH_PSNR_FIELD, FIELD_NEARER,
         SOURCE_PROBE, SOURCE_PROBE_DETAIL, CONSISTENCY, BLUR_CONTROL, MARGIN, DARK, RESIDUAL_FROZEN,
         RESIDUAL_FROZEN_MATCHED, RESIDUAL_FROZEN_DRAWS, RESIDUAL_RETRAINED)  # the results table's rows, in order
# the yardstick's (measure, reference) columns of paired.summary -> the measure that records them
YARDSTICK = {("ssim", TARGET_SCAN): SCAN_SSIM, ("psnr", TARGET_SCAN): SCAN_PSNR,
             ("ssim", CLEAN_TRUTH): TRUTH_SSIM, ("psnr", CLEAN_TRUTH): TRUTH_PSNR}
