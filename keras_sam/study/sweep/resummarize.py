"""Rewrite ``summary.md`` (and the plots) of a results folder from its
records alone, without the command line that made it: the workload, preset,
sizes and seeds come from the records, the training settings from
``configs.json`` (checked against the recorded config id).

```shell
python -m keras_sam.study.sweep.resummarize docs/sweep-mnist1d
python -m keras_sam.study.sweep.resummarize docs/sweep-mnist1d --rhos auto
```

``--rhos auto`` adds the rho search's verdicts (what ``keras-sam sweep ...
--rhos auto`` would run next, or why it stops) for the preset's grid.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys

from keras_sam.study.sweep.results import read_folder


def folder_preset(out_dir: str):
    """The preset whose runs fill most of ``out_dir``: the recorded
    workload and preset name, the recorded config (``configs.json``), and
    the sizes and seeds of its records (their rhos too).

    Raises:
        ValueError: no records, or a config that does not give the recorded
            config id.
    """
    from keras_sam.study.workloads import get_preset

    records = read_folder(out_dir)
    if not records:
        raise ValueError(f"`out_dir` {out_dir!r} holds no results.")
    counts = collections.Counter(
        (r["workload"], r.get("preset"), r["config_id"]) for r in records
    )
    (workload, name, config_id), _ = counts.most_common(1)[0]
    mine = [r for r in records if r["config_id"] == config_id]
    with open(os.path.join(out_dir, "configs.json"), encoding="utf-8") as f:
        config = json.load(f)[config_id]
    preset = get_preset(workload, name)
    identity = {k: v for k, v in config.items() if k != "workload"}
    rhos = sorted({float(r["rho"]) for r in mine if r.get("rho") is not None})
    preset = preset.replace(
        **identity,
        sizes=tuple(sorted({r["size"] for r in mine})),
        seeds=tuple(sorted({int(r["seed"]) for r in mine})),
        **({"rhos": tuple(rhos)} if rhos else {}),
    )
    if preset.config_id() != config_id:
        raise ValueError(
            f"configs.json's config {config_id} rebuilds as {preset.config_id()}: "
            "write the summary with the sweep's own command line (--summarize)."
        )
    return preset, get_preset(workload, name).rhos


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m keras_sam.study.sweep.resummarize", description=__doc__
    )
    parser.add_argument("out_dir", help="a sweep's results folder")
    parser.add_argument(
        "--rhos", choices=["auto"], default=None, help="add the rho search's verdicts"
    )
    parser.add_argument("--max-extensions", type=int, default=None)
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    try:
        preset, grid = folder_preset(args.out_dir)
    except (ValueError, OSError, KeyError) as error:
        print(f"resummarize: error: {error}", file=sys.stderr)
        return 2
    if args.rhos == "auto":
        from keras_sam.study.sweep import rho_search

        extensions = args.max_extensions
        options = rho_search.SearchOptions(
            rho_search.MAX_EXTENSIONS if extensions is None else extensions
        )
        rho_search.write_search_summary(
            preset.replace(rhos=grid),
            args.out_dir,
            options,
            make_plots=not args.no_plots,
        )
    else:
        from keras_sam.study.sweep.runner import write_summary

        write_summary(preset, args.out_dir, make_plots=not args.no_plots)
    return 0


if __name__ == "__main__":
    sys.exit(main())
