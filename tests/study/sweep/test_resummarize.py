"""``python -m keras_sam.study.sweep.resummarize DIR``: the summary of a
results folder rebuilt from its records and configs.json alone."""

import io
import json

from keras_sam.study.sweep import resummarize, run_sweep
from tests.study.sweep.runs import preset


def test_summary_from_the_folder_alone(tmp_path, fake, capsys):
    grid = preset(rhos=(0.05, 0.1, 0.2, 0.4), seeds=(0, 1))
    run_sweep(grid, str(tmp_path), make_plots=False, stream=io.StringIO())
    (tmp_path / "summary.md").unlink()
    rebuilt, start = resummarize.folder_preset(str(tmp_path))
    assert rebuilt.config_id() == grid.config_id() and rebuilt.seeds == (0, 1)
    assert rebuilt.rhos == (0.05, 0.1, 0.2, 0.4) and rebuilt.sizes == (4, 8, 16, 32)
    assert resummarize.main([str(tmp_path), "--no-plots"]) == 0
    text = (tmp_path / "summary.md").read_text()
    assert "best rho in grid" in text and "Paired gaps" in text
    assert "Rho search" not in text
    assert resummarize.main([str(tmp_path), "--rhos", "auto", "--no-plots"]) == 0
    text = (tmp_path / "summary.md").read_text()
    # From the quick preset's grid plus the recorded rhos: size 4 wants 0.8.
    assert "| 4 | sam | 0.05+, 0.1+, 0.2, 0.4+, 0.5, 1, 2 |" in text
    # A config that does not rebuild the recorded id is refused.
    configs = json.loads((tmp_path / "configs.json").read_text())
    configs[grid.config_id()]["lr"] = 0.5
    (tmp_path / "configs.json").write_text(json.dumps(configs))
    capsys.readouterr()
    assert resummarize.main([str(tmp_path), "--no-plots"]) == 2
    assert "rebuilds as" in capsys.readouterr().err
    assert resummarize.main([str(tmp_path / "empty")]) == 2
