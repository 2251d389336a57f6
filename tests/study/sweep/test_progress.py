import io

from keras_sam.study.sweep.progress import Progress, format_seconds


def test_format_seconds():
    assert format_seconds(12.4) == "12s"
    assert format_seconds(245) == "4m05s"
    assert format_seconds(3720) == "1h02m"


def test_estimate_uses_timed_sizes_and_scales_untimed(monkeypatch):
    clock = iter([0.0, 10.0, 10.0])
    monkeypatch.setattr("time.perf_counter", lambda: next(clock))
    out = io.StringIO()
    p = Progress(total=4, already_done=1, stream=out)
    p.start("a", 1.0, 100, [(1.0, 100), (1.0, 100), (2.0, 400)])
    assert p.end(1.0, "ok") == 10.0
    # Left: one run of size 1 (10 s) and one of size 2 (10 s * sqrt(4) = 20 s).
    p.start("b", 1.0, 100, [(1.0, 100), (2.0, 400)])
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[1/4 done, 3 left, estimating left] a")
    assert lines[2].startswith("[2/4 done, 2 left, ~30s left] b (100 params)")
