"""The study harness: the paper's workloads, the overparameterization sweep and the
`keras-sam` command line, built on the library (`keras_sam`) and never imported by
it.

```python
from keras_sam.study import sweep, workloads
sweep.run_sweep(workloads.get_preset("synthetic", "quick"), out_dir="results/q")

from keras_sam.study import search_rho  # rho for your own model
result = search_rho(model, (x, y), (x_test, y_test), epochs=10)
print(result.table())
```

The study needs TensorFlow and the `[study]` extra.
"""

__all__ = ["search_rho"]


def __getattr__(name: str):
    # Lazy: `import keras_sam.study` (the CLI's --help) stays free of Keras.
    if name == "search_rho":
        from keras_sam.study.sweep.model_search import search_rho

        return search_rho
    raise AttributeError(f"module 'keras_sam.study' has no attribute {name!r}")
