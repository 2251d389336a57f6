"""The overparameterization sweep: workload x sizes x {baseline, SAM at each
rho} x seeds, resumable, summarized as a Markdown table and PNG plots.

```python
from keras_sam.study.sweep import run_sweep
from keras_sam.study.workloads import get_preset
run_sweep(get_preset("synthetic", "quick"), out_dir="results/synthetic-quick")
```

Command line: ``keras-sam sweep synthetic --preset quick --out results/q``.
"""

from keras_sam.study.sweep.plan import RunSpec, plan_runs
from keras_sam.study.sweep.results import append_result, finished_keys, read_results
from keras_sam.study.sweep.runner import describe_plan, run_sweep, write_summary
from keras_sam.study.sweep.summary import (
    SizeSummary,
    Stat,
    markdown_table,
    stat,
    summarize,
)

__all__ = [
    "RunSpec",
    "SizeSummary",
    "Stat",
    "append_result",
    "describe_plan",
    "finished_keys",
    "markdown_table",
    "plan_runs",
    "read_results",
    "run_sweep",
    "stat",
    "summarize",
    "write_summary",
]
