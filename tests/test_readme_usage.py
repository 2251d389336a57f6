"""The README's Usage snippet trains on every backend: in this test process,
on its backend, for one epoch instead of ten (`make test` runs it once per
backend; `make package-check` runs it whole from the wheel, in a fresh venv
without TensorFlow)."""

from pathlib import Path

from tests import release_check
from tests.conftest import BACKEND

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_usage_snippet_runs_on_this_backend(capsys):
    release_check.run_usage(str(README), epochs=1, installed=False)
    lines = capsys.readouterr().out.splitlines()
    sharpness = float(next(x for x in lines if x.startswith("sharpness:")).split()[1])
    assert 0 < sharpness < 1e3
    ran = [line for line in lines if line.startswith("Usage snippet ran: Keras")]
    assert ran and ran[0].endswith(f" on {BACKEND}"), lines[-5:]
