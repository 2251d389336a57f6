import json
import math

from keras_sam.study.sweep import append_result, finished_keys, read_results


def test_truncated_last_line_is_skipped_and_next_append_survives(tmp_path):
    path = str(tmp_path / "r.jsonl")
    append_result(path, {"key": "a", "status": "ok", "value": 1.0})
    with open(path, "a") as f:
        f.write('{"key": "b", "status": "o')  # killed mid-write
    assert [r["key"] for r in read_results(path)] == ["a"]
    append_result(path, {"key": "c", "status": "ok", "value": math.nan})
    records = read_results(path)
    assert [r["key"] for r in records] == ["a", "c"]
    assert records[1]["value"] is None  # NaN stored as JSON null


def test_latest_record_decides_finished(tmp_path):
    path = str(tmp_path / "r.jsonl")
    append_result(path, {"key": "a", "status": "failed"})
    append_result(path, {"key": "b", "status": "ok"})
    assert finished_keys(read_results(path)) == {"b"}
    append_result(path, {"key": "a", "status": "ok"})
    assert finished_keys(read_results(path)) == {"a", "b"}
    assert all(json.loads(line) for line in open(path))


def test_missing_file_is_empty(tmp_path):
    assert read_results(str(tmp_path / "none.jsonl")) == []
