"""`keras_sam._validation`: one message style for every argument check."""

import math
import re

import numpy as np
import pytest

from keras_sam import _validation as check

pytestmark = pytest.mark.backend_independent

NAN, INF = math.nan, math.inf
CASES = [
    (check.positive_int, [1, 7, np.int64(3)], [0, -1, 2.0, True, "3", None]),
    (check.non_negative_int, [0, 5], [-1, 0.0, False]),
    (check.positive_float, [0.1, 3, np.float32(2)], [0, -1.0, INF, NAN, True, "1"]),
    (check.non_negative_float, [0, 0.0, 2.5], [-0.1, INF, NAN, False, None]),
    (check.fraction, [0, 0.5, 0.999], [1, 1.0, -0.1, NAN, True, "0.5"]),
    (check.boolean, [True, False], [0, 1, "True", None]),
    (check.finite_float, [-2.5, 0, 3, np.float64(1)], [INF, -INF, NAN, True, None]),
    (check.unit_fraction, [1, 1.0, 0.1], [0, 0.0, 1.01, -0.5, NAN, True, "1"]),
    (check.string, ["", "val_"], [None, 1, b"val_"]),
]
ACCEPTED = [
    "a positive integer",
    "an integer >= 0",
    "a finite number > 0",
    "a finite number >= 0",
    r"a number in \[0, 1\)",
    "True or False",
    "a finite number",
    r"a number in \(0, 1\]",
    "a string",
]


@pytest.mark.parametrize(
    "helper, good, bad, accepted",
    [case + (accepted,) for case, accepted in zip(CASES, ACCEPTED)],
)
def test_helpers_accept_and_reject(helper, good, bad, accepted):
    for value in good:
        assert helper(value, "arg") == value
    for value in bad:
        message = rf"^`arg` must be {accepted}, got arg={re.escape(repr(value))}\.$"
        with pytest.raises(ValueError, match=message):
            helper(value, "arg")


def test_canonical_types():
    assert type(check.positive_int(np.int64(3), "n")) is int
    assert type(check.positive_float(3, "lr")) is float
    assert check.positive_int(None, "n", allow_none=True) is None
    with pytest.raises(ValueError, match="a positive integer or None"):
        check.positive_int(0, "n", allow_none=True)


def test_one_of_lists_the_choices():
    assert check.one_of("b", "mode", ("a", "b")) == "b"
    message = r"^`mode` must be one of \['a', 'b'\], got mode='c'\.$"
    with pytest.raises(ValueError, match=message):
        check.one_of("c", "mode", ("a", "b"))
    with pytest.raises(ValueError, match="one of"):
        check.one_of(True, "mode", (1, 2))


def test_int_at_least_names_the_minimum():
    assert check.int_at_least(np.int64(2), "n", 2) == 2
    for bad in [1, 2.0, True, None]:
        message = rf"^`n` must be an integer >= 2, got n={re.escape(repr(bad))}\.$"
        with pytest.raises(ValueError, match=message):
            check.int_at_least(bad, "n", 2)


def test_positive_int_hint():
    with pytest.raises(ValueError, match=r"a positive integer \(or a model\), got"):
        check.positive_int(0, "reference", hint="or a model")


def test_fraction_hint():
    with pytest.raises(ValueError, match=r"\[0, 1\) \(0 = dense\)"):
        check.fraction(2, "sparsity", hint="0 = dense")


def test_non_empty_tuple_checks_items():
    assert check.non_empty_tuple([1, 2], "sizes", check.positive_float) == (1.0, 2.0)
    for bad in [(), [], "12", 3, None]:
        with pytest.raises(ValueError, match="`sizes` must be a non-empty tuple"):
            check.non_empty_tuple(bad, "sizes")
    message = r"`sizes` must be a finite number > 0, got sizes=0\. \(in sizes=\(0, 2"
    with pytest.raises(ValueError, match=message):
        check.non_empty_tuple((0, 2), "sizes", check.positive_float)
