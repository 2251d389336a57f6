"""A quiet start for the ``keras-sam`` command.

TensorFlow's C++ code writes its start-up lines (the absl preamble, oneDNN
and CPU-feature notices, and on a machine without a GPU "failed call to
cuInit") straight to file descriptor 2 before absl logging is set up, so
``TF_CPP_MIN_LOG_LEVEL`` cannot silence them, and Python's `sys.stderr`
never sees them. The command runs its first imports with descriptor 2
redirected to a file and writes back every line that is not such a notice:
real errors and warnings still show. Library users (``import keras_sam``
anywhere else) are left alone.

This module imports nothing heavy: it runs before Keras is imported.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

_NOTICES = [
    r"WARNING: All log messages before absl::InitializeLog\(\) is called",
    r"[IW]\d{4} .*\] oneDNN custom operations are on",
    r"[IW]\d{4} .*\] Could not find cuda drivers on your machine",
    r"[IW]\d{4} .*\] This TensorFlow binary is optimized to use available CPU",
    r"To enable the following instructions: .*rebuild TensorFlow",
    r"[IWE]\d{4} .*\] Unable to register cu(DNN|FFT|BLAS) factory",
    r"[IWE]\d{4} .*\] .*already been registered",
    r"[IW]\d{4} .*\] TF-TRT Warning: Could not find TensorRT",
]
# The driver probe fails on every machine without a GPU; it is an error only
# where TensorFlow found CUDA drivers.
_NO_DRIVERS = re.compile(r"Could not find cuda drivers on your machine")
_CUINIT = re.compile(r"E\d{4} .*\] failed call to cuInit")
_NOTICE = re.compile("|".join(f"(?:{p})" for p in _NOTICES))


def is_command_line() -> bool:
    """True in the ``keras-sam`` command or ``python -m keras_sam``."""
    name = os.path.basename(sys.argv[0]) if sys.argv else ""
    if name in ("keras-sam", "keras-sam.exe", "keras-sam-script.py"):
        return True
    argv = getattr(sys, "orig_argv", [])
    return any(a == "-m" and b == "keras_sam" for a, b in zip(argv, argv[1:]))


def without_notices(text: str) -> str:
    """`text` without TensorFlow's start-up notices (see the module doc)."""
    no_drivers = bool(_NO_DRIVERS.search(text))
    kept = [
        line
        for line in text.splitlines(keepends=True)
        if not _NOTICE.match(line) and not (no_drivers and _CUINIT.match(line))
    ]
    return "".join(kept)


@contextlib.contextmanager
def filtered_native_stderr():
    """Sends file descriptor 2 to a temporary file inside the block, then
    writes back to stderr what `without_notices` keeps (also when the block
    raises)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = without_notices(capture.read().decode(errors="replace"))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


def command_line_start():
    """For the package's first imports: in the command, hides TensorFlow's
    start-up notices (INFO logs off, the rest still shown); elsewhere a
    no-op."""
    if not is_command_line():
        return contextlib.nullcontext()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    return _start_with_devices()


@contextlib.contextmanager
def _start_with_devices():
    with filtered_native_stderr():
        yield
        # TensorFlow probes for GPUs (cuInit) on first use: do it here.
        tensorflow = sys.modules.get("tensorflow")
        if tensorflow is not None:
            tensorflow.config.list_physical_devices("GPU")
