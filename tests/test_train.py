import numpy as np
import pytest
import torch

from nbutils import gmvae, train


def test_epoch_sampler_visits_every_index_once_per_epoch_and_is_deterministic():
    s = train.EpochSampler(10, 4, seed=1)
    stream = np.concatenate([s(i) for i in range(5)])  # 20 draws = 2 epochs, batches straddle them
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))
    assert np.array_equal(s(3), train.EpochSampler(10, 4, seed=1)(3))
    assert not np.array_equal(stream[:10], stream[10:])
    assert not np.array_equal(s(0), train.EpochSampler(10, 4, seed=2)(0))
    with pytest.raises(ValueError, match="empty"):
        train.EpochSampler(0, 4)


def _task_and_batches(images):
    torch.manual_seed(0)
    cfg = gmvae.GMVAEConfig(image_shape=(16, 16), k=3, gaussian_size=8, width=4)
    task = gmvae.GMVAETask(cfg, len(images), batch_size=8)
    sampler = train.EpochSampler(len(images), 8, seed=5)
    return task, lambda i: train.images_to_tensor(images, sampler(i), torch.device("cpu"))


class Crash(RuntimeError):
    pass


def test_interrupted_then_resumed_run_ends_with_the_same_weights(tmp_path):
    images = np.random.default_rng(0).random((30, 16, 16)).astype(np.float16)
    whole, batches = _task_and_batches(images)
    history = train.fit(whole, batches, 12, tmp_path / "whole.pt", every=4, seed=3)

    first, batches = _task_and_batches(images)

    def crashing(i):
        if i == 9:  # after the checkpoint at 8, before the one at 12
            raise Crash("power cut")
        return batches(i)

    with pytest.raises(Crash):
        train.fit(first, crashing, 12, tmp_path / "resumed.pt", every=4, seed=3)
    state = train.load_checkpoint(tmp_path / "resumed.pt")
    assert state["step"] == 8 and len(state["history"]) == 8
    assert [p.name for p in tmp_path.iterdir()] == ["whole.pt", "resumed.pt"] or \
        sorted(p.name for p in tmp_path.iterdir()) == ["resumed.pt", "whole.pt"]  # no temporaries

    again, batches = _task_and_batches(images)  # a fresh process: new, differently trained nets
    resumed_history = train.fit(again, batches, 12, tmp_path / "resumed.pt", every=4, seed=3)
    for (name, a), b in zip(whole.modules.state_dict().items(), again.modules.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed_history["loss"].tolist() == history["loss"].tolist()
    # and a finished run is loaded, not retrained
    done, batches = _task_and_batches(images)
    assert len(train.fit(done, lambda i: pytest.fail("retrained"), 12, tmp_path / "whole.pt", seed=3)) == 12


def test_checkpoint_of_other_settings_is_refused(tmp_path):
    images = np.random.default_rng(0).random((30, 16, 16)).astype(np.float16)
    task, batches = _task_and_batches(images)
    train.fit(task, batches, 2, tmp_path / "g.pt")
    other = gmvae.GMVAETask(gmvae.GMVAEConfig(image_shape=(16, 16), k=4, gaussian_size=8, width=4), 30, 8)
    with pytest.raises(ValueError, match="other settings"):
        train.fit(other, batches, 4, tmp_path / "g.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt is not a readable checkpoint"):
        train.load_checkpoint(tmp_path / "junk.pt")


def test_a_checkpoint_trained_with_another_seed_is_refused_unless_any_seed_is_asked(tmp_path):
    """A run folder holds one seed's models: a notebook run with another seed over it (papermill,
    or `make run`'s `--only` without notebook 01, which would set the run aside) must not load the
    first seed's model and score it as its own, nor train on from it."""
    images = np.random.default_rng(0).random((30, 16, 16)).astype(np.float16)
    task, batches = _task_and_batches(images)
    train.fit(task, batches, 2, tmp_path / "g.pt", seed=0)
    assert train.load_checkpoint(tmp_path / "g.pt")["seed"] == 0
    again, _ = _task_and_batches(images)
    for steps in (2, 4):  # loading it, training on from it
        # the message names the run's seed first: most often the notebook was not given it
        with pytest.raises(ValueError, match=r"trained with seed 0, not 1\. If this run folder is seed 0's, set "
                                             r"the notebook's seed parameter to 0 \(papermill -p seed 0\)"):
            train.fit(again, batches, steps, tmp_path / "g.pt", seed=1)
    # a reference shared by the seeds of `make seeds` is loaded whatever seed trained it, but not
    # trained on with another seed's batches
    for steps in (2, 1):  # complete: as many iterations as asked, or more
        assert len(train.fit(again, lambda i: pytest.fail("retrained"), steps, tmp_path / "g.pt", seed=1,
                             any_seed=True)) == 2
    with pytest.raises(ValueError, match="trained with seed 0, not 1"):
        train.fit(again, batches, 4, tmp_path / "g.pt", seed=1, any_seed=True)
    # a checkpoint written before the seed was kept is taken as it is
    state = train.load_checkpoint(tmp_path / "g.pt")
    del state["seed"]
    torch.save(state, tmp_path / "old.pt")
    assert len(train.fit(again, lambda i: pytest.fail("retrained"), 2, tmp_path / "old.pt", seed=1)) == 2


def test_cpu_runs_in_float32_without_autocast():
    ctx = train.Context(torch.device("cpu"), {})
    assert not ctx.amp
    with ctx.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    assert train.pick_device("cpu").type == "cpu"


@pytest.mark.parametrize("decay", [0.0, 1e-4])
def test_adam_ends_at_the_weights_of_the_default_adam_bit_for_bit(decay):
    torch.manual_seed(0)
    start = [torch.randn(8, 4, 3, 3), torch.randn(8), torch.randn(3, 5)]
    ends = []
    for make in (torch.optim.Adam, train.adam):
        params = [p.clone().requires_grad_() for p in start]
        opt = make(params, lr=1e-3, betas=(0.5, 0.999), weight_decay=decay)
        grads = torch.Generator().manual_seed(1)
        for _ in range(30):
            for p in params:
                p.grad = torch.randn(p.shape, generator=grads)
            opt.step()
        ends.append(params)
    assert all(torch.equal(a, b) for a, b in zip(*ends))
    assert not torch.equal(ends[1][0], start[0])  # it did step


def test_every_training_task_uses_the_multi_tensor_adam():
    from nbutils import bench, classifier, drit, supervised
    from nbutils.config import PROFILES

    tasks = [drit.DRITTask(*bench._stage2_config(PROFILES["smoke"], "gmm-drit")),
             drit.DRITTask(*bench._stage2_config(PROFILES["smoke"], "drit++")),
             gmvae.GMVAETask(gmvae.GMVAEConfig(image_shape=(16, 16), k=2, width=4), 10),
             classifier.ClassifierTask(2, 4), supervised.PairedTask(2, 4)]
    groups = [g for t in tasks for o in t.optimizers.values() for g in o.param_groups]
    assert groups and all(g["foreach"] is True for g in groups)


def test_a_run_resumed_from_a_checkpoint_of_the_per_tensor_adam_keeps_the_multi_tensor_update(tmp_path):
    images = np.random.default_rng(0).random((30, 16, 16)).astype(np.float16)
    task, batches = _task_and_batches(images)
    train.fit(task, batches, 4, tmp_path / "g.pt", every=4)
    state = train.load_checkpoint(tmp_path / "g.pt")  # as checkpoints were written before train.adam
    for opt in state["optimizers"].values():
        for g in opt["param_groups"]:
            g["foreach"] = None
    torch.save(state | {"step": 2}, tmp_path / "g.pt")
    again, batches = _task_and_batches(images)
    train.fit(again, batches, 4, tmp_path / "g.pt", every=4)
    groups = [g for o in again.optimizers.values() for g in o.param_groups]
    assert groups and all(g["foreach"] is True for g in groups)
