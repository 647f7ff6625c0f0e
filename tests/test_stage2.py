"""The stage-2 notebooks' experiment helpers (nbutils.stage2)."""
import pandas as pd
from test_paired import traveling

from nbutils import drit, stage2
from nbutils.harmonize import Harmonizer


def test_the_learning_curve_reuses_the_model_s_own_outputs_for_its_last_snapshot_only(tmp_path):
    test = traveling(n=4, k=2)
    cfg = drit.DRITConfig(image_shape=test.images.shape[1:], k=2, variant="drit++", width=4, attr=8, n_res=1)
    model, _ = drit.train_drit(test.images, test.labels, cfg, tmp_path / "m.pt", steps=4, batch_size=2, every=2,
                               snapshots=True, device="cpu")
    harm = Harmonizer(model, test, seed=0)
    own = harm.to_every_domain(test.images), harm.scanner_free(test.images, seed=0)
    curve = lambda own=None: stage2.learning_curve(tmp_path / "m.pt", model, test, test, "m", own=own)
    fresh = curve()
    assert list(fresh.step) == [2, 4]
    pd.testing.assert_frame_equal(curve(own), fresh)
    # the last row is made of the outputs handed over, the earlier snapshots' are not
    other = curve((own[0] * 0.5, test.images.copy()))
    pd.testing.assert_frame_equal(other.iloc[:-1], fresh.iloc[:-1])
    assert other.iloc[-1]["target_sensitivity"] != fresh.iloc[-1]["target_sensitivity"]
    assert other.iloc[-1]["sf_structure"] != fresh.iloc[-1]["sf_structure"]
