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


def test_default_loss_keeps_the_config_ids():
    # Computed before the `loss` field existed: old results stay reusable.
    quick = get_preset("mnist", "quick")
    assert quick.loss == "default" and quick.config_id() == "3ba0812008"
    assert "loss" not in quick.training_config()
    squared = quick.replace(loss="squared")
    assert squared.training_config()["loss"] == "squared"
    assert squared.config_id() != quick.config_id()


def test_mnist_stability_preset():
    p = get_preset("mnist", "stability")
    assert (p.sizes, p.rhos, p.seeds) == ((10.0,), (0.01, 0.02, 0.05, 0.1, 0.2), (0,))
    assert (p.lr, p.schedule, p.momentum, p.weight_decay) == (0.1, "constant", 0, 0)
    assert (p.loss, p.hessian, p.hessian_examples, p.batch_size) == (
        "squared",
        True,
        1000,
        128,
    )
    assert get_workload("mnist").count_params(10.0) == 5_366_010


def test_bad_loss_names_the_argument():
    with pytest.raises(ValueError, match=r"`loss` must be one of \['default', "):
        get_preset("synthetic").replace(loss="l1")


def test_synthetic_presets_name_their_teacher():
    # Results made with the earlier He-normal teacher have no `teacher_init` in
    # their config, so they can never be taken for the uniform teacher's.
    for (workload, _), preset in PRESETS.items():
        if workload == "synthetic":
            noiseless = preset.data_options.get("noise") == 0.0
            assert preset.data_options["teacher_init"] == (
                "he" if noiseless else "uniform"
            )
            assert preset.training_config()["data_options"]["teacher_init"]
