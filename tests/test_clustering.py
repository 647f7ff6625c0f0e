import numpy as np
import pytest

from nbutils import clustering


def test_accuracy_is_invariant_to_renaming_clusters():
    labels = np.array([0, 0, 1, 1, 2, 2, 2])
    assert clustering.accuracy(labels, (labels + 1) % 3) == 1.0
    clusters = np.array([1, 1, 0, 0, 0, 2, 2])  # one sample of label 2 in label 1's cluster
    assert clustering.accuracy(labels, clusters) == pytest.approx(6 / 7)
    assert clustering.matching(labels, clusters) == {0: 1, 1: 0, 2: 2}


def test_accuracy_handles_more_clusters_than_labels():
    labels = np.array([0, 0, 0, 1, 1, 1])
    clusters = np.array([0, 0, 2, 1, 1, 1])
    assert clustering.accuracy(labels, clusters) == pytest.approx(5 / 6)


def test_chance_baseline_is_just_above_one_over_k_and_scores_are_perfect_for_a_perfect_clustering():
    rng = np.random.default_rng(123)  # not the baseline's own seed
    labels = np.repeat(np.arange(4), 100)
    table = clustering.scores(labels, rng.permutation(labels), permutations=50)
    # best-matching accuracy of a random clustering sits a little above 1/K: why a chance
    # baseline is reported instead of 1/K
    assert 0.25 < table.loc["ACC", "chance_mean"] < 0.35
    assert abs(table.loc["ARI", "chance_mean"]) < 0.01
    perfect = clustering.scores(labels, (labels + 2) % 4, permutations=20)
    assert (perfect["value"] == 1.0).all()
    assert (perfect["chance_p95"] < 0.4).all()


def test_the_renamed_accuracy_s_chance_is_what_blind_predictions_score_not_the_largest_class_s_share():
    """Predictions that ignore the labels, spread over the classes as evenly as the labels, score
    well above the largest class's share once renamed: that mean is the floor to read the renamed
    accuracy against; a blind prediction of one class scores the share itself, under the floor."""
    rng = np.random.default_rng(7)  # not matched_chance's own seed
    for k, share in ((4, 0.25), (3, 1 / 3)):
        labels = np.repeat(np.arange(k), 48)
        floor = clustering.matched_chance(labels)
        blind = np.mean([clustering.accuracy(labels, rng.integers(0, k, len(labels))) for _ in range(300)])
        assert floor > share + 0.04 and abs(blind - floor) < 0.02, (k, floor, blind)
        one_class = clustering.accuracy(labels, np.zeros_like(labels))
        assert one_class == pytest.approx(share) and one_class < floor
        assert clustering.accuracy(labels, labels) == 1.0


def test_linear_probe_finds_information_the_clustering_may_miss():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 40)
    informative = rng.normal(size=(120, 5)) + labels[:, None] * 1.5
    assert clustering.linear_probe(informative, labels) > 0.9
    assert clustering.linear_probe(rng.normal(size=(120, 5)), labels) < 0.6


def test_the_probe_holds_out_an_anatomy_s_copies_together_when_told():
    """Traveling subjects: 30 anatomies, each seen by 4 scanners. Features that do not depend on
    the scanner score 0 with plain folds (each held-out image's copies sit in training with the
    other labels) and chance with folds by anatomy; a scanner shift half the anatomy's spread is read."""
    rng = np.random.default_rng(0)
    anatomy = np.repeat(np.arange(30), 4)
    labels = np.tile(np.arange(4), 30)
    invariant = rng.normal(size=(30, 100))[anatomy]  # many features, as a content map summary has
    assert clustering.linear_probe(invariant, labels) < 0.05
    assert 0.1 < clustering.linear_probe(invariant, labels, groups=anatomy) < 0.45
    shifted = invariant + 0.5 * rng.normal(size=(4, 100))[labels]
    assert clustering.linear_probe(shifted, labels, groups=anatomy) > 0.9
    # one subject per scanner (ordinary data): no fold could hold a subject out and still train
    # on its scanner, and plain folds would read the anatomy (1.00 for features without the
    # scanner): not measured
    one_each = labels % 4
    own = rng.normal(size=(4, 100))[one_each]  # each subject's own anatomy, no scanner part
    assert clustering.linear_probe(own, labels) == 1.0
    with pytest.warns(UserWarning, match="two or more subjects of every label"):
        assert np.isnan(clustering.linear_probe(own, labels, groups=one_each))
