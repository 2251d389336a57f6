"""keras_sam.hessian against PyHessian, curvlinops and hessian-eigenthings,
side by side, interleaved.

    python benchmarks/hessian_vs_peers.py [--rounds 5] [--cases init,trained]
        [--tasks sharpness,trace,density] [--backends tensorflow,jax,torch]
        [--threads 0] [--peers-venv /work/venvs/curvature-peers]

LeNet-300-100 (784-300-100-10), softmax cross-entropy on 1,000 teacher-
labelled examples, at three sets of weights: ``init`` (Glorot, as built),
``trained`` (one epoch on 5,000 examples, 40 SGD steps: the weights of
`hessian_vs_pyhessian.py`) and ``steps200`` (200 SGD steps, batch 128); and
``resnet18w16``: the study's CIFAR ResNet-18 at width 16 (0.70m weights, He
init, batch norm in inference mode) on 256 Gaussian CIFAR-shaped inputs,
against PyHessian on a PyTorch port of it (weights copied by layer name). The
same weights and examples go to every tool. ``keras_sam[tensorflow]
per-product`` is the same Lanczos with one product per call (``op.hvp``: the
forward and backward pass repeated for each product). One long-lived worker process
per tool family (keras_sam on each Keras backend in this project's
environment; the three PyTorch tools in one process of their own venv, made
by `_peers.py`), driven over pipes: each round runs every contender once, in
turn, so the machine's load falls on all alike; the figure is the median
over rounds of the wall time (CPU time of the worker beside it). The first
call of each contender in its process is its cold time.

Tasks (each tool with its defaults, plus a matched-accuracy setting where
the defaults differ in what they compute):

- ``sharpness``: keras_sam ``top_eigenvalues`` (= ``sharpness``; Lanczos,
  error bound <= 1e-3); PyHessian ``eigenvalues()`` (power iteration, tol
  1e-3); curvlinops ``HessianLinearOperator`` + ``scipy.sparse.linalg.eigsh``
  (defaults: ``k=1``, tol 0 = machine precision, operator construction with
  its determinism check; matched: ``tol=1e-3``, no check); hessian-eigenthings
  ``lanczos`` (defaults: ``k=10``, 20 steps; matched: ``k=1`` and as many
  steps as keras_sam took). Relative errors against a Lanczos reference to
  1e-10.
- ``trace``: keras_sam Hutchinson to 1% standard error; PyHessian
  ``trace()`` (its defaults: stops on a 1e-3 change of the running mean);
  curvlinops ``hutchinson_trace`` and hessian-eigenthings ``hutchinson`` at
  keras_sam's number of probes.
- ``density``: 50 Lanczos steps, one probe, for keras_sam
  ``spectral_density``, PyHessian ``density(iter=50, n_v=1)``, curvlinops
  ``lanczos_approximate_spectrum(ncv=50)`` and hessian-eigenthings
  ``spectral_density``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DENSITY_STEPS = 50


# -- the cases --------------------------------------------------------------


def _prepare(directory: str, cases: list[str], examples: int, traces: bool) -> dict:
    """Saves each case's weights and examples; returns the references."""
    import keras
    import numpy as np
    from _models import lenet, teacher_classes

    from keras_sam.hessian import CurvatureOperator, solvers

    x, y = teacher_classes(5000, 0)
    references = {}
    for case in cases:
        keras.utils.set_random_seed(0)
        if case == RESNET:
            model, data = _resnet(), _resnet_data()
            weights = {layer.name: layer.get_weights() for layer in model.layers}
            flat = {
                f"{name}/{i}": w
                for name, ws in weights.items()
                for i, w in enumerate(ws)
            }
            np.savez(
                os.path.join(directory, f"{case}.npz"), x=data[0], y=data[1], **flat
            )
            op = CurvatureOperator(model, data)
            ref = solvers.lanczos(op.matvec, op.dim, max_iter=60, tol=1e-8, seed=123)
            references[case] = {
                "lambda_max": float(ref.eigenvalues[0]),
                "trace": float("nan"),
                "trace_stderr": float("nan"),
                "dim": op.dim,
            }
            continue
        model = lenet()
        if case == "trained":
            model.fit(x, y, batch_size=128, epochs=1, verbose=0)
        elif case == "steps200":
            model.fit(x, y, batch_size=128, epochs=5, verbose=0)  # 5 x 40 steps
        elif case != "init":
            raise ValueError(f"unknown case {case!r}")
        data = (x[:examples], y[:examples])
        weights = {f"w{i}": w for i, w in enumerate(model.get_weights())}
        np.savez(
            os.path.join(directory, f"{case}.npz"), x=data[0], y=data[1], **weights
        )
        op = CurvatureOperator(model, data)
        ref = solvers.lanczos(op.matvec, op.dim, max_iter=300, tol=1e-10, seed=123)
        trace = solvers.hutchinson(op.matvec, op.dim, 400 if traces else 2, seed=7)
        references[case] = {
            "lambda_max": float(ref.eigenvalues[0]),
            "trace": trace.estimate,
            "trace_stderr": trace.stderr,
            "dim": op.dim,
        }
    return references


