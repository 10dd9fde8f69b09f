"""The trainer: small methods around one loop, with an explicit state_dict for exact resume.

`train_step` does one optimizer step (micro-batches, clipping, the guards' verdict); `fit` repeats it
until a budget (`train/budget.py`) is spent, writing rows, evaluating, checkpointing and answering
signals on the way. The guards (`train/guards.py`) skip bad steps and roll back.
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from trainlab import hardware
from trainlab.config import RunConfig
from trainlab.errors import ConfigError, NonFiniteOutput
from trainlab.monitor.sinks import Sinks, read_jsonl
from trainlab.tasks import task_class
from trainlab.train import distributed, guards
from trainlab.train.budget import Pace, StepSize, total_steps
from trainlab.train.checkpoint import CheckpointManager
from trainlab.train.guards import Diverged
from trainlab.train.optimizers import build_optimizer
from trainlab.train.schedules import lr_multiplier

__all__ = ["Diverged", "Progress", "Trainer", "val_summary"]


@dataclass
class Progress:
    step: int = 0
    tokens: int = 0
    elapsed_s: float = 0.0
    best_val: float = float("inf")
    bad_evals: int = 0
    skipped_steps: int = 0
    lr_scale: float = 1.0  # lowered by each rollback, then recovering
    rollback_step: int = 0
    rollbacks: int = 0
    nonfinite_streak: int = 0
    clipped_in_window: int = 0  # clipped steps since the last train row
    recent_losses: list = field(default_factory=list)  # for the spike guard's running median


@dataclass
class Window:
    """Tokens and wall time since the last train row, for its tokens/s (evaluations and checkpoints excluded)."""

    tokens: int = 0
    start: float = field(default_factory=time.perf_counter)

    def reset(self, now: Optional[float] = None) -> None:
        self.tokens, self.start = 0, time.perf_counter() if now is None else now

    def rate(self, now: float) -> float:
        return self.tokens / max(now - self.start, 1e-9)


def val_summary(val: dict[str, float]) -> str:
    text = f"val loss {val['loss']:.4f}"
    for key, unit in (("bits_per_char", "bits/char"), ("bits_per_byte", "bits/byte"), ("bits_per_token", "bits/token")):
        if key in val:
            text += f" | {val[key]:.3f} {unit}"
            break
    if "mse" in val:  # a series tokenizer: reconstruction against the uniform-quantisation baseline
        text += f" | mse {val['mse']:.4f} (uniform quantisation {val['mse_uniform']:.4f})"
    return text + (f" | acc {val['acc']:.3f}" if "acc" in val else "")


class Trainer:
    def __init__(self, cfg: RunConfig, data: Any, run_dir: Path, log: Callable[[str], None] = print,
                 dist: distributed.Dist = distributed.Dist()):
        self.cfg, self.data, self.run_dir, self.log, self.dist = cfg, data, Path(run_dir), log, dist
        self.device = hardware.resolve_device(cfg.train.device)
        if dist.active and self.device.type == "cuda":
            self.device = torch.device("cuda", dist.local_rank)
        self.precision = hardware.resolve_precision(cfg.train.precision, self.device)
        if self.device.type == "cpu":
            hardware.keep_freed_memory()
            if self.precision == "bf16" and not hardware.fast_bf16(self.device) and dist.main:
                log("warning: train.precision=bf16 on a CPU without AVX-512 bf16 or AMX runs many times slower "
                    "than fp32, which train.precision=auto picks here")
        torch.manual_seed(cfg.train.seed)
        self.task = task_class(cfg.task)(cfg, data, self.device, dist.rank, dist.world)
        self.model = self.task.build_model(cfg).to(self.device)
        self.attention = hardware.attention_kernel(cfg.model.attention, self.device, self.precision, cfg.model.seq_len)
        self.model.use_attention(self.attention)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.forward = self.train_forward = torch.compile(self.model) if cfg.train.compile else self.model
        if dist.active:  # gradients averaged across processes; each process sees its share of the batch
            from torch.nn.parallel import DistributedDataParallel

            ids = [dist.local_rank] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)
            self.train_forward = torch.compile(self.ddp) if cfg.train.compile else self.ddp
            torch.manual_seed(cfg.train.seed + dist.rank)  # distinct dropout masks per process
        self.step_size = StepSize.of(cfg, self.task.tokens_per_example, self.task.loss_tokens_per_example, dist.world)
        self.tokens_per_step = self.step_size.tokens  # all processes together
        self.checkpoints = CheckpointManager(self.run_dir / "checkpoints", cfg.checkpoint.keep_last,
                                             cfg.checkpoint.save_top_k, log=log)
        self.progress = Progress()
        self.total_steps = total_steps(cfg, self.step_size, self.task.examples_per_epoch)
        self.pace = Pace(self.total_steps, cfg.train.max_seconds)
        self._stop_signal: Optional[int] = None
        # called after each evaluation with (step, metrics); True stops the run ("pruned"), as a tuner asks
        self.on_eval: Optional[Callable[[int, dict[str, Any]], bool]] = None
        self._warm = self._eval_warm = False
        self.resumed = False  # set by the run when it continued from a checkpoint
        self._apply_freeze(0)
        late = sorted(int(s) for s in cfg.train.unfreeze if self.total_steps and int(s) >= self.total_steps)
        if late and dist.main:  # not an error: a resume with a larger budget may reach them
            log(f"note: train.unfreeze at step {', '.join(map(str, late))} is past this run's {self.total_steps} steps; "
                f"it will not fire unless the budget grows")

    # -- budgets ------------------------------------------------------------------------------------
    def fraction_done(self) -> float:
        return self.pace.fraction_done(self.progress.step, self.progress.elapsed_s)

    def schedule_total(self) -> float:
        """Total steps the schedule spans; for a time budget, estimated from the pace so far."""
        return self.pace.schedule_total(self.progress.step, self.progress.elapsed_s)

    def budget_done(self) -> bool:
        return self.pace.done(self.progress.step, self.progress.elapsed_s)

    # -- state ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        p = self.progress
        state = {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                 "step": p.step, "tokens": p.tokens, "elapsed_s": p.elapsed_s, "best_val": p.best_val,
                 "bad_evals": p.bad_evals, "skipped_steps": p.skipped_steps, "lr_scale": p.lr_scale,
                 "rollback_step": p.rollback_step, "rollbacks": p.rollbacks, "nonfinite_streak": p.nonfinite_streak,
                 "clipped_in_window": p.clipped_in_window, "recent_losses": torch.tensor(p.recent_losses, dtype=torch.float64),
                 "rng_cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.progress = Progress(step=int(state["step"]), tokens=int(state["tokens"]),
                                 elapsed_s=float(state["elapsed_s"]), best_val=float(state["best_val"]),
                                 bad_evals=int(state["bad_evals"]), skipped_steps=int(state["skipped_steps"]),
                                 lr_scale=float(state["lr_scale"]), rollback_step=int(state["rollback_step"]),
                                 rollbacks=int(state["rollbacks"]),
                                 nonfinite_streak=int(state["nonfinite_streak"]),
                                 clipped_in_window=int(state["clipped_in_window"]),
                                 recent_losses=state["recent_losses"].tolist())
        torch.set_rng_state(state["rng_cpu"].cpu())
        if "rng_cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng_cuda"].cpu(), self.device)
        self._apply_freeze(self.progress.step)

    def model_state(self) -> dict[str, torch.Tensor]:
        return self.model.trainable_state()

    def load_model_state(self, weights: dict[str, torch.Tensor]) -> None:
        self.model.load_weights(weights)

    def save_checkpoint(self, val_loss: Optional[float] = None) -> Optional[Path]:
        """Rank 0 writes; every process waits until the checkpoint is on disk."""
        path = None
        if self.dist.main:
            meta = {"tokens": self.progress.tokens, "elapsed_s": self.progress.elapsed_s,
                    "config": self.cfg.to_dict(), "tokenizer": self.task.fingerprint(),
                    "world_size": self.dist.world}
            path = self.checkpoints.save(self.progress.step, self.model_state(), self.state_dict(), meta, val_loss)
        distributed.barrier(self.dist)
        return path

    def resume(self) -> bool:
        step = self.checkpoints.latest_good()
        if step is None:
            return False
        weights, state, meta = self.checkpoints.load(step, self.device)
        self.load_model_state(weights)
        self.load_state_dict(state)
        return True

    # -- freezing -----------------------------------------------------------------------------------
    def _apply_freeze(self, step: int) -> None:
        t = self.cfg.train
        if not t.freeze and not t.unfreeze:
            return
        released = [p for s, pats in t.unfreeze.items() if int(s) <= step for p in pats]
        names = [name for name, _ in self.model.named_parameters()]
        if step == 0:
            for key, pats in [("train.freeze", t.freeze)] + [(f"train.unfreeze.{s}", v) for s, v in t.unfreeze.items()]:
                idle = [pat for pat in pats if not any(fnmatch.fnmatch(n, pat) for n in names)]
                if idle:
                    raise ConfigError(f"{key}: {', '.join(repr(p) for p in idle)} matches no parameter of this model "
                                      f"(names look like {names[0]!r}, {names[-1]!r})")
            frozen = [n for n in names if any(fnmatch.fnmatch(n, pat) for pat in t.freeze)]
            for s, pats in t.unfreeze.items():  # releasing what was never frozen does nothing: a slip, said now
                idle = [pat for pat in pats if not any(fnmatch.fnmatch(n, pat) for n in frozen)]
                if idle:
                    raise ConfigError(f"train.unfreeze.{s}: {', '.join(repr(p) for p in idle)} releases no parameter "
                                      f"that train.freeze freezes ({len(frozen)} frozen)")
        for name, p in self.model.named_parameters():
            frozen = any(fnmatch.fnmatch(name, pat) for pat in t.freeze)
            if frozen and any(fnmatch.fnmatch(name, pat) for pat in released):
                frozen = False
            p.requires_grad_(not frozen)
        if not any(p.requires_grad for p in self.model.parameters()):
            raise ConfigError(f"train.freeze freezes every parameter at step {step}: nothing would train; narrow its "
                              f"patterns, or release some at step {step} with train.unfreeze")

    # -- steps ----------------------------------------------------------------------------------------
    def _autocast(self):
        dtype = hardware.autocast_dtype(self.precision)
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def train_step(self, lr: Optional[float] = None) -> dict[str, float]:
        """One optimizer step; `lr` overrides the schedule (the LR range test ramps it itself)."""
        step = self.progress.step
        if step in {int(s) for s in self.cfg.train.unfreeze}:
            self._apply_freeze(step)
        lr = self._set_lr(lr)
        self.model.train()
        total_loss, parts, data_s = self._accumulate(step)
        self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.requires_grad]
        clip = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
        loss_value = float(total_loss)
        # fp16: a finite loss with overflowing gradients is the scaler's to handle (it skips the step and
        # lowers its scale), not a sign of divergence for the guards
        overflow = self.scaler.is_enabled() and math.isfinite(loss_value) and not math.isfinite(grad_norm)
        finite = (math.isfinite(loss_value) and math.isfinite(grad_norm)) or overflow
        spike = finite and not overflow and guards.spikes(self.progress, loss_value, self.cfg.guard)
        before = [p.detach().clone() for p in params] if (step + 1) % self.cfg.train.log_interval == 0 else None
        skipped = overflow or guards.skips(finite, spike, self.cfg.guard)
        if not skipped:
            self.scaler.step(self.optimizer)
        clipped = bool(self.cfg.optim.grad_clip > 0 and finite and not overflow and grad_norm > self.cfg.optim.grad_clip)
        self.progress.clipped_in_window += clipped
        extra = self._update_norms(params, before) if before is not None else {}
        guards.record(self.progress, loss_value, finite, spike or overflow, skipped, self.cfg.guard)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.progress.step += 1
        self.progress.tokens += self.tokens_per_step
        return {"loss": loss_value, "lr": lr, "grad_norm": grad_norm, "clipped": clipped,
                "finite": finite, "spike": spike, "overflow": overflow, "skipped": skipped, "data_s": data_s, **extra,
                "components": {name: float(value) for name, value in parts.items()}}

    def _set_lr(self, lr: Optional[float]) -> float:
        if lr is None:
            lr = self.cfg.optim.lr * self.lr_scale_now() * lr_multiplier(self.cfg.schedule, self.progress.step,
                                                                           self.schedule_total())
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def _accumulate(self, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], float]:
        """Forward and backward over the step's micro-batches: (mean loss over processes, components, data time)."""
        t = self.cfg.train
        total_loss = torch.zeros((), device=self.device)
        parts: dict[str, torch.Tensor] = {}
        data_s = 0.0
        for micro in range(t.grad_accum):
            d0 = time.perf_counter()
            # the global micro-batch is batch_size x world windows; this process takes its slice
            first = ((step * t.grad_accum + micro) * self.dist.world + self.dist.rank) * t.batch_size
            batch = self.task.batch(np.arange(first, first + t.batch_size))
            data_s += time.perf_counter() - d0
            sync = not self.dist.active or micro == t.grad_accum - 1
            with self._autocast(), (contextlib.nullcontext() if sync else self.ddp.no_sync()):
                loss, components = self.task.loss(self.train_forward, batch)
                loss = loss / t.grad_accum
            self.scaler.scale(loss).backward()
            total_loss += loss.detach()
            for name, value in components.items():
                parts[name] = parts.get(name, 0.0) + value.float() / t.grad_accum
        if self.dist.active:  # the loss every process logs and guards on: the mean over processes
            total_loss = distributed.all_reduce(total_loss, self.dist) / self.dist.world
        return total_loss, parts, data_s

    @staticmethod
    @torch.no_grad()
    def _update_norms(params: list[torch.Tensor], before: list[torch.Tensor]) -> dict[str, float]:
        weight_sq = sum(float(p.float().pow(2).sum()) for p in params)
        update_sq = sum(float((p.float() - b.float()).pow(2).sum()) for p, b in zip(params, before))
        return {"weight_norm": math.sqrt(weight_sq), "update_ratio": math.sqrt(update_sq / max(weight_sq, 1e-30))}

    def lr_scale_now(self) -> float:
        """The guards' lr factor: lowered at a rollback, back to 1 over guard.lr_recovery_steps."""
        return guards.lr_scale_now(self.progress, self.cfg.guard)

    def rollback(self, reason: str) -> Optional[int]:
        """Back to the last good checkpoint with a lower learning rate; None when there is none yet."""
        lr_scale = guards.next_lr_scale(self.progress, self.cfg.guard, reason)
        rollbacks = self.progress.rollbacks + 1
        step = self.checkpoints.latest_good()
        elapsed = self.progress.elapsed_s  # time spent stays spent
        scaler = self.scaler.state_dict()  # and so does the fp16 scaler's calibration
        if step is not None:
            weights, state, _ = self.checkpoints.load(step, self.device)
            self.load_model_state(weights)
            self.load_state_dict(state)
            self.scaler.load_state_dict(scaler)
        self.optimizer.zero_grad(set_to_none=True)
        self.progress.lr_scale, self.progress.rollbacks = lr_scale, rollbacks
        self.progress.rollback_step = self.progress.step
        self.progress.nonfinite_streak = 0
        self.progress.elapsed_s = elapsed
        return step

    @torch.no_grad()
    def evaluate(self, tokens: Optional[Any] = None) -> dict[str, float]:
        """The task's validation metrics on its fixed subset (or on `tokens`), summed over processes."""
        self.model.eval()

        def reduce(t: torch.Tensor) -> torch.Tensor:
            return distributed.all_reduce(t.to(self.device), self.dist).cpu() if self.dist.active else t

        try:
            return self.task.evaluate(self.forward, self._autocast, reduce, tokens)
        finally:
            self.model.train()

    def sample(self, n_tokens: int) -> Optional[dict[str, str]]:
        """A generation for samples.jsonl; none from a model whose outputs are no longer finite (a run with its
        guards off that diverged), which the evaluation's loss and the doctor report."""
        try:
            return self.task.sample(self.model, n_tokens)
        except NonFiniteOutput:
            return None

    # -- the loop -------------------------------------------------------------------------------------
    def _install_signal_handlers(self) -> dict:
        def handler(signum, frame):
            self._stop_signal = signum

        old = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                old[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread
                pass
        return old

    def row(self, split: str, **values: Any) -> dict[str, Any]:
        p = self.progress
        return {"step": p.step, "tokens": p.tokens, "elapsed_s": round(p.elapsed_s, 4), "split": split, **values}

    def fit(self, resumed: bool = False) -> dict[str, Any]:
        """Train until a budget is spent, early stopping or the tuner stops it, or a signal arrives."""
        if resumed and self.budget_done():  # resumed at its end: its last evaluation is in the log already
            last = next((r for r in reversed(read_jsonl(self.run_dir / "metrics.jsonl")) if r.get("split") == "val"), None)
            if last is not None and last.get("step") == self.progress.step:
                if self.dist.main:
                    self.log(f"the run already finished at step {self.progress.step} (its budget is spent); raise "
                             f"the budget to train on")
                return {"stop_reason": "budget", "step": self.progress.step, "tokens": self.progress.tokens,
                        "elapsed_s": self.progress.elapsed_s, "val": last, "signal": None}
        sinks = Sinks(self.run_dir, self.total_steps, self.progress.step if resumed else None, self.dist.main)
        if resumed:
            sinks.emit(self.row("event", kind="resume", detail=f"resumed from step {self.progress.step}"))
        self.peak = self.cfg.train.peak_flops or (hardware.peak_flops(self.precision, self.device)
                                                  if self.dist.main else 1.0)
        self.flops_per_token = self.model.flops_per_token()
        old_handlers = self._install_signal_handlers()
        self._last_val: Optional[dict] = None
        stop_reason = "budget"
        try:
            if not resumed and self.progress.step == 0 and self.task.eval_at_start:
                self._evaluate_and_sample(sinks)
            window = Window()
            while not self.budget_done():
                stop_reason = self._one_step(sinks, window)
                if stop_reason:
                    break
            stop_reason = stop_reason or "budget"
            if stop_reason == "budget" and (self._last_val is None or self._last_val.get("step") != self.progress.step):
                self._evaluate_and_sample(sinks)
                self.save_checkpoint(self._last_val["loss"])
        finally:
            for sig, h in old_handlers.items():
                signal.signal(sig, h)
            sinks.close()
        return {"stop_reason": stop_reason, "step": self.progress.step, "tokens": self.progress.tokens,
                "elapsed_s": self.progress.elapsed_s, "val": self._last_val, "signal": self._stop_signal}

    def _one_step(self, sinks: Sinks, window: Window) -> Optional[str]:
        """A step and what follows it: guards, the train row, evaluation, checkpoint, signals. Returns why the
        run stops here, or None."""
        t0 = time.perf_counter()
        out = self.train_step()
        dt = time.perf_counter() - t0
        if self._warm or not self.cfg.train.compile:
            self.progress.elapsed_s += dt  # the first compiled step is warm-up, not training
        self._warm = True
        if self.dist.active:
            self._agree()
        window.tokens += self.tokens_per_step
        if (not out["finite"] or out["spike"]) and self._guard(out, sinks, window):
            return None  # rolled back: the step is undone
        step, at_end = self.progress.step, self.budget_done()
        if step % self.cfg.train.log_interval == 0 or at_end:
            self._write_train_row(out, dt, sinks, window)
        paused = time.perf_counter()  # evaluation and checkpoints stay out of the next row's tokens/s
        stop = self._evaluate_maybe(step, at_end, sinks)
        if stop is None and (step % self.cfg.checkpoint.interval == 0 or at_end):
            self.save_checkpoint(self._val_loss_at(step))
        window.start += time.perf_counter() - paused
        return stop or self._stop_on_signal(step, at_end, sinks)

    def _guard(self, out: dict[str, Any], sinks: Sinks, window: Window) -> bool:
        """A skipped step: say so, and roll back when the guards ask for it (True when it did)."""
        what = "loss spike" if out["spike"] else "non-finite loss or gradient"
        # with guard.skip_nonfinite off the step was applied: say that, not "skipped"
        done = "step skipped" if out["skipped"] else "step applied (guard.skip_nonfinite is off)"
        kind = "spike_skip" if out["spike"] else "nonfinite_skip" if out["skipped"] else "nonfinite_step"
        sinks.emit(self.row("event", kind=kind, detail=f"{what}: loss {out['loss']}, grad_norm {out['grad_norm']}; {done}"))
        sinks.say(f"step {self.progress.step}: {what} (loss {out['loss']:.4g}), {done}")
        if not guards.wants_rollback(self.progress, out["spike"], self.cfg.guard):
            return False
        at = self.progress.step
        try:
            back = self.rollback(f"{what} at step {at}")
        except Diverged as err:  # the guards give up: say so in the metrics, for the doctor
            sinks.emit(self.row("event", kind="diverged", detail=str(err)))
            raise
        if back is not None:
            sinks.rewind(back)
        detail = (f"{what} at step {at}: rolled back to step {back}" if back is not None else
                  f"{what} at step {at}: no checkpoint yet, continuing") + \
            f"; lr x{self.progress.lr_scale:g}, back to the schedule over {self.cfg.guard.lr_recovery_steps} steps"
        sinks.emit(self.row("event", kind="rollback", detail=detail))
        sinks.say(detail)
        window.reset()
        return True

    def _write_train_row(self, out: dict[str, Any], dt: float, sinks: Sinks, window: Window) -> None:
        now = time.perf_counter()
        tokens_per_s = window.rate(now)
        extra = {k: out[k] for k in ("weight_norm", "update_ratio") if k in out}
        extra.update(out["components"])
        row = self.row("train", loss=out["loss"], lr=out["lr"], grad_norm=out["grad_norm"],
                       clipped=out["clipped"], **extra,
                       clip_frac=self.progress.clipped_in_window / self.cfg.train.log_interval,
                       tokens_per_s=tokens_per_s, mfu=tokens_per_s * self.flops_per_token / self.peak,
                       peak_memory_mb=hardware.peak_memory_mb(self.device),
                       data_wait_frac=out["data_s"] / max(dt, 1e-9))
        self.progress.clipped_in_window = 0
        sinks.emit(row)
        sinks.progress(row, self.fraction_done())
        window.reset(now)

    def _val_loss_at(self, step: int) -> Optional[float]:
        return self._last_val["loss"] if self._last_val is not None and self._last_val.get("step") == step else None

    def _evaluate_maybe(self, step: int, at_end: bool, sinks: Sinks) -> Optional[str]:
        """Evaluate on schedule; "pruned" or "early_stop" (with a checkpoint written) when the run stops here."""
        if step % self.cfg.train.eval_interval and not at_end:
            return None
        val_loss = self._evaluate_and_sample(sinks)["loss"]
        if self.on_eval is not None and self.on_eval(step, self._last_val) and not at_end:
            sinks.emit(self.row("event", kind="pruned", detail=f"stopped by the tuner at step {step}"))
            self.save_checkpoint(val_loss)
            return "pruned"
        if self._early_stop_check(val_loss):
            es = self.cfg.early_stopping
            sinks.emit(self.row("event", kind="early_stop", detail=f"no improvement > {es.min_delta} in "
                                f"{es.patience} evaluations; best {self.progress.best_val:.4f}"))
            sinks.say(f"early stopping at step {step}: best val loss {self.progress.best_val:.4f}")
            self.save_checkpoint(val_loss)
            return "early_stop"
        return None

    def _stop_on_signal(self, step: int, at_end: bool, sinks: Sinks) -> Optional[str]:
        """SIGINT or SIGTERM: a checkpoint (unless this step wrote one) and "interrupted"."""
        if self._stop_signal is None:
            return None
        name = signal.Signals(self._stop_signal).name
        if not at_end and step % self.cfg.checkpoint.interval:
            self.save_checkpoint(self._val_loss_at(step))
        sinks.emit(self.row("event", kind="interrupted", detail=f"{name}: checkpoint written at step {step}"))
        sinks.say(f"{name}: checkpoint written at step {step}; continue with --resume")
        return "interrupted"

    def _evaluate_and_sample(self, sinks: Sinks) -> dict:
        t0 = time.perf_counter()
        val = self.evaluate()
        if self.cfg.train.sample_tokens and self.dist.main:
            sample = self.sample(self.cfg.train.sample_tokens)
            if sample is not None:
                sinks.sample({"step": self.progress.step, **sample})
        dt = time.perf_counter() - t0
        if self._eval_warm or not self.cfg.train.compile:
            self.progress.elapsed_s += dt
        self._eval_warm = True
        sinks.emit(self.row("val", **val))
        sinks.console.last_val = val["loss"]
        sinks.say(f"step {self.progress.step:>6} | " + val_summary(val))
        self._last_val = {**val, "step": self.progress.step}
        return self._last_val

    def _agree(self) -> None:
        """Processes share one clock (the slowest) and one stop signal, so they stop on the same step."""
        t = torch.tensor([self.progress.elapsed_s, float(self._stop_signal or 0)], dtype=torch.float64)
        t = distributed.all_reduce(t.to(self.device), self.dist, "max").cpu()
        self.progress.elapsed_s = float(t[0])
        if t[1] > 0 and self._stop_signal is None:
            self._stop_signal = int(t[1])

    def _early_stop_check(self, val_loss: float) -> bool:
        es = self.cfg.early_stopping
        if val_loss < self.progress.best_val - es.min_delta:
            self.progress.best_val = val_loss
            self.progress.bad_evals = 0
            return False
        self.progress.best_val = min(self.progress.best_val, val_loss)
        self.progress.bad_evals += 1
        return es.patience > 0 and self.progress.bad_evals >= es.patience
