"""``keras-sam compare``: the command-line face of `keras_sam.study.compare`
(`keras_sam.study.cli` parses its options)."""

from __future__ import annotations

import argparse
import sys
import warnings


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
        loss = compare.loss_from_spec(args.loss, args.from_logits)
        optimizer = _optimizer(keras, compare, args, model)
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
            loss=loss,
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
    if result.diverged:
        print(
            f"keras-sam compare: {', '.join(result.diverged)} diverged (see the "
            "table); exit status 1.",
            file=sys.stderr,
        )
        return 1
    return 0


def _optimizer(keras, compare, args, model):
    """``--optimizer`` (default: the saved one, else the default SGD) with
    ``--lr`` applied; None when neither is given."""
    if args.optimizer is None and args.lr is None:
        return None
    if args.optimizer is not None:
        optimizer = keras.optimizers.get(args.optimizer)
    elif model.compiled:
        optimizer = model.optimizer
    else:
        optimizer = compare.default_optimizer()
    optimizer = type(optimizer).from_config(optimizer.get_config())
    if args.lr is not None:
        optimizer.learning_rate = args.lr
    return optimizer