RESNET = "resnet18w16"


def _resnet():
    """The study's CIFAR ResNet-18 at width 16 (0.70m weights), compiled
    with sparse cross-entropy on logits."""
    import keras

    from keras_sam.study.workloads.resnet import resnet18_cifar

    model = resnet18_cifar(base_filters=16, seed=0)
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _resnet_data(n: int = 256):
    import numpy as np

    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 32, 32, 3)).astype("float32"), rng.integers(0, 10, n)


def _torch_resnet(arrays):
    """The same ResNet-18 in PyTorch, weights copied by layer name; Keras's
    "same" padding of a stride-2 3x3 convolution pads bottom / right only."""
    import torch
    from torch import nn

    def conv(name, stride):
        kernel = torch.from_numpy(arrays[f"{name}/0"]).permute(3, 2, 0, 1)
        layer = nn.Conv2d(
            kernel.shape[1], kernel.shape[0], kernel.shape[2], stride, 0, bias=False
        )
        layer.weight.data.copy_(kernel)
        k = kernel.shape[2]
        if k == 1:
            pad = (0, 0, 0, 0)
        elif stride == 1:
            pad = (1, 1, 1, 1)
        else:
            pad = (0, 1, 0, 1)
        return nn.Sequential(nn.ZeroPad2d(pad), layer)

    def bn(name):
        gamma, beta, mean, var = (
            torch.from_numpy(arrays[f"{name}/{i}"]) for i in range(4)
        )
        layer = nn.BatchNorm2d(gamma.shape[0], eps=1e-5)
        for target, value in zip(
            (layer.weight, layer.bias, layer.running_mean, layer.running_var),
            (gamma, beta, mean, var),
        ):
            target.data.copy_(value)
        return layer

    class Block(nn.Module):
        def __init__(self, name, stride, project):
            super().__init__()
            self.body = nn.Sequential(
                conv(f"{name}_conv1", stride),
                bn(f"{name}_bn1"),
                nn.ReLU(),
                conv(f"{name}_conv2", 1),
                bn(f"{name}_bn2"),
            )
            self.shortcut = (
                nn.Sequential(conv(f"{name}_proj", stride), bn(f"{name}_proj_bn"))
                if project
                else nn.Identity()
            )

        def forward(self, x):
            return torch.relu(self.body(x) + self.shortcut(x))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            layers = [conv("stem_conv", 1), bn("stem_bn"), nn.ReLU()]
            for stage in range(4):
                for b in range(2):
                    stride = 2 if stage > 0 and b == 0 else 1
                    name = f"s{stage}b{b}"
                    layers.append(Block(name, stride, f"{name}_proj/0" in arrays))
            self.features = nn.Sequential(*layers)
            dense = [k for k in arrays if k.endswith("/0") and arrays[k].ndim == 2][0]
            kernel = torch.from_numpy(arrays[dense])
            self.head = nn.Linear(kernel.shape[0], kernel.shape[1])
            self.head.weight.data.copy_(kernel.T)
            self.head.bias.data.copy_(torch.from_numpy(arrays[dense[:-1] + "1"]))

        def forward(self, x):
            x = self.features(x.permute(0, 3, 1, 2))
            return self.head(x.mean(dim=(2, 3)))

    return Net().eval()


# -- the keras_sam worker -----------------------------------------------------


