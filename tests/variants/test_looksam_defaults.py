"""LookSAM's default options do not stall training where Liu et al.'s
alpha = 0.7 did: the README's Usage example (784-512-10 ReLU MLP, 2,000
examples x ~ N(0, I), label = argmax of the first ten inputs, SGD 0.1 with
momentum 0.9, batch 128, rho 0.05), and self-attention with momentum SGD
(where alpha = 0.7 diverged). Each check is run on the old default too, which
must fail it (so the check can fail)."""

import pytest

from keras_sam import variants
from tests.variants.default_examples import (
    attention_example,
    final_loss,
    readme_example,
    reference_loss,
)

pytestmark = pytest.mark.backend_independent

OLD_DEFAULT = variants.LookSAM(every=5, alpha=0.7)


@pytest.mark.parametrize(
    "example, epochs",
    [(readme_example, 6), (attention_example, 8)],
    ids=["readme", "attention"],
)
def test_default_looksam_trains_as_sgd_and_sam_do(example, epochs):
    reference = reference_loss(example, epochs)

    def trains(variant):
        return final_loss(example, variant, epochs) <= 2 * reference + 0.01

    assert trains(variants.LookSAM())
    # The registry's "looksam" is that default (so it trains the same).
    named = variants.get("looksam")
    assert type(named) is variants.LookSAM
    assert named.get_config() == variants.LookSAM().get_config()
    assert not trains(OLD_DEFAULT)
