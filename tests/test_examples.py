"""The shipped sweep and search-space files load, and every config they would train validates (nothing trains)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from trainlab.config import RunConfig
from trainlab.experiment.ablate import load_sweep, variant_config
from trainlab.experiment.tune import load_space, trial_config
from trainlab.presets import resolve
from trainlab.tasks import meta_model

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SWEEPS = sorted((EXAMPLES / "sweeps").glob("*.yaml"))
SPACES = sorted((EXAMPLES / "tune").glob("*.yaml"))


def test_there_are_examples():
    assert SWEEPS and SPACES


def buildable(cfg: RunConfig) -> None:
    """The model the config describes can be built (on the meta device, at a character vocabulary)."""
    model = meta_model(cfg.with_vocab_size(65) if cfg.model.vocab_size is None else cfg)
    assert model.num_params() > 0


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_example_sweep_loads_and_every_run_config_validates(path):
    sweep = load_sweep(path)
    assert sweep.baseline in sweep.variants and sweep.seeds >= 1 and sweep.workers >= 1
    kind, amount = sweep.budget
    key = {"tokens": "max_tokens", "steps": "max_steps", "seconds": "max_seconds"}[kind]
    for name, overrides in sweep.variants.items():
        seeds = set()
        for k in range(sweep.seeds):
            cfg = variant_config(sweep, name, k)
            assert isinstance(cfg, RunConfig)
            seeds.add(cfg.train.seed)
            assert getattr(cfg.train, key) == amount  # the sweep's budget, and no other
            others = {"max_tokens", "max_steps", "max_seconds", "epochs"} - {key}
            assert all(getattr(cfg.train, k) is None for k in others), name
            tree = cfg.to_dict()
            for dotted, value in {**sweep.base_set, **overrides}.items():
                section, field = dotted.split(".", 1)
                assert tree[section][field] == value, (name, dotted)
            if kind == "tokens":  # "a multiple of every variant's tokens per step": each sees exactly the budget
                assert amount % (cfg.train.batch_size * cfg.train.grad_accum * cfg.model.seq_len) == 0, name
            buildable(cfg)
        assert len(seeds) == sweep.seeds


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
def test_example_search_space_loads_and_its_corners_validate(path):
    space = load_space(path)
    base = resolve("shakespeare-char").to_dict()  # the preset the file's usage line names
    # every choice, and each range at both ends
    axes = [list(spec["choices"]) if "choices" in spec else [spec["low"], spec["high"]]
            for spec in space["params"].values()]
    corners = list(itertools.product(*axes))
    assert len(corners) >= 2
    for combo in corners:
        values = dict(zip(space["params"], combo))
        cfg = trial_config(base, space, values)
        tree = cfg.to_dict()
        for dotted, value in {**space["set"], **values}.items():
            section, field = dotted.split(".", 1)
            assert tree[section][field] == pytest.approx(value), dotted
        if space["budget"]:
            (kind, amount), = space["budget"].items()
            key = {"tokens": "max_tokens", "steps": "max_steps", "seconds": "max_seconds"}[kind]
            assert getattr(cfg.train, key) == amount  # the file's budget, and no other (the preset's time budget)
            others = {"max_tokens", "max_steps", "max_seconds", "epochs"} - {key}
            assert all(getattr(cfg.train, k) is None for k in others)
        buildable(cfg)
