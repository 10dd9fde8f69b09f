"""Config: presets, YAML, dotted overrides with type coercion, one-line errors."""

from __future__ import annotations

import pytest

from trainlab.presets import build_config, config_class, resolve
from trainlab.errors import ConfigError
from trainlab.presets import PRESETS, get_preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_a_valid_config(name):
    cfg = get_preset(name)
    assert build_config(cfg.to_dict()) == cfg
    assert resolve(name).preset == name


def test_presets_derive_from_each_other():
    char, bpe, tiny = get_preset("shakespeare-char"), get_preset("shakespeare-bpe"), get_preset("tiny")
    assert bpe.data.tokenizer == "bpe" and char.data.tokenizer == "char"
    assert bpe.optim == char.optim and tiny.data == char.data


def test_overrides_coerce_types():
    cfg = resolve("tiny", overrides=["optim.lr=1e-3", "train.batch_size=7", "train.compile=true",
                                     "optim.betas=[0.8, 0.9]", "train.freeze=['blocks.*.attn.*']",
                                     "train.unfreeze.100=['blocks.1.*']", "train.max_steps=null"])
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float)
    assert cfg.train.batch_size == 7 and cfg.train.compile is True
    assert cfg.optim.betas == (0.8, 0.9)
    assert cfg.train.freeze == ["blocks.*.attn.*"] and cfg.train.unfreeze == {100: ["blocks.1.*"]}
    assert cfg.train.max_steps is None


def test_yaml_file_is_applied_between_preset_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  d_model: 64\n  n_head: 4\noptim:\n  lr: 0.01\n")
    cfg = resolve("tiny", f, ["optim.lr=0.02"])
    assert cfg.model.d_model == 64 and cfg.optim.lr == 0.02 and cfg.model.n_layer == get_preset("tiny").model.n_layer


def test_a_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = resolve("shakespeare-bpe", overrides=["train.unfreeze.5=['a.*']"])
    f = tmp_path / "config.yaml"
    f.write_text(cfg.to_yaml())
    assert resolve(config_file=f) == cfg


@pytest.mark.parametrize("override,message", [
    ("optim.lrr=1", "unknown config key 'optim.lrr'; did you mean 'optim.lr'?"),
    ("lr=1", "did you mean 'optim.lr'?"),
    ("model.nlayer=2", "did you mean 'model.n_layer'?"),
    ("optim.lr=-0.1", "config key 'optim.lr': input should be greater than 0"),
    ("train.batch_size=many", "config key 'train.batch_size'"),
    ("model.n_head=5", "model.n_head (5) must divide model.d_model"),
    ("optim.betas=[0.9, 1.5]", "optim.betas must lie in [0, 1)"),
    ("train.precision=fp8", "config key 'train.precision'"),
    ("model.dropout=1.0", "config key 'model.dropout'"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        resolve("tiny", overrides=[override])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unknown_key_in_yaml_names_the_closest(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  weight_decy: 0.1\n")
    with pytest.raises(ConfigError, match="did you mean 'optim.weight_decay'"):
        resolve("tiny", f)


@pytest.mark.parametrize("text,message", [("optim: [1, 2\n", "not valid YAML"), ("- 1\n- 2\n", "must hold a mapping")])
def test_broken_yaml_is_one_line(tmp_path, text, message):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message):
        resolve("tiny", f)


def test_known_keys_cover_the_contract():
    keys = set(config_class().keys())
    for key in ["task", "init_from", "model.n_layer", "model.vocab_size", "model.tie_embeddings", "data.source",
                "data.tokenizer", "data.val_fraction", "data.strict", "data.cache_dir", "optim.lr", "optim.betas",
                "optim.grad_clip", "schedule.name", "schedule.pct_start", "schedule.final_div_factor",
                "schedule.cycles", "schedule.decay_fraction", "train.max_tokens", "train.max_seconds",
                "train.device", "train.precision", "train.compile", "train.label_smoothing", "train.freeze",
                "train.unfreeze", "early_stopping.patience", "early_stopping.min_delta", "checkpoint.interval",
                "checkpoint.keep_last", "checkpoint.save_top_k"]:
        assert key in keys, key
    assert config_class().closest_key("checkpoint.keep") == "checkpoint.keep_last"


def test_tokens_per_step_count_every_process_and_only_loss_tokens_carry_loss():
    from trainlab.experiment.estimate import step_size

    cfg = resolve("tiny", overrides=["train.batch_size=8", "train.grad_accum=4", "model.seq_len=16"])
    assert step_size(cfg).tokens == 8 * 4 * 16 and step_size(cfg, world=2).tokens == 2 * 8 * 4 * 16
    mlm = resolve("micro-bert", overrides=["train.batch_size=8", "model.seq_len=20", "mlm.mask_prob=0.15"])
    assert step_size(mlm).tokens == 8 * 20 and step_size(mlm).loss_tokens == 8 * 3  # 15% of 20 positions
    assert isinstance(config_class()().to_yaml(), str)
