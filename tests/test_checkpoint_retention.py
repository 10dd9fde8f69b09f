"""Which checkpoints a run keeps: the newest checkpoint.keep_last, the checkpoint.save_top_k lowest in
validation loss, and whatever `best` (lowest validation loss) and `last` (newest) point at."""

from __future__ import annotations

import os

import pytest

from trainlab.presets import resolve
from trainlab.train import run as run_mod
from trainlab.train.checkpoint import CheckpointManager
from trainlab.train.trainer import Trainer

# the validation loss reported at each evaluation (every 5 steps; checkpoints too): best at 20, next at 10
VAL = {5: 4.0, 10: 2.5, 15: 3.0, 20: 2.0, 25: 3.5, 30: 3.2, 35: 3.1}


@pytest.mark.parametrize("keep_last,top_k,kept", [
    (2, 2, {10, 20, 30, 35}),
    (1, 1, {20, 35}),
    (3, 0, {20, 25, 30, 35}),  # no top-k, but the best link's target stays
    (1, 3, {10, 15, 20, 35}),
])
def test_kept_checkpoints_and_links(tmp_path, monkeypatch, keep_last, top_k, kept):
    evaluate = Trainer.evaluate

    def scripted(self, tokens=None):
        val = evaluate(self, tokens)
        return {**val, "loss": VAL[self.progress.step]}

    monkeypatch.setattr(Trainer, "evaluate", scripted)
    cfg = resolve("tiny", overrides=["train.max_steps=35", "train.eval_interval=5", "checkpoint.interval=5",
                                     f"checkpoint.keep_last={keep_last}", f"checkpoint.save_top_k={top_k}",
                                     "train.sample_tokens=0"])
    run_mod.train(cfg, tmp_path / "run", log=lambda s: None)
    root = tmp_path / "run" / "checkpoints"
    folders = {p.name for p in root.iterdir() if not p.is_symlink()}
    assert folders == {f"step-{s:08d}" for s in kept}  # and no temporary folders left
    assert os.readlink(root / "best") == "step-00000020"
    assert os.readlink(root / "last") == "step-00000035"
    manager = CheckpointManager(root, log=lambda s: None)
    assert manager.best_meta()["val_loss"] == 2.0
    assert all(manager.verify(s) is None for s in kept)
    assert manager.best_or_latest() == 20 and manager.latest_good() == 35
