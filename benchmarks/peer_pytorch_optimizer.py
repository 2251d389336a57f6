"""keras-sam's variants against pytorch-optimizer 4.1.0's, update for update.

    python benchmarks/peer_pytorch_optimizer.py [--steps 5] [--venv DIR]

For each variant both libraries have (SAM, GSAM, WSAM, LookSAM, FriendlySAM;
pytorch-optimizer's BSAM has no keras-sam counterpart), the same 8-16-1 tanh
MLP (same initial weights), the same full batch of 64 examples, squared loss,
the same hyperparameters and the same base optimizer (SGD, lr 0.1, with and
without momentum 0.9) run `--steps` steps in each library; printed: the
largest |w_keras - w_torch| over all weights. "ref" columns: the same for a
NumPy re-derivation of the paper's rule (`tests/variants/reference.py` for
plain SGD, written from the papers), so that where the libraries differ the
table shows which one follows the paper. docs/variants.md explains each
difference.

pytorch-optimizer and PyTorch live in their own virtual environment, never in
this project's: the script makes it on first use (``python3 -m venv``, then
``pip install torch==2.13.0 pytorch-optimizer==4.1.0 numpy``; the torch pin
is the project's) and runs itself there as a subprocess with
``--torch-worker``. The Keras side runs here, on ``KERAS_BACKEND``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LR, MOMENTUM, RHO = 0.1, 0.9, 0.1
GSAM_ALPHA, WSAM_GAMMA, LOOK_EVERY, LOOK_ALPHA = 0.4, 0.9, 2, 0.7
FSAM_SIGMA, FSAM_LMBDA = 1.0, 0.6
VARIANTS = ("sam", "gsam", "wsam", "looksam", "fsam")
PEER_PACKAGES = ["torch==2.13.0", "pytorch-optimizer==4.1.0", "numpy"]


def make_venv(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *PEER_PACKAGES], check=True
        )
    return python


def problem():
    import numpy as np

    rng = np.random.default_rng(0)
    arrays = {
        "x": rng.normal(size=(64, 8)).astype("float32"),
        "y": rng.normal(size=(64, 1)).astype("float32"),
        "kernel0": (0.5 * rng.normal(size=(8, 16))).astype("float32"),
        "bias0": (0.1 * rng.normal(size=(16,))).astype("float32"),
        "kernel1": (0.5 * rng.normal(size=(16, 1))).astype("float32"),
        "bias1": (0.1 * rng.normal(size=(1,))).astype("float32"),
    }
    return arrays


# ---- the PyTorch side (runs in the peer environment) ----------------------


def torch_worker(path: str, steps: int) -> None:
    import numpy as np
    import pytorch_optimizer as po
    import torch

    torch.set_default_dtype(torch.float32)
    arrays = np.load(path)
    x, y = torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["y"])
    loss_fn = torch.nn.MSELoss()

    def model_from_arrays():
        model = torch.nn.Sequential(
            torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)
        )
        with torch.no_grad():
            for i, layer in enumerate(model[::2]):
                layer.weight.copy_(torch.from_numpy(arrays[f"kernel{i}"].T))
                layer.bias.copy_(torch.from_numpy(arrays[f"bias{i}"]))
        return model

    class ConstantRho:
        def step(self):
            return RHO

    def run(name, momentum, **extra):
        model = model_from_arrays()
        sgd = {"lr": LR, "momentum": momentum}
        params = model.parameters()
        if name == "gsam":
            base = torch.optim.SGD(model.parameters(), **sgd)
            opt = po.GSAM(
                model.parameters(), base, model, ConstantRho(), alpha=GSAM_ALPHA
            )
        elif name == "wsam":
            opt = po.WSAM(
                model,
                params,
                torch.optim.SGD,
                rho=RHO,
                gamma=WSAM_GAMMA,
                **extra,
                **sgd,
            )
        elif name == "looksam":
            opt = po.LookSAM(
                params, torch.optim.SGD, rho=RHO, k=LOOK_EVERY, alpha=LOOK_ALPHA, **sgd
            )
        elif name == "fsam":
            opt = po.FriendlySAM(
                params,
                torch.optim.SGD,
                rho=RHO,
                sigma=FSAM_SIGMA,
                lmbda=FSAM_LMBDA,
                **sgd,
            )
        else:
            opt = po.SAM(params, torch.optim.SGD, rho=RHO, **sgd)

        def closure():
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            return loss

        for _ in range(steps):
            if name == "gsam":
                opt.set_closure(loss_fn, x, y)
                opt.step()
            elif name == "wsam":
                opt.step(closure)
            else:
                closure()  # these take the clean gradient before `step`
                opt.step(closure)
        return [
            t.detach().numpy().T.tolist()
            if t.ndim == 2
            else t.detach().numpy().tolist()
            for layer in model[::2]
            for t in (layer.weight, layer.bias)
        ]

    out = {}
    for momentum in (0.0, MOMENTUM):
        for name in VARIANTS:
            out[f"{name}/{momentum}"] = run(name, momentum)
        out[f"wsam-coupled/{momentum}"] = run("wsam", momentum, decouple=False)
    version = importlib.metadata.version("pytorch-optimizer")
    print(json.dumps({"torch": torch.__version__, "po": version, "w": out}))


# ---- the Keras side ---------------------------------------------------------


def keras_weights(arrays, name, momentum, steps):
    import keras

    import keras_sam
    from keras_sam import variants

    chosen = {
        "sam": None,
        "gsam": variants.GSAM(alpha=GSAM_ALPHA),
        "wsam": variants.WSAM(gamma=WSAM_GAMMA),  # decoupled, as the paper
        "wsam-coupled": variants.WSAM(gamma=WSAM_GAMMA, decoupled=False),
        "looksam": variants.LookSAM(every=LOOK_EVERY, alpha=LOOK_ALPHA),
        "fsam": variants.FriendlySAM(sigma=FSAM_SIGMA, lmbda=FSAM_LMBDA),
    }[name]
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(16, activation="tanh")(inputs)
    model = keras_sam.SAMModel(
        inputs, keras.layers.Dense(1)(hidden), rho=RHO, variant=chosen
    )
    names = ("kernel0", "bias0", "kernel1", "bias1")
    for variable, key in zip(model.trainable_variables, names, strict=True):
        variable.assign(arrays[key])
    model.compile(keras.optimizers.SGD(LR, momentum=momentum), loss="mse")
    x, y = arrays["x"], arrays["y"]
    model.fit(x, y, batch_size=len(x), epochs=steps, shuffle=False, verbose=0)
    return [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]


def reference_weights(arrays, name, steps):
    """The NumPy re-derivation from the papers (plain SGD only)."""
    from tests.variants import reference

    params = [arrays[k] for k in ("kernel0", "bias0", "kernel1", "bias1")]
    options = {
        "sam": {},
        "gsam": {"alpha": GSAM_ALPHA},
        "wsam": {"gamma": WSAM_GAMMA},
        "looksam": {"every": LOOK_EVERY, "alpha": LOOK_ALPHA},
        "fsam": {"sigma": FSAM_SIGMA, "lmbda": FSAM_LMBDA},
    }[name]
    weights, _ = reference.train(
        name, params, arrays["x"], arrays["y"], RHO, LR, steps, **options
    )
    return weights


def max_difference(a, b):
    import numpy as np

    return max(
        float(np.max(np.abs(np.asarray(p) - np.asarray(q)))) for p, q in zip(a, b)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--venv", default="/work/venvs/sam-peers")
    parser.add_argument("--torch-worker", metavar="NPZ", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_worker:
        torch_worker(args.torch_worker, args.steps)
        return

    import numpy as np

    sys.path.insert(0, str(ROOT))  # this checkout's keras_sam and tests
    python = make_venv(Path(args.venv))
    arrays = problem()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "problem.npz")
        np.savez(path, **arrays)
        result = subprocess.run(
            [str(python), __file__, "--torch-worker", path, "--steps", str(args.steps)],
            check=True,
            capture_output=True,
            text=True,
        )
    peer = json.loads(result.stdout.strip().splitlines()[-1])
    import keras

    print(
        f"# {args.steps} full-batch steps, 8-16-1 tanh MLP, SGD lr {LR}, rho {RHO}; "
        f"Keras {keras.__version__} on {keras.backend.backend()}, PyTorch "
        f"{peer['torch']}, pytorch-optimizer {peer['po']}"
    )
    print(
        f"{'variant':<14} {'momentum':>8} {'|keras-torch|':>14} "
        f"{'|keras-ref|':>12} {'|torch-ref|':>12}"
    )
    for momentum in (0.0, MOMENTUM):
        for name in (*VARIANTS, "wsam-coupled"):
            torch_w = peer["w"][f"{name}/{momentum}"]
            base = "wsam" if name == "wsam-coupled" else name
            ours = keras_weights(arrays, name, momentum, args.steps)
            row = f"{name:<14} {momentum:>8} {max_difference(ours, torch_w):14.2e}"
            if momentum == 0.0:
                ref = reference_weights(arrays, base, args.steps)
                row += (
                    f" {max_difference(ours, ref):12.2e}"
                    f" {max_difference(torch_w, ref):12.2e}"
                )
            print(row)


if __name__ == "__main__":
    main()
