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

pytestmark = pytest.mark.backends("torch")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = """
import sys
import torch.multiprocessing as mp
from tests.test_torch_ddp import replica
mp.spawn(replica, args=(int(sys.argv[1]), sys.argv[2]), nprocs=2)
"""

GLOBAL_BATCH = 16
#: name: (model builder in tests/test_backends.py's zoo or "mlp", SAM options,
#: the replicas equal one process on the whole batch)
CASES = {
    "mlp": ("mlp", {}, True),
    "mlp_gsam": ("mlp", {"variant": "gsam"}, True),
    "mlp_looksam": ("mlp", {"variant": "looksam"}, True),  # skips second passes
    "mlp_msam": ("mlp", {"variant": "msam"}, True),  # one pass, eps from momentum
    "attention": ("_attention", {}, True),
    "recurrent": ("_recurrent", {}, True),
    "add_loss": ("_add_loss", {}, True),
    # Each replica's own batch statistics, eps from its own examples.
    "conv_bn_multi_io": ("_conv_multi_io", {}, False),
    "mlp_per_replica": ("mlp", {"replica_eps": "per_replica"}, False),
    "mlp_micro_batches": ("mlp", {"micro_batch_size": 4}, False),
}


def replica_share(a, rank, replicas):
    """Replica `rank`'s part of every global batch of `a`."""
    local = GLOBAL_BATCH // replicas
    starts = range(rank * local, len(a), GLOBAL_BATCH)
    return np.concatenate([a[s : s + local] for s in starts])


def fit(name, share, wrap):
    """Trains case `name` on `share(array)` of its data; returns the final
    weights and `eps_batch_size`."""
    import keras

    import keras_sam
    from tests import test_backends
    from tests.test_sam_model import mlp

    builder, options, _ = CASES[name]
    if builder == "mlp":
        rng = np.random.default_rng(3)
        data = rng.normal(size=(48, 5)), rng.normal(size=(48, 1))
        model, loss = mlp(rho=0.1, **options), "mse"
    else:
        keras.utils.set_random_seed(0)
        plain, data, loss = getattr(test_backends, builder)()
        data = test_backends._cast(data)
        model = keras_sam.sam(plain, rho=0.1, **options)
    x, y = keras.tree.map_structure(share, data)
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), loss=loss)
    wrap(model)
    batch = (
        len(keras.tree.flatten(x)[0])
        * GLOBAL_BATCH
        // len(keras.tree.flatten(data[0])[0])
    )
    model.fit(x, y, batch_size=batch, epochs=2, shuffle=False, verbose=0)
    weights = [v.numpy().astype(float).tolist() for v in model.trainable_variables]
    return {"weights": weights, "eps_batch_size": model.eps_batch_size}


def replica(rank, port, out):
    """One of two gloo processes: fits every case on its share."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    def wrap(model):
        if not hasattr(type(model), "_initialize_ddp"):
            # Keras 3.15: wrap the model as Keras 3.16's trainer does.
            wrapper = DistributedDataParallel(model)
            object.__setattr__(model, "ddp_model", wrapper)

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    results = {name: fit(name, lambda a: replica_share(a, rank, 2), wrap)
               for name in CASES}  # fmt: skip
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(results, f)
    dist.destroy_process_group()


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
