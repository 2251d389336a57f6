"""The study harness: the paper's workloads, the overparameterization sweep and the
`keras-sam` command line, built on the library (`keras_sam`) and never imported by
it.

```python
from keras_sam.study import sweep, workloads
sweep.run_sweep(workloads.get_preset("synthetic", "quick"), out_dir="results/q")
```

The study needs TensorFlow and the `[study]` extra.
"""

__all__ = ["sweep", "workloads"]
