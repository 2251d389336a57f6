"""``keras-sam compare``: the command-line face of `keras_sam.study.compare`."""

from __future__ import annotations

import argparse
import sys
import warnings


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "compare",
        help="your model on your data: base optimizer vs SAM, same budget.",
        description=(
            "Trains the saved model twice from its saved weights, with its "
            "optimizer and with SAM, for the same epochs, and prints test "
            "metrics, sharpness and wall time side by side (compare.json and "
            "compare.png in --out)."
        ),
    )
    parser.add_argument("model", help="a saved Keras model (.keras)")
    parser.add_argument(
        "--data", required=True, help=".npz with x_train, y_train, x_test, y_test"
    )
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--rho",
        type=_rho,
        default=0.05,
        help="SAM's rho, or 'auto': search it (from 0.025, 0.05, 0.1, doubled or "
        "halved past the edge that holds the best; keras_sam.study.search_rho)",
    )
    parser.add_argument(
        "--variant", default=None, help="a keras_sam.variants name (default: SAM)"
    )
    parser.add_argument(
        "--optimizer",
        default=None,
        help="optimizer name (default: the saved model's, else sgd)",
    )
    parser.add_argument("--lr", type=float, default=None, help="with --optimizer")
    parser.add_argument(
        "--loss", default=None, help="loss name, for a model saved uncompiled"
    )
    parser.add_argument("--metrics", default=None, help="comma-separated metric names")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--sharpness-examples",
        type=int,
        default=512,
        help="training examples for lambda_max (0: skip)",
    )
    parser.add_argument("--out", default="compare-results")
    parser.add_argument("--no-plots", action="store_true")


def _rho(text: str) -> float | str:
    if text.strip() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number or 'auto', got {text!r}"
        ) from None


def run(args: argparse.Namespace) -> int:
    import keras

    import keras_sam  # noqa: F401 (registers the SAM classes for loading)
    from keras_sam.study import compare

    try:
        train, test = compare.load_npz(args.data)
        with warnings.catch_warnings():
            # A model saved before training has an unbuilt optimizer.
            warnings.filterwarnings("ignore", message="Skipping variable loading")
            model = keras.models.load_model(args.model)
        optimizer = args.optimizer
        if optimizer is not None:
            optimizer = keras.optimizers.get(optimizer)
            if args.lr is not None:
                optimizer.learning_rate = args.lr
        module, run_arms, rho = compare, compare.compare, {"rho": args.rho}
        if args.rho == "auto":  # the rho search: its arms, table and files
            from keras_sam.study.sweep import model_search as module

            run_arms, rho = module.search_rho, {}
        result = run_arms(
            model,
            train,
            test,
            epochs=args.epochs,
            batch_size=args.batch_size,
            **rho,
            variant=args.variant,
            optimizer=optimizer,
            loss=args.loss,
            metrics=args.metrics.split(",") if args.metrics else None,
            seed=args.seed,
            sharpness_examples=args.sharpness_examples,
        )
    except (ValueError, OSError) as error:
        print(f"keras-sam compare: error: {error}", file=sys.stderr)
        return 2
    print(result.table())
    for path in module.write(result, args.out, plots=not args.no_plots):
        print(f"wrote {path}")
    return 0
