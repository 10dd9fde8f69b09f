"""trainlab export --format hf: transformers loads the directory and computes the same logits, and greedy
generation picks the same tokens."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import cli


@pytest.mark.parametrize("qk_norm,model_type", [(False, "llama"), (True, "qwen3")])
def test_exported_causal_lm_matches_in_transformers(tmp_path, qk_norm, model_type):
    import transformers

    from trainlab.models.generate import generate
    from trainlab.inference import load_run

    run, out = tmp_path / "run", tmp_path / "hf"
    cli("train", "--preset", "tiny", "--set", "train.max_steps=30", "--set", f"model.qk_norm={qk_norm}",
        "--run-dir", str(run))
    cli("export", str(run), "--format", "hf", "--out", str(out))
    assert json.loads((out / "config.json").read_text())["model_type"] == model_type
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    ours = load_run(run)
    x = torch.tensor([list(ours.tokenizer.encode("ROMEO:\nWhat light through yonder"))], dtype=torch.long)
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, ours.model(x), rtol=1e-4, atol=1e-4)  # fp32
        theirs = hf.generate(x, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    mine = generate(ours.model, x, 12, temperature=0.0)
    assert theirs[0, x.shape[1]:].tolist() == mine[0].tolist()


def test_export_refuses_a_non_empty_directory(tmp_path):
    run, out = tmp_path / "run", tmp_path / "hf"
    cli("train", "--preset", "tiny", "--set", "train.max_steps=10", "--run-dir", str(run))
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = cli("export", str(run), "--out", str(out), check=False)
    assert proc.returncode == 2 and "is not empty" in proc.stderr
    assert (out / "keep.txt").read_text() == "mine" and len(list(out.iterdir())) == 1


@pytest.mark.parametrize("qk_norm", [False, True])
def test_init_from_an_exported_transformers_directory(tmp_path, qk_norm):
    """The other way: a new run starts from a Llama (or Qwen3) directory's weights (here one trainlab exported)."""
    from trainlab.models.hf import load_transformers_dir
    from trainlab.inference import load_run

    run, out, new = tmp_path / "run", tmp_path / "hf", tmp_path / "new"
    qk = ["--set", f"model.qk_norm={qk_norm}"]
    cli("train", "--preset", "tiny", "--set", "train.max_steps=20", *qk, "--run-dir", str(run))
    cli("export", str(run), "--out", str(out))
    weights = load_transformers_dir(out)
    original = load_run(run).model.state_dict()
    assert set(weights) == set(original) - ({"lm_head.weight"} if load_run(run).cfg.model.tie_embeddings else set())
    for k, v in weights.items():
        assert torch.equal(v, original[k]), k
    mismatch = cli("train", "--preset", "tiny", "--set", f"init_from={out}", "--set", f"model.qk_norm={not qk_norm}",
                   "--run-dir", str(tmp_path / "mismatch"), check=False)
    assert mismatch.returncode == 2 and f"set model.qk_norm={str(qk_norm).lower()}" in mismatch.stderr
    assert not (tmp_path / "mismatch").exists()
    cli("train", "--preset", "tiny", "--set", f"init_from={out}", *qk, "--set", "train.max_steps=1",
        "--set", "optim.lr=1e-12", "--set", "train.eval_interval=1", "--run-dir", str(new))
    rows = [json.loads(x) for x in (new / "metrics.jsonl").read_text().splitlines()]
    first_val = next(r for r in rows if r["split"] == "val")
    base = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    last_val = [r for r in base if r["split"] == "val"][-1]
    assert first_val["loss"] == pytest.approx(last_val["loss"], abs=1e-4)  # starts where the source ended
