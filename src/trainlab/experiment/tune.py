"""trainlab tune: an Optuna study over a search space in YAML.

TPE sampling; a median or Hyperband pruner fed the validation loss at each evaluation; a journal file
in the output directory as the default storage, so several `trainlab tune` processes (on one machine,
or on several sharing a file system or a database URL) work on one study: the total number of
finished trials is capped at --trials across all of them.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import os
import shutil
import socket
from pathlib import Path
from typing import Any, Optional

from trainlab.config import RunConfig, load_yaml, set_dotted
from trainlab.presets import build_config, config_class, resolve
from trainlab.errors import ConfigError
from trainlab.experiment.ablate import BUDGET_KEYS, set_budget
from trainlab.stats import finite_number


def load_space(path: Path) -> dict[str, Any]:
    doc = load_yaml(path)
    params = doc.get("params")
    if not isinstance(params, dict) or not params:
        raise ConfigError(f"{path}: 'params' must map config keys to ranges ({{low, high, log}}) or {{choices: [...]}}")
    for key, spec in params.items():
        if key not in config_class().keys():
            raise ConfigError(f"{path}: {config_class().unknown_key_message(key)}")
        if not isinstance(spec, dict) or not ("choices" in spec or {"low", "high"} <= set(spec)):
            raise ConfigError(f"{path}: '{key}' needs low and high, or choices")
        if "choices" in spec:
            if not isinstance(spec["choices"], list) or not spec["choices"]:
                raise ConfigError(f"{path}: '{key}': choices must be a non-empty list")
            continue
        low, high = spec["low"], spec["high"]
        if not all(finite_number(v) for v in (low, high)):
            raise ConfigError(f"{path}: '{key}': low and high must be finite numbers (got {low!r} and {high!r})")
        if not low < high:
            raise ConfigError(f"{path}: '{key}': low must be below high")
        if spec.get("log") and low <= 0:
            raise ConfigError(f"{path}: '{key}': a log range needs low above 0 (got {low!r})")
    budget = doc.get("budget") or {}
    if budget and (len(budget) != 1 or next(iter(budget)) not in BUDGET_KEYS):
        raise ConfigError(f"{path}: 'budget' must be one of tokens: N, steps: N or seconds: N")
    pruner = doc.get("pruner", "median")
    if pruner not in ("median", "hyperband", "none"):
        raise ConfigError(f"{path}: pruner must be median, hyperband or none")
    return {"params": params, "budget": budget, "pruner": pruner, "study": doc.get("study") or Path(path).stem,
            "set": dict(doc.get("set") or {})}


def suggest(trial, key: str, spec: dict[str, Any]) -> Any:
    if "choices" in spec:
        return trial.suggest_categorical(key, list(spec["choices"]))
    low, high = spec["low"], spec["high"]
    if spec.get("type") == "int" or (isinstance(low, int) and isinstance(high, int) and not spec.get("log")):
        return trial.suggest_int(key, int(low), int(high), log=bool(spec.get("log")))
    return trial.suggest_float(key, float(low), float(high), log=bool(spec.get("log")))


def trial_config(base: dict[str, Any], space: dict[str, Any], values: dict[str, Any]) -> RunConfig:
    tree = copy.deepcopy(base)
    for key, value in {**space["set"], **values}.items():
        set_dotted(tree, key, value)
    if space["budget"]:
        set_budget(tree, *next(iter(space["budget"].items())))
    return build_config(tree)


# the most combinations of the other parameters' values check_space tries for one value
COMBINATIONS = 512


def _candidates(spec: dict[str, Any]) -> list[Any]:
    return list(spec["choices"]) if "choices" in spec else [spec["low"], spec["high"]]


def check_space(base: dict[str, Any], space: dict[str, Any], space_path: Path) -> None:
    """Bad keys or values fail here, before any trial: the space's fixed settings, and every value it can give
    (each choice, each end of a range) that no combination with the other parameters' values makes valid. A
    value valid only beside some others (model.n_head 3 with model.d_model 48, not 64) is the space's to
    give: a trial that draws an invalid combination is pruned and says why."""
    trial_config(base, space, {})
    params = space["params"]
    for key, spec in params.items():
        others = [k for k in params if k != key]
        for value in _candidates(spec):
            combos = itertools.islice(itertools.product(*(_candidates(params[k]) for k in others)), COMBINATIONS)
            first: Optional[ConfigError] = None
            for combo in combos:
                try:
                    trial_config(base, space, {**dict(zip(others, combo)), key: value})
                    break
                except ConfigError as err:
                    first = first or err
            else:
                raise ConfigError(f"{space_path}: '{key}': the value {value!r} makes an invalid config: {first}")


def open_storage(storage: Optional[str], out: Path):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if storage is None or storage.startswith("journal:") or storage.endswith(".log"):
        path = Path(storage[len("journal:"):] if storage and storage.startswith("journal:") else
                    (storage or out / "journal.log"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path))), str(path)
    return optuna.storages.RDBStorage(storage), storage  # e.g. postgresql://user@host/db


def fail_dead_trials(study, store, log) -> None:
    """Trials that a killed process left RUNNING (its pid gone on this host) are marked failed, so the study's
    list does not hold them as running for good; another process's trials, or another host's, are left be."""
    import optuna

    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if t.user_attrs.get("host") == host and isinstance(pid, int) and not _alive(pid):
            store.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
            log(f"trial {t.number}: left running by a process that is gone ({pid}); marked failed")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def tune(space_path: Path, preset: Optional[str], config: Optional[Path], sets: list[str], trials: int,
         storage: Optional[str], out: Path, log=print) -> dict[str, Any]:
    import optuna

    space = load_space(space_path)
    base = resolve(preset or (None if config else "shakespeare-char"), config, sets).to_dict()
    check_space(base, space, space_path)
    study, where = open_study(space, trials, storage, out, log)
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    study.optimize(objective_of(space, base, out, log), n_trials=trials, catch=(),
                   callbacks=[optuna.study.MaxTrialsCallback(trials, states=done)])
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not finished:
        raise ConfigError("no trial finished (all pruned or failed)")
    best = study.best_trial
    best_run = Path(best.user_attrs["run_dir"])
    shutil.copy(best_run / "config.yaml", out / "best.yaml")
    return {"study": space["study"], "storage": where, "best": {"number": best.number, "value": best.value,
            "params": best.params, "run_dir": str(best_run)},
            "trials": [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
                        "pid": t.user_attrs.get("pid")} for t in study.trials]}


def open_study(space: dict[str, Any], trials: int, storage: Optional[str], out: Path, log):
    """(the study, where it is kept): created or loaded, its dead processes' trials marked failed."""
    import optuna

    made = not out.exists()
    try:
        store, where = open_storage(storage, out)
    except Exception as err:  # an unknown scheme, a missing driver, a database that cannot be reached
        if made:
            shutil.rmtree(out, ignore_errors=True)
        raise ConfigError(f"--storage '{storage}' cannot be opened: {str(err).splitlines()[0][:200]}") from None
    out.mkdir(parents=True, exist_ok=True)
    pruner = {"median": optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
              "hyperband": optuna.pruners.HyperbandPruner(), "none": optuna.pruners.NopPruner()}[space["pruner"]]
    # errors only: a failed or interrupted trial is said once, by the objective or the command line
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(study_name=space["study"], storage=store, direction="minimize", load_if_exists=True,
                                sampler=optuna.samplers.TPESampler(n_startup_trials=min(5, trials)), pruner=pruner)
    fail_dead_trials(study, store, log)
    log(f"study '{space['study']}' in {where}: {len(study.trials)} trial(s) so far, up to {trials} in all")
    return study, where


