"""The full run config, and named presets.

The full `RunConfig` is the shared sections of `trainlab.config` plus each registered task's own
section, assembled here once. Presets are functions; each derives from another with a few changes.
`resolve` turns a preset, a YAML file and `--set` overrides into one validated config.
"""

from __future__ import annotations

import difflib
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Optional

from pydantic import Field, create_model, field_validator

from trainlab.config import RunConfig, load_yaml, merge
from trainlab.errors import ConfigError
from trainlab.tasks import DEFAULT_TASK, TASKS, task_sections


class _WithTask(RunConfig):
    task: str = DEFAULT_TASK
    """What to train: one of the registered tasks (`trainlab config` lists them)."""

    @field_validator("task")
    @classmethod
    def _registered(cls, name: str) -> str:
        if name not in TASKS:
            raise ValueError(f"unknown task '{name}'; known tasks: {', '.join(TASKS)}")
        return name


@lru_cache(maxsize=None)
def config_class() -> type[RunConfig]:
    """RunConfig with every registered task's section (default values), so any config names them all."""
    fields: dict[str, Any] = {
        key: (section, Field(default_factory=section, description=(section.__doc__ or "").strip() or None))
        for key, section in task_sections().items()}
    return create_model("RunConfig", __base__=_WithTask, __module__=__name__, **fields)


def build_config(tree: dict[str, Any]) -> RunConfig:
    """A tree of keys (a saved config.yaml, a YAML file, a preset's dict) validated into the full config."""
    return config_class().build(tree)


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    return config_class().apply_overrides(tree, overrides)


def resolve(preset: Optional[str] = None, config_file: Optional[str | Path] = None,
            overrides: Optional[list[str]] = None) -> RunConfig:
    """Preset, then the YAML file on top, then the --set overrides on top."""
    tree: dict[str, Any] = {}
    if preset:
        tree = get_preset(preset).to_dict()
    if config_file:
        tree = merge(tree, load_yaml(config_file))
    tree = apply_overrides(tree, list(overrides or []))
    if preset and "preset" not in (overrides or []):
        tree["preset"] = preset
    return build_config(tree)


def base() -> RunConfig:
    """The defaults of every section."""
    return config_class()()


def shakespeare_char() -> RunConfig:
    """The demo: character-level Shakespeare, sized for 3 minutes on 2 CPU cores with bf16. Muon for the
    blocks' matrices (at 2x the lr) reached AdamW's 3-minute loss (2.24 bits/char) after about 1,000 of its
    ~1,300 steps. Muon momentum 0.9 rather than 0.95 suits a run this short: at 1,150 steps 2.192 and
    2.191 bits/char (two seeds) against 2.202 and 2.206 (0.85: 2.200). WSD, holding the peak lr for half the
    run and decaying linearly to zero over the other half: at 1,000 steps 2.194 and 2.192 bits/char (two seeds)
    against cosine to 5%'s 2.216 and 2.217 (decaying over the last 35% or 80%: 2.210; cosine to zero: 2.211).
    RMSNorm on queries and keys (qk_norm): at 1,000 steps 2.177 and 2.172 against 2.198 and 2.192 without, for
    about 4% fewer steps in the same time."""
    cfg = base()
    cfg.model = cfg.model.model_copy(update=dict(n_layer=4, n_head=4, d_model=128, seq_len=128, dropout=0.0,
                                                 qk_norm=True))
    cfg.data = cfg.data.model_copy(update=dict(source="shakespeare", tokenizer="char"))
    cfg.optim = cfg.optim.model_copy(update=dict(name="muon", lr=3e-3, weight_decay=0.1, betas=(0.9, 0.95),
                                                 grad_clip=1.0, muon_momentum=0.9))
    cfg.schedule = cfg.schedule.model_copy(update=dict(name="wsd", warmup_steps=50, decay_fraction=0.5,
                                                       min_lr_ratio=0.0))
    cfg.train = cfg.train.model_copy(update=dict(batch_size=32, max_seconds=180.0, eval_interval=250,
                                                 eval_batches=20, log_interval=25, compile=True))
    cfg.checkpoint = cfg.checkpoint.model_copy(update=dict(interval=500))
    return cfg