def keras_worker(directory: str) -> None:
    import keras
    import numpy as np
    from _models import lenet

    import keras_sam.hessian as hessian

    models = {}

    def case(name):
        if name not in models:
            arrays = np.load(os.path.join(directory, f"{name}.npz"))
            if name == RESNET:
                model = _resnet()
                for layer in model.layers:
                    if layer.weights:
                        layer.set_weights(
                            [
                                arrays[f"{layer.name}/{i}"]
                                for i in range(len(layer.weights))
                            ]
                        )
            else:
                model = lenet()
                model.set_weights([arrays[f"w{i}"] for i in range(len(model.weights))])
            models[name] = (model, (arrays["x"], arrays["y"]))
        return models[name]

    def task(request):
        model, data = case(request["case"])
        if request.get("setting") == "per-product":
            # The products one call each (the path before they shared the
            # forward and backward pass).
            op = hessian.CurvatureOperator(model, data)
            if request["task"] == "sharpness":
                r = hessian.solvers.lanczos(op.hvp, op.dim)
                return float(r.eigenvalues[0]), r.iterations, None
            r = hessian.solvers.hutchinson(op.hvp, op.dim, 1000, rtol=request["rtol"])
            return r.estimate, r.matvecs, r.stderr
        if request["task"] == "sharpness":
            r = hessian.top_eigenvalues(model, data)
            return float(r.eigenvalues[0]), r.iterations, None
        if request["task"] == "trace":
            r = hessian.trace_estimate(model, data, rtol=request["rtol"])
            return r.estimate, r.matvecs, r.stderr
        r = hessian.spectral_density(model, data, num_steps=DENSITY_STEPS)
        nodes = r.nodes[np.isfinite(r.nodes)]
        return float(nodes.max()), DENSITY_STEPS, float(nodes.min())

    _serve(task, {"backend": keras.backend.backend()})


# -- the PyTorch tools' worker ------------------------------------------------


def peers_worker(directory: str) -> None:
    import numpy as np
    import scipy
    import torch

    models = {}

    def case(name):
        if name not in models:
            arrays = np.load(os.path.join(directory, f"{name}.npz"))
            if name == RESNET:
                model = _torch_resnet(dict(arrays))
                x = torch.from_numpy(arrays["x"])
                y = torch.from_numpy(arrays["y"]).long()
                models[name] = (model, x, y)
                return models[name]
            model = torch.nn.Sequential(
                torch.nn.Linear(784, 300),
                torch.nn.ReLU(),
                torch.nn.Linear(300, 100),
                torch.nn.ReLU(),
                torch.nn.Linear(100, 10),
            )
            with torch.no_grad():
                for i, layer in enumerate(model[::2]):
                    layer.weight.copy_(torch.from_numpy(arrays[f"w{2 * i}"].T))
                    layer.bias.copy_(torch.from_numpy(arrays[f"w{2 * i + 1}"]))
            model.eval()
            x = torch.from_numpy(arrays["x"])
            y = torch.from_numpy(arrays["y"]).long()
            models[name] = (model, x, y)
        return models[name]

    criterion = torch.nn.CrossEntropyLoss()

    def task(request):
        model, x, y = case(request["case"])
        tool, what = request["tool"], request["task"]
        setting = request.get("setting", "defaults")
        torch.manual_seed(0)
        if tool == "pyhessian":
            from pyhessian import hessian

            h = hessian(model, criterion, data=(x, y), cuda=False)
            if what == "sharpness":
                value, count = _count(h, "pyhessian", lambda: h.eigenvalues()[0][0])
                return value, count, None
            if what == "trace":
                values = []
                _, count = _count(h, "pyhessian", lambda: values.extend(h.trace()))
                v = np.asarray(values)
                return float(v.mean()), count, float(v.std(ddof=1) / len(v) ** 0.5)
            eigen, _ = h.density(iter=DENSITY_STEPS, n_v=1)
            return float(max(eigen[0])), DENSITY_STEPS, float(min(eigen[0]))
        params = [p for p in model.parameters() if p.requires_grad]
        if tool == "curvlinops":
            from curvlinops import HessianLinearOperator

            check = setting == "defaults"
            op = HessianLinearOperator(
                model, criterion, params, [(x, y)], check_deterministic=check
            )
            counter = _Counted(op, "_matmat")
            if what == "sharpness":
                tol = 0 if setting == "defaults" else 1e-3
                value = scipy.sparse.linalg.eigsh(
                    op.to_scipy(), k=1, which="LA", tol=tol, return_eigenvectors=False
                )[0]
                return float(value), counter.count, None
            if what == "trace":
                from curvlinops.trace.hutchinson import hutchinson_trace

                samples = [
                    float(hutchinson_trace(op, 1)) for _ in range(request["probes"])
                ]
                v = np.asarray(samples)
                return (
                    float(v.mean()),
                    counter.count,
                    float(v.std(ddof=1) / len(v) ** 0.5),
                )
            from curvlinops.papyan2020traces.spectrum import (
                lanczos_approximate_spectrum,
            )

            grid, _ = lanczos_approximate_spectrum(op, ncv=DENSITY_STEPS)
            return float(grid.max()), counter.count, float(grid.min())
        import hessian_eigenthings as he

        op = he.HessianOperator(model, [(x, y)], he.supervised_loss(criterion))
        counter = _Counted(op, "matvec")
        if what == "sharpness":
            if setting == "defaults":
                r = he.lanczos(op, seed=0)
            else:
                r = he.lanczos(op, k=1, max_iter=request["steps"], which="LA", seed=0)
            return float(r.eigenvalues.max()), counter.count, None
        if what == "trace":
            r = he.hutchinson(op, num_samples=request["probes"], seed=0)
            return r.estimate, counter.count, r.stderr
        r = he.spectral_density(
            op, num_runs=1, lanczos_steps=DENSITY_STEPS, num_grid_points=100, seed=0
        )
        nodes = r.raw_eigenvalues.numpy()
        return float(nodes.max()), counter.count, float(nodes.min())

    _serve(task, {"torch": torch.__version__, "threads": torch.get_num_threads()})


