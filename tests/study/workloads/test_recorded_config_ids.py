"""The sweeps recorded under docs/ keep their config ids: each id in a
``configs.json`` and in each ``results.jsonl`` record is recomputed from the
command (or script) that made it, and from the training config it lists."""

import importlib.util
import json
from pathlib import Path

import pytest

from keras_sam.study import cli, sweep_cli
from keras_sam.study.workloads import RunConfig

DOCS = Path(__file__).resolve().parents[3] / "docs"

# The commands of docs/reproduction.md and docs/variants.md, by results folder.
QUICK_HE = "synthetic --preset quick --init he"
COMMANDS = {
    "sweep": [QUICK_HE],
    "sweep-classification": ["synthetic-classification --preset quick "
                             "--rhos 0.05,0.1,0.2,0.5,1,2"],
    "sweep-classification-noise": ["synthetic-classification --preset noise "
                                   "--rhos 0.05,0.1,0.2,0.5,1,2"],
    "sweep-classification-sparse": ["synthetic-classification --preset sparse"],
    "sweep-digits": ["digits --preset paper --rhos 0.1"],
    "sweep-mf": ["matrix-factorization --preset quick"],
    "sweep-mf-paper": ["matrix-factorization --preset paper --seeds 0"],
    "sweep-mnist1d": ["mnist1d --preset paper --hessian"],
    "sweep-mnist1d-hessian1024": ["mnist1d --preset paper --hessian"],
    "sweep-mnist1d-cnn": ["mnist1d-cnn --preset paper --sizes 25 --rhos 0.1"],
    "sweep-mnist1d-noise15": ["mnist1d --preset noise"],
    "sweep-mnist1d-noise40": ["mnist1d --preset noise --label-noise 0.4"],
    # The sparse sweep reuses the paper sweep's dense width-64 runs.
    "sweep-mnist1d-sparse": ["mnist1d --preset sparse", "mnist1d --preset paper"],
    "sweep-msam": ["synthetic --preset quick --rhos 0.5,1 --sizes 300,1000 "
                   "--momentum 0.9 --sam-variants msam"],
    "sweep-paper-subset": ["synthetic --preset paper --init he --sizes 100,500,1000 "
                           "--rhos 0.05,0.2,0.5,1,2 --seeds 0"],
    "sweep-phases": ["synthetic --preset quick --rhos 0.5,1 "
                     "--sam-variants latesam,earlysam", QUICK_HE],
    "sweep-smoothness": ["synthetic --preset smoothness"],
    "sweep-sparse": ["synthetic --preset sparse", QUICK_HE],
    "sweep-sparse-rescaled": ["synthetic --preset sparse --sparse-rescale --seeds 0",
                              QUICK_HE],
    "sweep-stability": ["synthetic --preset stability"],
    # Run with the He student before the quick preset's changed (issue 13);
    # docs/variants.md's command predates that change and lacks `--init he`.
    "sweep-variants": [QUICK_HE + " --rhos 0.5,1 --sam-variants "
                       "looksam,lazysam,gsam,wsam,fsam,aesam"],
    "sweep-synthetic-init/quick-torch": ["synthetic --preset quick"],
    # benchmarks/variants_sweep.py runs these presets (its variant names are
    # the script's own, so only the preset is given here).
    "sweep-variants-mnist1d": ["mnist1d --preset paper --sizes 256"],
    "sweep-variants-mnist1d-cnn": ["mnist1d-cnn --preset paper --sizes 25"],
}  # fmt: skip
# docs/sweep-synthetic-init/run.py's candidates, by results folder.
INVESTIGATION = {
    "sweep-synthetic-init/he-scaled-eval": "he-scaled-eval",
    "sweep-synthetic-init/torch-raw": "torch-raw",
    "sweep-synthetic-init/torch-raw-lr0.01": "torch-raw-lr0.01",
    "sweep-synthetic-init/torch-scaled": "torch-scaled",
    "sweep-synthetic-init/torch-scaled-b1024": "torch-scaled-b1024",
}


def recorded_folders() -> list[str]:
    return sorted(
        str(path.parent.relative_to(DOCS)) for path in DOCS.glob("**/configs.json")
    )


def recorded_ids(folder: str) -> set[str]:
    """The ids of ``configs.json`` and of every record in the results files."""
    ids = set(json.loads((DOCS / folder / "configs.json").read_text()))
    for path in (DOCS / folder).glob("results*.jsonl"):
        ids.update(json.loads(line)["config_id"] for line in path.open())
    return ids


def command_preset(command: str):
    args = cli.build_parser().parse_args(["sweep", *command.split()])
    return sweep_cli.sweep_preset(args)


def investigation_preset(candidate: str):
    path = DOCS / "sweep-synthetic-init" / "run.py"
    spec = importlib.util.spec_from_file_location("synthetic_init_run", path)
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)  # defines the presets; runs nothing
    return run.BASE.replace(name=candidate, **run.CANDIDATES[candidate])


def test_every_recorded_sweep_has_its_command():
    assert len(recorded_folders()) >= 25
    assert set(recorded_folders()) == set(COMMANDS) | set(INVESTIGATION)


@pytest.mark.parametrize("folder", sorted(COMMANDS))
def test_recorded_ids_come_from_their_commands(folder):
    made = {command_preset(command).config_id() for command in COMMANDS[folder]}
    assert recorded_ids(folder) == made


@pytest.mark.parametrize("folder", sorted(INVESTIGATION))
def test_recorded_ids_come_from_the_investigation_script(folder):
    preset = investigation_preset(INVESTIGATION[folder])
    assert recorded_ids(folder) == {preset.config_id()}


@pytest.mark.parametrize("folder", sorted(COMMANDS) + sorted(INVESTIGATION))
def test_each_listed_training_config_hashes_to_its_id(folder):
    configs = json.loads((DOCS / folder / "configs.json").read_text())
    for config_id, config in configs.items():
        run = RunConfig(**config)
        assert run.config_id() == config_id
        assert run.training_config() == config  # nothing added or dropped


def test_the_check_can_fail():
    # One changed training setting is another run.
    preset = command_preset(QUICK_HE)
    assert preset.replace(batch_size=64).config_id() not in recorded_ids("sweep")
    assert preset.replace(seeds=(9,), rhos=(3.0,)).config_id() in recorded_ids("sweep")
