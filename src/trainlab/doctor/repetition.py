"""Repetition: how much a model's output loops on itself or copies its prompt (seed 001's "parrot").

Text is measured in words (runs of letters or digits, and single punctuation marks), so the numbers
mean the same for a character-level and a BPE model.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

from trainlab.doctor.detectors import Finding

WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def ngrams(seq: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]


def text_stats(prompt: str, output: str, n: int = 3) -> dict[str, float]:
    """repeated: share of the output's n-grams seen earlier in the output; copied: share found in the
    prompt; distinct_2: unique bigrams over bigrams; longest_run: the longest stretch of one word."""
    out, src = words(output), set(ngrams(words(prompt), n))
    grams = ngrams(out, n)
    seen: set = set()
    repeated = 0
    for g in grams:
        repeated += g in seen
        seen.add(g)
    bigrams = ngrams(out, 2)
    run = best = 0
    for i, w in enumerate(out):
        run = run + 1 if i and out[i - 1] == w else 1
        best = max(best, run)
    return {"repeated": repeated / len(grams) if grams else 0.0,
            "copied": sum(g in src for g in grams) / len(grams) if grams else 0.0,
            "distinct_2": len(set(bigrams)) / len(bigrams) if bigrams else 1.0,
            "longest_run": float(best), "words": float(len(out))}


def _mean(rows: list[dict[str, float]], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows) if rows else 0.0


def summarise(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    stats = [text_stats(p, o) for p, o in pairs]
    return {k: _mean(stats, k) for k in ("repeated", "copied", "distinct_2", "longest_run")} | {"n": len(stats)}


def probe_run(run_dir: Path, n_prompts: int = 8, prompt_tokens: int = 48, new_tokens: int = 96,
              seed: int = 0) -> dict[str, Any]:
    """Generate from prompts cut from the validation data: greedily ("plain", where a model's own pull
    towards repeating shows, undiluted by sampling noise) and sampled with a repetition penalty and top-p."""
    import numpy as np
    import torch

    from trainlab.data.prepare import prepare
    from trainlab.models.generate import generate
    from trainlab.inference import load_run

    from trainlab.tasks import task_class

    run = load_run(run_dir)
    if "probe" not in task_class(run.cfg.task).doctor_checks:
        from trainlab.errors import TrainlabError

        raise TrainlabError(f"--probe measures repetition in generated continuations; a {run.cfg.task} run "
                            f"generates none, so drop --probe")
    data_cfg = run.cfg.data.model_copy(update={"tokenizer": str(Path(run_dir) / "tokenizer.json")}) \
        if run.cfg.data.tokenizer == "bpe" else run.cfg.data
    data = prepare(data_cfg, run.cfg.model.seq_len, log=lambda s: None)
    val = np.asarray(data.val)
    prompt_tokens = min(prompt_tokens, run.cfg.model.seq_len // 2)
    span = len(val) - prompt_tokens - 1
    starts = np.linspace(0, max(span, 0), n_prompts).astype(int)
    prompts = [val[s:s + prompt_tokens].astype(np.int64) for s in starts]
    settings = {"plain": dict(temperature=0.0, top_k=0, top_p=1.0, repetition_penalty=1.0),
                "penalised": dict(temperature=0.8, top_k=0, top_p=0.9, repetition_penalty=1.3)}
    result: dict[str, Any] = {"step": run.step, "prompt_tokens": int(prompt_tokens), "new_tokens": new_tokens,
                              "settings": settings}
    examples = []
    for name, kw in settings.items():
        pairs = []
        for i, p in enumerate(prompts):
            x = torch.from_numpy(p)[None]
            new = generate(run.model, x, new_tokens, seed=seed + i, eos_id=run.tokenizer.eos_id, **kw)
            prompt_text, out_text = run.tokenizer.decode(p.tolist()), run.tokenizer.decode(new[0].tolist())
            pairs.append((prompt_text, out_text))
            if name == "plain":
                examples.append({"prompt": prompt_text, "output": out_text} | text_stats(prompt_text, out_text))
        result[name] = summarise(pairs)
    examples.sort(key=lambda e: -(e["repeated"] + e["copied"]))
    result["examples"] = examples
    return result


# a probe counts as repetitive above these shares of repeated (or prompt-copied) word trigrams; natural
# prose of ~100 words repeats well under 10% of its trigrams
HIGH, MEDIUM = 0.35, 0.2


def finding(probe: dict[str, Any]) -> Optional[Finding]:
    plain, pen = probe["plain"], probe["penalised"]
    score = max(plain["repeated"], plain["copied"])
    if score < MEDIUM:
        return None
    ex = probe["examples"][0]
    evidence = (f"on {plain['n']} prompts from the validation data, {plain['repeated']:.0%} of the generated word "
                f"trigrams repeat earlier ones and {plain['copied']:.0%} copy the prompt (distinct-2 "
                f"{plain['distinct_2']:.2f}, longest run of one word {plain['longest_run']:.0f}); with repetition "
                f"penalty 1.3 and top-p 0.9: {pen['repeated']:.0%} repeated, {pen['copied']:.0%} copied. "
                f"Example: {ex['output'][:120]!r}")
    helped = pen["repeated"] < 0.5 * plain["repeated"]
    rec = ("The model loops instead of continuing: it has not learned enough to predict what comes next, so the "
           "likeliest tokens are the ones it just saw. Train longer (and with warmup) first; ")
    rec += ("a repetition penalty hides it at generation time (it helped here)." if helped else
            "a repetition penalty did not fix it here, so the cause is the training, not the sampling.")
    return Finding("repetition", "high" if score >= HIGH else "medium", evidence, rec,
                   {}, {"examples": probe["examples"][:3]})


def finding_from_samples(samples: list[dict[str, Any]]) -> Optional[Finding]:
    """Without --probe: the periodic samples the run wrote (only the last evaluation's)."""
    if not samples:
        return None
    last_step = max(s.get("step", 0) for s in samples)
    last = [s for s in samples if s.get("step", 0) == last_step and isinstance(s.get("text"), str)]
    pairs = [(s.get("prompt", ""), s["text"]) for s in last]
    if not pairs or sum(len(words(t)) for _, t in pairs) < 15:
        return None
    stats = summarise(pairs)
    score = max(stats["repeated"], stats["copied"])
    if score < MEDIUM:
        return None
    return Finding("repetition", "medium",
                   f"the samples written at step {last_step} repeat {stats['repeated']:.0%} of their word trigrams "
                   f"and copy {stats['copied']:.0%} from the prompt: {pairs[0][1][:120]!r}.",
                   "Run `trainlab doctor RUN --probe` to measure it on validation prompts; a model that loops is "
                   "usually undertrained.", {}, {"examples": [{"prompt": p, "output": o} for p, o in pairs[:3]]})