def shakespeare_bpe() -> RunConfig:
    """Shakespeare with a 4096-token byte-level BPE trained on the training split."""
    cfg = shakespeare_char()
    cfg.data = cfg.data.model_copy(update=dict(tokenizer="bpe", bpe_vocab_size=4096))
    cfg.model = cfg.model.model_copy(update=dict(seq_len=128))
    return cfg


def shakespeare_sft() -> RunConfig:
    """Instruction fine-tuning on shakespeare-qa, shaped like shakespeare-bpe so `init_from` a shakespeare-bpe
    run fits. After seed 003's fine-tuning advice: a lower lr than pretraining (a third), warmup, gradient
    accumulation 2, early stopping with patience."""
    cfg = shakespeare_bpe()
    cfg.task = "sft"
    cfg.data = cfg.data.model_copy(update=dict(source="shakespeare-qa"))
    cfg.optim = cfg.optim.model_copy(update=dict(name="adamw", lr=1e-3, weight_decay=0.0))
    cfg.schedule = cfg.schedule.model_copy(update=dict(name="cosine", warmup_steps=10, min_lr_ratio=0.1))
    cfg.train = cfg.train.model_copy(update=dict(batch_size=16, grad_accum=2, max_seconds=120.0, eval_interval=40,
                                                 eval_batches=20, log_interval=10, sample_tokens=48, compile=False))
    cfg.early_stopping = cfg.early_stopping.model_copy(update=dict(patience=3, min_delta=0.001))
    cfg.checkpoint = cfg.checkpoint.model_copy(update=dict(interval=200))
    return cfg


def tiny() -> RunConfig:
    """For tests: a few thousand parameters, fp32, eager, single-threaded, 20 steps. Derived from the neutral
    base, so tuning the demo leaves the tests' baseline alone (tests/test_presets.py holds every field).
    Muon at momentum 0.9 and lr 3e-3 as the demo was when the tests' expectations were set."""
    cfg = base()
    cfg.model = cfg.model.model_copy(update=dict(n_layer=2, n_head=2, d_model=32, seq_len=32))
    cfg.optim = cfg.optim.model_copy(update=dict(name="muon", lr=3e-3, muon_momentum=0.9))
    cfg.schedule = cfg.schedule.model_copy(update=dict(name="cosine", warmup_steps=2, min_lr_ratio=0.05,
                                                       decay_fraction=0.5))
    cfg.train = cfg.train.model_copy(update=dict(batch_size=4, max_steps=20, eval_interval=10, eval_batches=2,
                                                 log_interval=1, sample_tokens=16, precision="fp32", compile=False,
                                                 threads=1))
    cfg.checkpoint = cfg.checkpoint.model_copy(update=dict(interval=10))
    return cfg


def kronos_btc() -> RunConfig:
    """Seed 004's Kronos tokenizer on hourly BTC candles: BSQ with 10 + 10 bits per hour, OneCycle
    (pct_start 0.1, div_factor 25, final_div_factor 100), early stopping (patience 5, min_delta 1e-5),
    the 3 best checkpoints kept; sized for a few minutes on 2 CPU cores."""
    cfg = base()
    cfg.task = "series_tokenizer"
    cfg.data = cfg.data.model_copy(update=dict(source="btc-1h", val_fraction=0.1))
    cfg.model = cfg.model.model_copy(update=dict(n_layer=2, n_head=4, d_model=64, dropout=0.0))
    cfg.optim = cfg.optim.model_copy(update=dict(lr=2e-3, weight_decay=0.05, betas=(0.9, 0.95), grad_clip=1.0))
    cfg.schedule = cfg.schedule.model_copy(update=dict(name="onecycle", pct_start=0.1, div_factor=25.0,
                                                       final_div_factor=100.0))
    cfg.train = cfg.train.model_copy(update=dict(batch_size=64, max_seconds=180.0, eval_interval=100, eval_batches=8,
                                                 log_interval=10, sample_tokens=0, compile=True))
    cfg.early_stopping = cfg.early_stopping.model_copy(update=dict(patience=5, min_delta=1e-5))
    cfg.checkpoint = cfg.checkpoint.model_copy(update=dict(interval=200, save_top_k=3))
    return cfg