def _count(h, name, call):
    """(value, products) of a PyHessian call: products counted by wrapping
    its ``hessian_vector_product``."""
    module = sys.modules["pyhessian.hessian"]  # the class shadows the module
    original = module.hessian_vector_product
    count = [0]

    def counted(*args, **kwargs):
        count[0] += 1
        return original(*args, **kwargs)

    module.hessian_vector_product = counted
    try:
        value = call()
    finally:
        module.hessian_vector_product = original
    return value, count[0]


class _Counted:
    """Counts the products of a peer's operator: wraps an instance's method
    (``_matmat`` of curvlinops, counting columns; ``matvec`` of
    hessian-eigenthings)."""

    def __init__(self, op, method: str):
        self.count = 0
        original = getattr(op, method)

        def counted(x):
            if method == "_matmat":
                self.count += x[0].shape[-1]
            else:
                self.count += 1
            return original(x)

        setattr(op, method, counted)


def _serve(task, about: dict) -> None:
    """Answers one JSON request a line: time, CPU time, value, products."""
    print(json.dumps(about), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            value, products, extra = task(request)
            error = None
        except Exception as exc:  # reported, not fatal: the others go on
            value = products = extra = None
            error = f"{type(exc).__name__}: {str(exc)[:300]}"
        print(
            json.dumps(
                {
                    "wall": time.perf_counter() - wall,
                    "cpu": time.process_time() - cpu,
                    "value": value,
                    "products": products,
                    "extra": extra,
                    "error": error,
                }
            ),
            flush=True,
        )


# -- the driver ---------------------------------------------------------------


class Worker:
    def __init__(self, command: list[str], env: dict):
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=HERE,
        )
        self.about = self._read()

    def _read(self) -> dict:
        while True:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"worker {self.process.args} died")
            if line.startswith("{"):
                return json.loads(line)

    def ask(self, **request) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def _env(backend: str | None, threads: int) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(HERE), HERE])
    if backend:
        env["KERAS_BACKEND"] = backend
    if threads:
        env.update(
            OMP_NUM_THREADS=str(threads),
            TF_NUM_INTRAOP_THREADS=str(threads),
            TF_NUM_INTEROP_THREADS=str(threads),
        )
    return env