def objective_of(space: dict[str, Any], base: dict[str, Any], out: Path, log):
    """The study's objective: one trial, a run in out/trials/, its final validation loss."""
    import optuna

    from trainlab.train import run as run_mod

    def objective(trial) -> float:
        values = {k: suggest(trial, k, spec) for k, spec in space["params"].items()}
        try:
            cfg = trial_config(base, space, values)
        except ConfigError as err:  # values each valid, together not (check_space): nothing to train
            trial.set_user_attr("invalid", str(err))
            log(f"  trial {trial.number}: {values} -> an invalid combination ({err}); pruned")
            raise optuna.TrialPruned() from None
        run_dir = out / "trials" / f"trial-{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("host", socket.gethostname())

        def report(step: int, val: dict) -> bool:
            trial.report(val["loss"], step)
            return trial.should_prune()

        # the trial's own progress lines would interleave with every other trial's: the study logs one line a trial
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            result = run_mod.train(cfg, run_dir, fresh=True, log=lambda s: None, on_eval=report)
        if result["stop_reason"] == "interrupted":  # Ctrl-C or a kill: the trial is not a result; the study stops
            trial.set_user_attr("interrupted_at", result["step"])
            log(f"  trial {trial.number}: {values} -> interrupted at step {result['step']} (marked failed; the "
                f"study keeps its finished trials: run the same command to go on)")
            raise KeyboardInterrupt
        log(f"  trial {trial.number}: {values} -> val loss {result['val']['loss']:.4f}"
            + (" (pruned)" if result["stop_reason"] == "pruned" else ""))
        if result["stop_reason"] == "pruned":
            raise optuna.TrialPruned()
        return float(result["val"]["loss"])

    return objective
