"""The Ray Tune run of one phase of a search: the pipeline of stages behind a Tune ``Searcher``
and a concurrency limit, ASHA (never stopping a baseline), retries, and a callback that turns
each finished Tune trial into a :class:`TrialRecord` for the pipeline (which writes the ledger)
and prints a compact progress line. The only search module besides :mod:`.connect` and
:mod:`.trainable` that imports Ray."""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

from ray import tune
from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher

from .records import Candidate, TrialRecord
from .stages import Pipeline
from .trainable import proxy_trial

log = logging.getLogger(__name__)


class PipelineSearcher(Searcher):
    """Tune's view of a :class:`Pipeline`: ``suggest`` asks it (candidates it can answer from
    the ledger never become Tune trials); results reach it through :class:`LedgerCallback`,
    which sees the trial's error and attempts."""

    def __init__(self, pipeline: Pipeline):
        super().__init__(metric="reward", mode="max")
        self.pipeline = pipeline

    def suggest(self, trial_id: str) -> Optional[Dict[str, Any]] | str:
        candidate = self.pipeline.ask()
        if candidate is not None:
            return candidate.to_config()
        return Searcher.FINISHED if self.pipeline.finished else None

    def on_trial_complete(self, trial_id: str, result: Optional[Dict] = None, error: bool = False) -> None:
        pass  # the callback tells the pipeline


class BaselinesRunToTheEnd(ASHAScheduler):
    """ASHA, except that a baseline is never stopped early: it is the yardstick, so its AP must
    come from the full recipe (its results still set the rungs)."""

    def __init__(self, *, evals: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.evals = evals

    def on_trial_result(self, tune_controller, trial, result):
        decision = super().on_trial_result(tune_controller, trial, result)
        if trial.config.get("baseline") and result.get("training_iteration", 0) < self.evals:
            return self.CONTINUE
        return decision


class LedgerCallback(Callback):
    """Each finished trial becomes a record (the pipeline writes and fsyncs it at once) and one
    progress line: ``[7/16] 2 running | 4eddfd2a: AP 0.061 | best 0.064 panet | 3:12 elapsed, ~3:40 left``."""

    def __init__(self, pipeline: Pipeline, total: int, controller_name: str, phase: str, done: Callable[[], int]):
        self.pipeline, self.total, self.controller_name, self.phase = pipeline, total, controller_name, phase
        self._done = done  # trials of this phase finished so far (out of ``total``)
        self.running = 0
        self.start = time.time()
        self.done_at_start = done()
        self.curves: Dict[str, list] = {}  # Tune trial id -> [[steps, AP], ...] of its evaluations so far

    def on_step_end(self, iteration, trials, **info):
        self.running = sum(t.status == "RUNNING" for t in trials)

    def on_trial_start(self, iteration, trials, trial, **info):
        self.curves.pop(trial.trial_id, None)  # a retried trial starts its curve again

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if not result.get("final") and "ap" in result:
            self.curves.setdefault(trial.trial_id, []).append([int(result.get("steps", 0)), float(result["ap"])])

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = dict(trial.last_result or {})
        self._finish(trials, trial, result, "ok" if result.get("final") else "stopped", None)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trials, trial, dict(trial.last_result or {}), "failed", _error_text(trial))

    def _finish(self, trials, trial, result: Dict[str, Any], status: str, error: Optional[str]) -> None:
        # Tune still calls the finishing trial RUNNING here.
        self.running = sum(t.status == "RUNNING" and t is not trial for t in trials)
        failures = getattr(trial, "num_failures", 0)  # an errored trial's count includes its last failure
        candidate = Candidate.from_config(trial.config)
        result["curve"] = self.curves.pop(trial.trial_id, None)
        record = TrialRecord.finished(self.pipeline.ledger.next_trial(), candidate, status, result,
                                      attempts=failures if status == "failed" else failures + 1, error=error,
                                      node=result.get("node"), controller=self.controller_name)
        self.pipeline.finish(candidate, record)

    def print_record(self, record: TrialRecord) -> None:
        ledger = self.pipeline.ledger
        done = self._done()
        elapsed = time.time() - self.start
        new = done - self.done_at_start
        eta = elapsed / new * (self.total - done) if new else float("nan")
        c = record.candidate
        name = c.label + (f" seed {c.seed}" if self.phase == "confirm" else "")
        if record.status == "failed":
            what = f"failed ({str(record.error)[:60]})"
        else:
            what = f"AP {record.ap:.3f}" + (" (stopped early)" if record.status == "stopped" else "") + \
                (" (from the ledger)" if record.answered_from_ledger else "")
        finished = [r for r in ledger if r.status != "failed" and r.candidate.stage != "confirm"]
        best = max(finished, key=lambda r: r.reward, default=None)
        best_text = f"best {best.reward:.3f} {best.candidate.label}" if best and self.phase != "confirm" else ""
        print(f"[{self.phase} {done}/{self.total}] {self.running} running | {name}: {what}"
              + (f" | {best_text}" if best_text else "") + f" | {_clock(elapsed)} elapsed, ~{_clock(eta)} left",
              flush=True)


def run_phase(pipeline: Pipeline, callback: LedgerCallback, *, out: Path, setup: Mapping[str, Any],
              concurrent: int, retries: int, cpus: float, gpus: float, scheduler: Optional[Mapping[str, int]],
              verbose: bool = False) -> None:
    """Run Tune until the pipeline is finished. ``scheduler``: ASHA's ``evals``, ``grace_evals``
    and ``reduction_factor``, or ``None`` for first-in-first-out."""
    if scheduler:
        evals = scheduler["evals"]
        chosen = BaselinesRunToTheEnd(evals=evals, metric="reward", mode="max", time_attr="training_iteration",
                                      max_t=evals, grace_period=min(scheduler["grace_evals"], evals),
                                      reduction_factor=scheduler["reduction_factor"])
    else:
        chosen = FIFOScheduler()
    trainable = tune.with_resources(tune.with_parameters(proxy_trial, setup=dict(setup)), {"cpu": cpus, "gpu": gpus})
    runs = sorted((out / "tune").glob("run-*")) if (out / "tune").is_dir() else []
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(PipelineSearcher(pipeline), max_concurrent=concurrent),
                                    scheduler=chosen, num_samples=-1, reuse_actors=True,
                                    trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
        run_config=tune.RunConfig(name=f"run-{len(runs) + 1}", storage_path=str(out / "tune"),
                                  verbose=2 if verbose else 0, callbacks=[callback],
                                  failure_config=tune.FailureConfig(max_failures=retries)),
    )
    tuner.fit()


def _trial_name(trial) -> str:
    """``trial-<tune id>-<genotype hash>``: short, and findable from the ledger."""
    return f"trial-{trial.trial_id}-{str(trial.config.get('hash', ''))[:8]}"


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


def _error_text(trial) -> str:
    path = getattr(trial, "error_file", None)
    if path and Path(path).is_file():
        lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
        return lines[-1][:500] if lines else "error"
    return str(getattr(trial, "error_msg", None) or "error")
