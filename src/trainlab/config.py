"""Typed run configuration: one model per component, combined in `RunConfig`.

YAML files, presets and dotted `--set key=value` overrides all end up here. Every error a user can
make (unknown key, wrong type, impossible value) becomes a `ConfigError` with one line naming the
key. This module does not import torch, so `trainlab --help` and config checks stay fast.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from trainlab.errors import ConfigError


class Section(BaseModel):
    """A config section: unknown keys are errors, assignments are validated, and each field's docstring
    is its documentation (`trainlab config` prints it)."""

    # no key takes an infinite or NaN number (an lr of inf would train into NaN weights)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True,
                              allow_inf_nan=False)


class MoEConfig(Section):
    experts: int = Field(0, ge=0)
    """Routed experts per feed-forward layer; 0 keeps the dense SwiGLU (seed 001's use_moe=False)."""
    top_k: int = Field(2, ge=1)
    """Experts each token is sent to."""
    shared_expert: bool = False
    """An expert every token passes through besides the routed ones (as DeepSeek-MoE and MiniMind)."""
    shared_gate: bool = False
    """Scale the shared expert's output by a learned sigmoid gate, sigmoid(x . w) per token (as Qwen2-MoE);
    needs shared_expert. A shared expert exports as Qwen2-MoE either way (without the gate: a zero gate
    weight and the expert's output projection doubled, since sigmoid(0) = 1/2)."""
    expert_hidden: Optional[int] = Field(None, ge=1)
    """Hidden width of each expert; default: the dense feed-forward's."""
    aux_loss_weight: float = Field(0.01, ge=0.0)
    """Weight of the load-balancing loss (Switch Transformer's: experts x sum of load share x mean router prob)."""
    norm_topk: bool = True
    """Renormalise the chosen experts' router probabilities to sum to one."""
    capacity_factor: float = Field(1.5, gt=0.0)
    """While training, each expert takes at most this x its fair share of a batch's assignments (fixed
    shapes for torch.compile); the rest are dropped and counted (moe_dropped). Evaluation drops none."""

    @model_validator(mode="after")
    def _top_k_fits(self) -> "MoEConfig":
        if self.experts and self.top_k > self.experts:
            raise ValueError(f"model.moe.top_k ({self.top_k}) cannot exceed model.moe.experts ({self.experts})")
        if self.shared_gate and not self.shared_expert:
            raise ValueError("model.moe.shared_gate needs model.moe.shared_expert=true (it gates the shared expert)")
        return self


class ModelConfig(Section):
    n_layer: int = Field(4, ge=1)
    """Number of transformer blocks."""
    n_head: int = Field(4, ge=1)
    """Attention heads; must divide d_model."""
    n_kv_head: Optional[int] = Field(None, ge=1)
    """Key/value heads (grouped-query attention): each serves n_head / n_kv_head query heads, so the KV cache
    and the key/value projections shrink by that factor; must divide n_head. Default: n_head (every head
    its own keys and values). Exports as num_key_value_heads."""
    d_model: int = Field(128, ge=1)
    """Width of the residual stream."""
    vocab_size: Optional[int] = Field(None, ge=2)
    """Taken from the tokenizer unless set (set it larger to pad for speed)."""
    seq_len: int = Field(256, ge=2)
    """Context length in tokens."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout on embeddings, attention output and feed-forward output."""
    tie_embeddings: bool = True
    """Share the input embedding with the output projection."""
    output_bias: bool = False
    """A bias on the output projection (as BERT's MLM head; seed 000's parameter table counts it)."""
    ffn_hidden: Optional[int] = Field(None, ge=1)
    """SwiGLU hidden width; default 8/3 * d_model rounded up to a multiple of 32."""
    qk_norm: bool = False
    """RMSNorm over each head's queries and keys before the rotary embedding (as Qwen3 and OLMo 2): the
    attention logits stay bounded, so a short run can keep a high learning rate. A causal LM with it exports
    as Qwen3 rather than Llama."""
    rope_theta: float = Field(10000.0, gt=0)
    """Base of the rotary position embedding."""
    norm_eps: float = Field(1e-5, gt=0)
    """Epsilon of RMSNorm."""
    init_std: float = Field(0.02, gt=0)
    """Std of the normal init; residual output projections are scaled by 1/sqrt(2 n_layer)."""
    moe: MoEConfig = Field(default_factory=MoEConfig)
    """Mixture of experts in place of each feed-forward layer."""
    attention: Literal["auto", "sdpa", "math"] = "auto"
    """Attention kernel: `sdpa` (scaled_dot_product_attention), `math` (explicit softmax(QK^T)V, which
    torch.compile fuses); auto: math for bf16 on a CPU up to 512 positions (3x faster there), else sdpa."""

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "ModelConfig":
        if self.d_model % self.n_head:
            raise ValueError(f"model.n_head ({self.n_head}) must divide model.d_model ({self.d_model})")
        if (self.d_model // self.n_head) % 2:
            raise ValueError("model.d_model / model.n_head must be even for rotary embeddings")
        if self.n_kv_head is not None and self.n_head % self.n_kv_head:
            raise ValueError(f"model.n_kv_head ({self.n_kv_head}) must divide model.n_head ({self.n_head})")
        return self

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def kv_heads(self) -> int:
        """Key/value heads: n_kv_head, or n_head when unset."""
        return self.n_kv_head or self.n_head

    @property
    def ffn_hidden_size(self) -> int:
        if self.ffn_hidden:
            return self.ffn_hidden
        return ((8 * self.d_model // 3) + 31) // 32 * 32


class DataConfig(Section):
    source: str = "shakespeare"
    """A bundled corpus name (`trainlab data list`), a .txt file or folder, or a .jsonl file."""
    tokenizer: str = "char"
    """`char`, `byte`, `bpe`, or a path to a tokenizer.json."""
    bpe_vocab_size: int = Field(4096, ge=260, le=1_000_000)
    """Vocabulary size when training a BPE tokenizer."""
    val_fraction: float = Field(0.1, gt=0.0, lt=0.5)
    """Share of documents (or of a single text's tail) held out for validation."""
    text_field: str = "text"
    """Field holding the text in .jsonl input."""
    strict: bool = False
    """Fail on a broken .jsonl line or candle CSV row instead of skipping it and reporting the count."""
    cache_dir: Optional[str] = None
    """Where corpora and token shards are cached; default $TRAINLAB_CACHE or ~/.cache/trainlab."""


class OptimConfig(Section):
    name: Literal["adamw", "muon"] = "adamw"
    """adamw, or muon: Muon for the matrices inside the transformer blocks (momentum orthogonalised by
    Newton-Schulz), AdamW with the settings below for embeddings, heads, norms and biases."""
    lr: float = Field(1e-3, gt=0.0)
    """Peak learning rate."""
    weight_decay: float = Field(0.1, ge=0.0)
    """Decoupled weight decay; applied to matrices only (not norms, biases, embeddings)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    eps: float = Field(1e-8, gt=0.0)
    """AdamW epsilon."""
    grad_clip: float = Field(1.0, ge=0.0)
    """Clip the global gradient norm to this value; 0 turns clipping off."""
    decay_embeddings: bool = False
    """Also apply weight decay to embedding tables."""
    muon_lr_scale: float = Field(2.0, gt=0.0)
    """Muon's lr as a multiple of optim.lr. Its updates are scaled to AdamW's RMS, so 1 moves the matrices
    as fast as AdamW would; 2 suited our small causal LMs best."""
    muon_momentum: float = Field(0.95, ge=0.0, lt=1.0)
    """Muon's (Nesterov) momentum."""

    @model_validator(mode="after")
    def _betas_in_range(self) -> "OptimConfig":
        for b in self.betas:
            if not 0.0 <= b < 1.0:
                raise ValueError(f"optim.betas must lie in [0, 1), got {list(self.betas)}")
        return self


ScheduleName = Literal["constant", "cosine", "onecycle", "cosine_restarts", "wsd"]


class ScheduleConfig(Section):
    name: ScheduleName = "cosine"
    """Learning-rate schedule."""
    warmup_steps: int = Field(0, ge=0)
    """Linear warmup (constant, cosine, cosine_restarts, wsd)."""
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)
    """Final lr as a fraction of the peak (cosine, cosine_restarts, wsd)."""
    pct_start: float = Field(0.3, gt=0.0, lt=1.0)
    """onecycle: fraction of steps spent rising."""
    div_factor: float = Field(25.0, gt=0.0)
    """onecycle: initial lr = lr / div_factor."""
    final_div_factor: float = Field(1e4, gt=0.0)
    """onecycle: final lr = initial lr / final_div_factor."""
    cycles: int = Field(1, ge=1)
    """cosine_restarts: number of cosine cycles after warmup."""
    decay_fraction: float = Field(0.2, gt=0.0, le=1.0)
    """wsd: fraction of the run spent decaying at the end."""


class TrainConfig(Section):
    batch_size: int = Field(32, ge=1)
    """Sequences per micro-batch (per process)."""
    grad_accum: int = Field(1, ge=1)
    """Micro-batches accumulated per optimizer step."""
    epochs: Optional[float] = Field(None, gt=0)
    """Budget in passes over the training tokens."""
    max_steps: Optional[int] = Field(None, ge=1)
    """Budget in optimizer steps."""
    max_tokens: Optional[int] = Field(None, ge=1)
    """Budget in training tokens."""
    max_seconds: Optional[float] = Field(None, gt=0)
    """Budget in seconds of training and evaluation (start-up and compile warm-up excluded)."""
    eval_interval: int = Field(200, ge=1)
    """Evaluate every N steps (and at the end)."""
    eval_batches: int = Field(20, ge=1)
    """Batches in the fixed validation subset."""
    log_interval: int = Field(10, ge=1)
    """Write a train row every N steps."""
    sample_tokens: int = Field(200, ge=0)
    """Tokens generated into samples.jsonl at each evaluation; 0 turns samples off."""
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    """Where to train."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """auto: bf16 on CPUs with AVX-512 bf16 and GPUs of compute capability 8.0+, fp16 on older GPUs, else fp32."""
    compile: bool = False
    """Wrap the model in torch.compile."""
    seed: int = Field(1337, ge=0)
    """Seed for init, data order and dropout."""
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    """Label smoothing of the cross entropy."""
    freeze: list[str] = Field(default_factory=list)
    """Glob patterns of parameter names to freeze, e.g. ['blocks.*.attn.*']."""
    unfreeze: dict[int, list[str]] = Field(default_factory=dict)
    """Step -> patterns to unfreeze at that step (layer-wise unfreezing)."""
    threads: Optional[int] = Field(None, ge=1)
    """CPU threads for torch; default: all cores."""
    peak_flops: Optional[float] = Field(None, gt=0)
    """The device's matmul peak for MFU; default: measured once at the run's precision and cached."""


class EarlyStoppingConfig(Section):
    patience: int = Field(0, ge=0)
    """Evaluations without improvement before stopping; 0 turns it off."""
    min_delta: float = Field(0.0, ge=0.0)
    """Smallest drop in validation loss that counts as improvement."""


class CheckpointConfig(Section):
    interval: int = Field(500, ge=1)
    """Write a checkpoint every N steps (and at the end, and on SIGINT/SIGTERM)."""
    keep_last: int = Field(2, ge=1)
    """Step checkpoints kept besides the best ones."""
    save_top_k: int = Field(1, ge=0)
    """Best checkpoints kept by validation loss."""


class GuardConfig(Section):
    skip_nonfinite: bool = True
    """Skip an optimizer step whose loss or gradient is not finite."""
    max_nonfinite: int = Field(3, ge=1)
    """Consecutive non-finite steps that trigger a rollback to the last good checkpoint."""
    spike_factor: float = Field(3.0, gt=1.0)
    """A loss above spike_factor x the running median is a spike: skip the step and roll back (for losses that
    can be negative: more than (spike_factor - 1) x max(|median|, 5 x median absolute deviation) above the median)."""
    spike_window: int = Field(50, ge=5)
    """Steps in the running median the spike test compares against."""
    lr_factor: float = Field(0.5, gt=0.0, le=1.0)
    """Multiply the learning rate by this after each rollback."""
    lr_recovery_steps: int = Field(100, ge=0)
    """Steps over which the lowered lr climbs back to the schedule; 0 keeps it lowered for good."""
    max_rollbacks: int = Field(5, ge=0)
    """Give up (exit 1, checkpoints intact) after this many rollbacks."""


class RunConfig(Section):
    """The sections every task shares. The full config adds each registered task's own section (`sft`,
    `mlm`, `series`, ...); `trainlab.presets.config_class()` assembles it, and `build`, called on that
    class, validates a tree of keys into it."""

    task: str
    """What to train: one of the registered tasks (`trainlab config` lists them)."""
    preset: Optional[str] = None
    """The preset this config started from (informational)."""
    init_from: Optional[str] = None
    """A run directory, or a local transformers directory, whose weights initialise the model."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    """The network's shape and its parts."""
    data: DataConfig = Field(default_factory=DataConfig)
    """What it reads, and how it is tokenized and split."""
    optim: OptimConfig = Field(default_factory=OptimConfig)
    """The optimizer."""
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    """The learning-rate schedule."""
    train: TrainConfig = Field(default_factory=TrainConfig)
    """The loop: batches, budgets, device, precision, logging."""
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    """Stop when validation stops improving."""
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    """How often checkpoints are written and how many are kept."""
    guard: GuardConfig = Field(default_factory=GuardConfig)
    """What happens on non-finite values and loss spikes."""

    def with_vocab_size(self, tokenizer_vocab: int) -> "RunConfig":
        """model.vocab_size from the tokenizer when unset; an explicit one must cover the tokenizer."""
        if self.model.vocab_size is None:
            return type(self).build({**self.to_dict(), "model": {**self.model.model_dump(), "vocab_size": tokenizer_vocab}})
        if self.model.vocab_size < tokenizer_vocab:
            raise ConfigError(f"model.vocab_size={self.model.vocab_size} is smaller than the tokenizer's "
                              f"{tokenizer_vocab}; remove it or raise it")
        return self

    def updated(self, tree: dict[str, Any]) -> "RunConfig":
        """A validated copy with the keys of `tree` (nested sections) merged in."""
        return type(self).build(merge(self.to_dict(), tree))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    # -- keys and validation ----------------------------------------------------------------------
    @classmethod
    def build(cls, tree: dict[str, Any]) -> "RunConfig":
        """Validate a tree of keys; every error becomes a one-line ConfigError naming the key."""
        try:
            return cls.model_validate(tree)
        except ValidationError as err:
            raise ConfigError(cls._format_validation_error(err)) from None

    @classmethod
    def keys(cls) -> list[str]:
        return known_keys(cls)

    @classmethod
    def closest_key(cls, key: str) -> Optional[str]:
        keys = cls.keys()
        match = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
        if not match:  # try the last part alone: `lr` -> optim.lr
            tail = {k.rsplit(".", 1)[-1]: k for k in keys}
            m = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(tail), n=1, cutoff=0.75)
            match = [tail[m[0]]] if m else []
        return match[0] if match else None

    @classmethod
    def unknown_key_message(cls, key: str) -> str:
        hint = cls.closest_key(key)
        return (f"unknown config key '{key}'" + (f"; did you mean '{hint}'?" if hint else "")
                + " (`trainlab config` lists every key)")

    @classmethod
    def apply_overrides(cls, tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
        """`--set key=value` items applied to a tree of keys, each key checked against the schema."""
        keys = set(cls.keys())
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"--set expects key=value, got '{item}'")
            key, text = item.split("=", 1)
            key = key.strip()
            if key not in keys and not _is_dict_entry(key):
                raise ConfigError(cls.unknown_key_message(key))
            set_dotted(tree, key, parse_value(text))
        return tree

    @classmethod
    def _format_validation_error(cls, err: ValidationError) -> str:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        kind = first["type"]
        if kind == "extra_forbidden":
            return cls.unknown_key_message(loc)
        msg = first["msg"]
        if msg.startswith("Value error, "):
            return msg[len("Value error, "):]
        got = first.get("input")
        got_text = f" (got {got!r})" if got is not None and not isinstance(got, dict) else ""
        return f"config key '{loc}': {msg.lower()}{got_text}"


# ---------------------------------------------------------------------------------------------
# Trees of keys: YAML files, dotted overrides


def known_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted key of a config class, nested sections expanded."""
    keys = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.extend(known_keys(ann, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


def type_name(annotation: Any) -> str:
    """A field's type as a user reads it: `float`, `int or null`, `one of adamw, muon`, `list of str`."""
    import typing

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin is typing.Union:
        named = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(named) + (" or null" if type(None) in args else "")
    if origin in (list, tuple, dict):
        inner = ", ".join(type_name(a) for a in args if a is not Ellipsis)
        return f"{origin.__name__} of {inner}" if inner else origin.__name__
    return getattr(annotation, "__name__", str(annotation))


def describe_keys(cfg: BaseModel, prefix: str = "") -> list[dict[str, Any]]:
    """Every leaf key of a config with its type, value and docstring, in declaration order."""
    rows = []
    for name, field in type(cfg).model_fields.items():
        value = getattr(cfg, name)
        if isinstance(value, BaseModel):
            rows.extend(describe_keys(value, f"{prefix}{name}."))
            continue
        shown = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
        rows.append({"key": f"{prefix}{name}", "type": type_name(field.annotation),
                     "value": list(shown) if isinstance(shown, tuple) else shown,
                     "doc": " ".join((field.description or "").split())})
    return rows


def parse_value(text: str) -> Any:
    """A `--set` value: YAML scalars and lists (`1e-3`, `true`, `[0.9, 0.95]`, `null`)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    # YAML 1.1 reads "1e-3" as a string; numbers written that way are common on command lines.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set `a.b.c` in a nested dict; a path through a value (not a section) is an unknown key."""
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"malformed config key '{key}'")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"unknown config key '{key}': '{part}' holds a value, not a section "
                              f"(`trainlab config` lists every key)")
        node = child
    node[parts[-1]] = value


def _is_dict_entry(key: str) -> bool:
    # train.unfreeze.<step> is a valid key: an entry of a dict-valued field.
    return key.startswith("train.unfreeze.")


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file '{path}' does not exist")
    if path.is_dir():
        raise ConfigError(f"config file '{path}' is a directory; give a .yaml file")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config file '{path}' is not UTF-8 text") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file '{path}' is not valid YAML{where}") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of keys, not a {type(tree).__name__}")
    return tree


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "unfreeze":
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out
