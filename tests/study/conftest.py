"""The study harness's tests are backend-independent: they run once (the
`backend_independent` marker, see tests/conftest.py)."""

import pytest


def pytest_itemcollected(item):
    item.add_marker(pytest.mark.backend_independent)
