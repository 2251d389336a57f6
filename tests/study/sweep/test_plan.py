import pytest

from keras_sam.study.sweep import plan_runs
from keras_sam.study.workloads import get_preset
from keras_sam.study.workloads.presets import PRUNING_METHODS


def test_dense_plan_is_sizes_by_methods_by_seeds():
    preset = get_preset("synthetic", "quick")
    runs = plan_runs(preset)
    assert len(runs) == 3 * 5 * 2 and {r.variant for r in runs} == {"dense"}
    assert runs[0].key.startswith(f"synthetic|{preset.config_id()}|dense|100|")


def test_fixed_budget_plan():
    preset = get_preset("synthetic", "sparse").replace(seeds=(0,), rhos=(0.1,))
    runs = plan_runs(preset)
    pairs = sorted({(r.size, r.variant) for r in runs})
    assert pairs == [
        (100, "dense"),
        (200, "random@100"), (200, "snip@100"),
        (400, "random@100"), (400, "snip@100"),
        (1000, "random@100"), (1000, "snip@100"),
    ]  # fmt: skip
    assert len(runs) == 7 * 2
    assert runs[2].pruning == ("random", 100.0, False) and runs[0].pruning is None
    assert "(random@100)" in runs[2].label
    # Same training settings: the dense budget runs are shared with a plain
    # sweep (the quick data with the He student, which the sparse preset keeps).
    dense = get_preset("synthetic", "quick").replace(
        sizes=(100,), rhos=(0.1,), seeds=(0,), num_train=2_040, model_options={}
    )
    assert {r.key for r in plan_runs(dense)} <= {r.key for r in runs}


def test_rescaled_variants():
    preset = get_preset("synthetic", "sparse").replace(sparse_rescale=True)
    variants = {r.variant for r in plan_runs(preset)}
    assert variants == {"dense", "random-rescaled@100", "snip-rescaled@100"}
    spec = next(r for r in plan_runs(preset) if r.variant == "snip-rescaled@100")
    assert spec.pruning == ("snip", 100.0, True)
    # Rescaling is a variant of its own; the dense runs are shared.
    assert preset.config_id() == get_preset("synthetic", "sparse").config_id()


def test_pruning_methods_match_the_library():
    from keras_sam import sparsity

    assert tuple(sparsity.METHODS) == PRUNING_METHODS


@pytest.mark.parametrize(
    "changes, name",
    [
        (dict(sparse_budget=100, sizes=(50, 200)), "sizes"),
        (dict(sparse_budget=100, sizes=(100,)), "sparse_budget"),
        (dict(sparse_budget=-1.0, sizes=(100,)), "sparse_budget"),
        (dict(sparse_budget=100, sparse_methods=("magnitude",)), "sparse_methods"),
        (dict(sparse_budget=100, sparse_methods="snip"), "sparse_methods"),
        (dict(sparse_budget=100, sparse_rescale=1), "sparse_rescale"),
    ],
)
def test_bad_fixed_budget_names_the_argument(changes, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        get_preset("synthetic", "sparse").replace(**changes)