def contenders(tasks, backends, resnet=False) -> list[tuple[str, str, dict]]:
    """(name, worker, request) for every contender of every task."""
    out = []
    for task in tasks:
        for backend in backends:
            out.append((f"keras_sam[{backend}]", backend, {"task": task}))
        if "tensorflow" in backends and task != "density":
            request = {"task": task, "setting": "per-product"}
            out.append(("keras_sam[tensorflow] per-product", "tensorflow", request))
        out.append(("pyhessian", "peers", {"task": task, "tool": "pyhessian"}))
        if resnet:
            continue
        for tool in ("curvlinops", "eigenthings"):
            settings = ("defaults", "matched") if task == "sharpness" else ("matched",)
            for setting in settings:
                out.append(
                    (
                        f"{tool} ({setting})",
                        "peers",
                        {"task": task, "tool": tool, "setting": setting},
                    )
                )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cases", default="init,trained,steps200")
    parser.add_argument("--tasks", default="sharpness,trace,density")
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument(
        "--trace-rtol", type=float, default=0.01, help="Hutchinson's target s.e."
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="threads per worker (0: defaults)"
    )
    parser.add_argument("--peers-venv", default=None)
    parser.add_argument("--keras-worker", metavar="DIR", help=argparse.SUPPRESS)
    parser.add_argument("--peers-worker", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.keras_worker:
        return keras_worker(args.keras_worker)
    if args.peers_worker:
        return peers_worker(args.peers_worker)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    # This checkout's keras_sam (not an installed one), as in the workers.
    sys.path[:0] = [os.path.dirname(HERE), HERE]
    import _peers

    peers_python = _peers.ensure(args.peers_venv or _peers.DEFAULT_VENV)
    cases = args.cases.split(",")
    tasks = args.tasks.split(",")
    backends = [b for b in args.backends.split(",") if b]
    me = os.path.abspath(__file__)
    with tempfile.TemporaryDirectory() as directory:
        references = _prepare(directory, cases, args.examples, "trace" in tasks)
        workers = {
            b: Worker(
                [sys.executable, me, "--keras-worker", directory], _env(b, args.threads)
            )
            for b in backends
        }
        workers["peers"] = Worker(
            [peers_python, me, "--peers-worker", directory], _env(None, args.threads)
        )
        loads = [os.getloadavg()]
        results = {}
        for case in cases:
            ref = references[case]
            for task in tasks:
                entries = contenders([task], backends, case == RESNET)
                samples = {name: [] for name, _, _ in entries}
                keras_counts = {}
                for _ in range(args.rounds + 1):  # the first round: cold calls
                    for name, worker, request in entries:
                        request = dict(request, case=case)
                        request["steps"] = keras_counts.get("sharpness", 20)
                        request["probes"] = keras_counts.get("trace", 30)
                        request["rtol"] = args.trace_rtol
                        answer = workers[worker].ask(**request)
                        samples[name].append(answer)
                        if name.startswith("keras_sam[") and answer["products"]:
                            keras_counts.setdefault(task, answer["products"])
                results[case, task] = samples
                loads.append(os.getloadavg())
                _report(case, task, samples, ref)
        for worker in workers.values():
            worker.close()
    about = {k: w.about for k, w in workers.items()}
    print(f"\nworkers: {json.dumps(about)}")
    print(
        f"{platform.machine()}, {os.cpu_count()} CPUs, threads per worker "
        f"{args.threads or 'default'}, {args.rounds} warm rounds"
    )
    print(
        "load average (1 min) before/after each table: "
        + ", ".join(f"{a[0]:.1f}" for a in loads)
    )


def _report(case: str, task: str, samples: dict, ref: dict) -> None:
    print(
        f"\n== {case} / {task}: lambda_max {ref['lambda_max']:.6g}, trace "
        f"{ref['trace']:.5g} +- {ref['trace_stderr']:.2g} (400 probes), "
        f"{ref['dim']} weights; load {os.getloadavg()[0]:.1f}"
    )
    base = None
    rows = []
    for name, answers in samples.items():
        cold, warm = answers[0], answers[1:]
        errors = [a["error"] for a in answers if a["error"]]
        if errors:
            rows.append(f"| {name} | failed: {errors[0]} |")
            continue
        wall = statistics.median(a["wall"] for a in warm)
        cpu = statistics.median(a["cpu"] for a in warm)
        if base is None:
            base = wall
        value = warm[-1]["value"]
        if task == "sharpness":
            quality = (
                f"rel. error {abs(value - ref['lambda_max']) / ref['lambda_max']:.1e}"
            )
        elif task == "trace":
            quality = f"{value:.5g} +- {warm[-1]['extra']:.2g}"
        else:
            quality = f"nodes [{warm[-1]['extra']:.3g}, {value:.4g}]"
        products = warm[-1]["products"]
        rows.append(
            f"| {name} | {cold['wall']:.3f} | {wall:.3f} "
            f"({min(a['wall'] for a in warm):.3f}-{max(a['wall'] for a in warm):.3f}) "
            f"| {cpu:.3f} | {products} | {1e3 * wall / max(products, 1):.1f} "
            f"| {quality} |"
        )
    print(
        "| tool | cold (s) | warm median (min-max) (s) | warm CPU (s) | products "
        "| ms / product | answer |"
    )
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
