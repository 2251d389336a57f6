"""The SAM step under PyTorch DistributedDataParallel (Keras 3.16's torch
trainer wraps the model in it as `model.ddp_model` when torch.distributed is
initialized; on Keras 3.15 the test wraps it the same way by hand).

Two CPU processes (gloo), each fitting its half of every global batch, must
end with the same weights as one process fitting the whole batches: g is
all-reduced before eps, and the perturbed gradient after the second pass.
`torch.autograd.grad` never fires DDP's own all-reduce hooks, so without the
step's all-reduce the replicas drift apart."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.distributed.torch_ddp import CASES, GLOBAL_BATCH, fit

pytestmark = pytest.mark.backends("torch")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = """
import sys
import torch.multiprocessing as mp
from tests.distributed.torch_ddp import replica
mp.spawn(replica, args=(int(sys.argv[1]), sys.argv[2]), nprocs=2)
"""


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ddp_replicas_train_like_one_process_on_the_whole_batch(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, KERAS_BACKEND="torch")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(_free_port()), str(tmp_path)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for name, (_, options, like_one) in CASES.items():
        first, second = (ranks[r][name] for r in (0, 1))
        for a, b in zip(first["weights"], second["weights"]):  # in sync
            np.testing.assert_allclose(a, b, atol=1e-6, err_msg=name)
        if not like_one:
            local = options.get("replica_eps") == "per_replica" and GLOBAL_BATCH // 2
            eps = options.get("micro_batch_size") or local or GLOBAL_BATCH
            assert first["eps_batch_size"] == eps, name
            continue
        whole = fit(name, lambda a: a, lambda model: None)
        assert first["eps_batch_size"] == whole["eps_batch_size"] == GLOBAL_BATCH
        for a, b in zip(first["weights"], whole["weights"]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-5, err_msg=name)
