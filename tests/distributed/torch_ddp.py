"""The two gloo replicas of tests/test_torch_ddp.py: each fits every case on
its share of the global batches (`torch.multiprocessing.spawn` imports
`replica` from here by name)."""

import json
import os

import numpy as np

GLOBAL_BATCH = 16
#: name: (model builder in tests/models.py's ZOO or "mlp", SAM options,
#: the replicas equal one process on the whole batch)
CASES = {
    "mlp": ("mlp", {}, True),
    "mlp_gsam": ("mlp", {"variant": "gsam"}, True),
    "mlp_looksam": ("mlp", {"variant": "looksam"}, True),  # skips second passes
    "mlp_msam": ("mlp", {"variant": "msam"}, True),  # one pass, eps from momentum
    "attention": ("attention", {}, True),
    "recurrent": ("recurrent", {}, True),
    "add_loss": ("add_loss", {}, True),
    # Each replica's own batch statistics, eps from its own examples.
    "conv_bn_multi_io": ("conv_multi_io", {}, False),
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
    from tests.models import ZOO, cast_float32, mlp

    builder, options, _ = CASES[name]
    if builder == "mlp":
        rng = np.random.default_rng(3)
        data = rng.normal(size=(48, 5)), rng.normal(size=(48, 1))
        model, loss = mlp(rho=0.1, **options), "mse"
    else:
        keras.utils.set_random_seed(0)
        plain, data, loss = ZOO[builder]()
        data = cast_float32(data)
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
