import pytest

from keras_sam.workloads import PRESETS, get_preset, get_workload


def test_every_preset_names_a_workload_and_counts_its_sizes():
    for (workload, _), preset in PRESETS.items():
        w = get_workload(workload)
        assert all(w.count_params(s) > 0 for s in preset.sizes)


def test_paper_hyperparameters():
    mnist = get_preset("mnist", "paper")
    assert mnist.sizes == (0.25, 0.5, 1.0, 4.0, 10.0)
    assert (mnist.momentum, mnist.weight_decay, mnist.batch_size) == (0.9, 1e-4, 128)
    assert mnist.rhos == (0.01, 0.02, 0.05, 0.1, 0.2) and mnist.epochs == 100
    cifar = get_preset("cifar10", "paper")
    assert cifar.sizes == (4, 8, 16, 32, 64, 128, 256) and cifar.weight_decay == 5e-4
    imagenet = get_preset("imagenet", "paper")
    assert (imagenet.schedule, imagenet.warmup_steps, imagenet.epochs) == (
        "cosine",
        5000,
        90,
    )
    mf = get_preset("matrix-factorization", "paper")
    assert (mf.sizes, mf.lr, mf.schedule) == ((4, 10), 0.0005, "constant")


def test_config_id_ignores_the_grid_but_not_training():
    quick = get_preset("synthetic", "quick")
    assert quick.replace(rhos=(1.0,), seeds=(5,)).config_id() == quick.config_id()
    assert quick.replace(epochs=3).config_id() != quick.config_id()


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: get_preset("synthetic", "huge"), "preset"),
        (lambda: get_preset("svhn"), "workload"),
        (lambda: get_preset("synthetic").replace(schedule="linear"), "schedule"),
        (lambda: get_preset("synthetic").replace(epochs=0), "epochs"),
        (lambda: get_preset("synthetic").replace(rhos=(-1.0,)), "rhos"),
    ],
)
def test_bad_presets(call, name):
    with pytest.raises(ValueError, match=name):
        call()