def kronos_btc_forecast() -> RunConfig:
    """The Kronos predictor on hourly BTC: an autoregressive decoder over the codes of a kronos-btc tokenizer
    run (give it with --set series.tokenizer_run=RUN), frozen. Train, validation and test are chronological;
    validation (5%) and test (the last 5%) lie after the tokenizer's training rows (its data.val_fraction
    0.1). Windows of the tokenizer's lookback plus 24 hours, so horizons up to a day are in the training
    windows; sized for a few minutes on 2 CPU cores."""
    cfg = kronos_btc()
    cfg.task = "series_forecast"
    cfg.data = cfg.data.model_copy(update=dict(val_fraction=0.05))
    cfg.series = cfg.series.model_copy(update=dict(pred_len=24, test_fraction=0.05, stride=1))
    cfg.model = cfg.model.model_copy(update=dict(n_layer=2, n_head=4, d_model=64, dropout=0.1))
    cfg.optim = cfg.optim.model_copy(update=dict(lr=2e-3, weight_decay=0.05, betas=(0.9, 0.95), grad_clip=1.0))
    cfg.schedule = cfg.schedule.model_copy(update=dict(name="cosine", warmup_steps=50, min_lr_ratio=0.1))
    cfg.train = cfg.train.model_copy(update=dict(batch_size=32, max_seconds=180.0, eval_interval=100,
                                                 eval_batches=8, log_interval=10, sample_tokens=0, compile=False))
    cfg.early_stopping = cfg.early_stopping.model_copy(update=dict(patience=5, min_delta=1e-4))
    cfg.checkpoint = cfg.checkpoint.model_copy(update=dict(interval=200, save_top_k=1))
    return cfg


def micro_bert() -> RunConfig:
    """Seed 000's balanced micro-BERT as a masked LM on Shakespeare, sized for 3 minutes on 2 CPU cores.

    Kept from the seed: 2 layers, 2 heads, 16-dim embeddings, untied embeddings with an output bias,
    AdamW with weight decay 0.01 and betas (0.9, 0.999), clipping at 5.0, 10% warmup. Changed, because
    at the seed's settings a model this small stays at the unigram loss for the whole 3 minutes: our
    own 1,024-token BPE vocabulary (a 16-dim model learns a small vocabulary's contexts far sooner than
    4,096 tokens'), windows of 32 tokens, 128 at a time (the same 4,096 tokens a step as 32 x 128, but
    position-specific attention is learnt much sooner over 32 learned positions), and lr 5e-3 (1e-4
    barely moves it in 3 minutes).
    """
    cfg = shakespeare_bpe()
    cfg.task = "masked_lm"
    cfg.model = cfg.model.model_copy(update=dict(n_layer=2, n_head=2, d_model=16, seq_len=32, dropout=0.0,
                                                 tie_embeddings=False, output_bias=True, norm_eps=1e-12,
                                                 qk_norm=False))
    cfg.data = cfg.data.model_copy(update=dict(bpe_vocab_size=1024))
    cfg.optim = cfg.optim.model_copy(update=dict(name="adamw", lr=5e-3, weight_decay=0.01, betas=(0.9, 0.999),
                                                 grad_clip=5.0))
    cfg.schedule = cfg.schedule.model_copy(update=dict(name="cosine", warmup_steps=300, min_lr_ratio=0.1))
    cfg.train = cfg.train.model_copy(update=dict(batch_size=128, max_seconds=180.0, eval_interval=500,
                                                 eval_batches=20, log_interval=50))
    return cfg


PRESETS: dict[str, Callable[[], RunConfig]] = {
    "tiny": tiny,
    "shakespeare-char": shakespeare_char,
    "shakespeare-bpe": shakespeare_bpe,
    "shakespeare-sft": shakespeare_sft,
    "kronos-btc": kronos_btc,
    "kronos-btc-forecast": kronos_btc_forecast,
    "micro-bert": micro_bert,
}


def get_preset(name: str) -> RunConfig:
    if name not in PRESETS:
        close = [p for p in PRESETS if p.startswith(name)] or difflib.get_close_matches(name, list(PRESETS), n=1)
        if len(close) == 1:
            hint = f"; did you mean '{close[0]}'?"
        else:
            hint = f"; did you mean one of {', '.join(close)}?" if close else f"; known presets: {', '.join(PRESETS)}"
        raise ConfigError(f"unknown preset '{name}'{hint}")
    return PRESETS[name]()
