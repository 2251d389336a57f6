"""The synthetic investigation (docs/reproduction.md): the paper preset at the
paper's data size, widths 100 / 500 / 1000, SGD and SAM rho 0.2 / 0.5 / 1, one
seed, under each candidate student / training configuration.

    PYTHONPATH=. python docs/sweep-synthetic-init/run.py NAME [NAME ...]
"""

import os
import sys

from keras_sam.study.sweep import run_sweep
from keras_sam.study.workloads import get_preset

HERE = os.path.dirname(os.path.abspath(__file__))
BASE = get_preset("synthetic", "paper").replace(
    sizes=(100, 500, 1000), rhos=(0.2, 0.5, 1.0), seeds=(0,), keras_verbose=0
)
CANDIDATES = {
    # He-normal student, inputs x 0.1 (the preset before this study)
    "he-scaled": dict(model_options={}),
    "torch-scaled": dict(model_options={"init": "torch"}),
    "torch-raw": dict(model_options={"init": "torch", "input_scale": 1.0}),
    "he-raw": dict(model_options={"input_scale": 1.0}),
    "torch-raw-b32": dict(
        model_options={"init": "torch", "input_scale": 1.0}, batch_size=32
    ),
    "torch-raw-constant": dict(
        model_options={"init": "torch", "input_scale": 1.0}, schedule="constant"
    ),
    "torch-raw-lr0.01": dict(
        model_options={"init": "torch", "input_scale": 1.0},
        lr=0.01,
        eval_every_epoch=True,
    ),
    # As many steps as the quick preset (16 a epoch): SGD and rho 0.2 only.
    "torch-scaled-b1024": dict(
        model_options={"init": "torch"}, batch_size=1024, rhos=(0.2,)
    ),
    # The same trainings, with the test loss after every epoch (its minimum:
    # what the authors' code reports for accuracy, the best epoch).
    "he-scaled-eval": dict(model_options={}, eval_every_epoch=True),
    "torch-scaled-eval": dict(model_options={"init": "torch"}, eval_every_epoch=True),
}

if __name__ == "__main__":
    for name in sys.argv[1:]:
        preset = BASE.replace(name=f"investigation-{name}", **CANDIDATES[name])
        # The preset before this study was measured in docs/sweep-paper-subset.
        folder = "../sweep-paper-subset" if name == "he-scaled" else name
        run_sweep(preset, os.path.join(HERE, folder), make_plots=False)
