"""Old import paths of the study harness, kept for one release (0.1 -> 0.2).

`keras_sam.workloads`, `keras_sam.sweep` and `keras_sam.cli` moved under
`keras_sam.study`. Each old package is a thin alias: importing it warns once and
registers the new modules under the old names, so `from keras_sam.workloads.presets
import Preset` keeps working.
"""

import importlib
import sys
import warnings


def alias(old: str, new: str, submodules: tuple[str, ...] = ()):
    """Makes `old` (and `old.<sub>`) the modules `new` (and `new.<sub>`)."""
    warnings.warn(
        f"{old} moved to {new}; the old path will be removed in keras-sam 0.2.",
        DeprecationWarning,
        stacklevel=3,
    )
    module = importlib.import_module(new)
    for name in submodules:
        sys.modules[f"{old}.{name}"] = importlib.import_module(f"{new}.{name}")
    sys.modules[old] = module
    return module
