"""Stage-2 diagnostics (nbutils.usage) on models and outputs whose answer is known."""
import numpy as np
import torch
from test_paired import traveling

from nbutils import drit, usage
from nbutils.harmonize import Harmonizer


def oracle_and_ignoring_outputs(test):
    """(K, N, H, W) outputs: each image replaced by its anatomy's scan on the target (an oracle
    that moves exactly as far as the scanners differ), and the inputs whatever the target."""
    m = test.manifest.reset_index(drop=True)
    k = len(test.domains)
    row = {(s, b): i for i, (s, b) in enumerate(zip(m.subject, m.domain_index))}
    oracle = np.stack([np.stack([test.images[row[(s, b)]] for s in m.subject]) for b in range(k)])
    ignoring = np.stack([np.asarray(test.images)] * k)
    return oracle, ignoring


def test_target_sensitivity_is_one_for_an_oracle_and_zero_when_the_target_is_ignored():
    test = traveling(n=6, k=3)
    oracle, ignoring = oracle_and_ignoring_outputs(test)
    assert abs(usage.target_sensitivity(oracle, test)["ratio"] - 1) < 0.05
    assert usage.target_sensitivity(ignoring, test)["ratio"] == 0
    half = (oracle + ignoring) / 2  # moves half way
    assert abs(usage.target_sensitivity(half, test)["ratio"] - 0.5) < 0.05


def translator(shape=(32, 32), k=3):
    torch.manual_seed(0)
    cfg = drit.DRITConfig(image_shape=shape, k=k, variant="drit++", width=4, attr=8, n_res=1)
    return drit.Translator(cfg).eval()


def test_report_tells_a_generator_that_ignores_its_codes_from_one_that_uses_them():
    """With its code modulation zeroed the generator ignores its codes (sensitivity exactly 0);
    as initialised (random modulation weights) it does not."""
    test = traveling(n=6, k=3)
    model = translator()

    def outputs(m):
        harm = Harmonizer(m)
        return np.stack([harm.to_scanner(test.images, b) for b in range(3)])

    using = usage.report(model, test, outputs(model))
    for block in model.generator.res:
        torch.nn.init.zeros_(block.film.weight)
        torch.nn.init.zeros_(block.film.bias)
    ignoring = usage.report(model, test, outputs(model))
    assert ignoring["target_sensitivity"] == 0 and ignoring["chance"] == 1 / 3
    assert using["target_sensitivity"] > 0.02
    assert set(using) >= {"probe_zc", "probe_za", "dc_accuracy", "ds1_accuracy", "ds2_accuracy"}
    assert all(0 <= using[k] <= 1 for k in ("probe_zc", "probe_za", "dc_accuracy", "ds1_accuracy", "ds2_accuracy"))
