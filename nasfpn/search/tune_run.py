"""The Ray Tune run of a search: local Ray or a cluster, the searcher behind a concurrency
limit, ASHA, retries, and a callback that keeps the ledger and prints a compact progress view."""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Dict, List

from ..genotype import Genotype
from .config import SearchConfig
from .driver import ledger_entry, list_runs, quiet_ray_loggers, save_state, trained_hash
from .ledger import Ledger
from .trainable import proxy_trial

log = logging.getLogger(__name__)
TOKEN_HINT = ("if the cluster uses token authentication, copy its ~/.ray/auth_token to this machine or set "
              "RAY_AUTH_TOKEN")


def connect_ray(address: str | None, num_cpus: int | None, verbose: bool) -> str:
    """A private local Ray bound to 127.0.0.1, or the cluster at ``address``; returns a line
    saying which, for the progress view."""
    import os

    import ray

    level = "INFO" if verbose else "ERROR"
    if not address:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=verbose,
                 logging_level=level, _node_ip_address="127.0.0.1")
        return f"Ray: local, {ray.cluster_resources().get('CPU', 0):g} CPU"
    try:
        ray.init(address=address, log_to_driver=verbose, logging_level=level)
    except ConnectionError as error:
        raise RuntimeError(f"ray.address {address!r}: {error}; {TOKEN_HINT}") from None

    # A driver whose authentication mode differs from the cluster's connects fine, and then
    # every trial dies "cancelled before it started": find out now, with one tiny actor.
    @ray.remote(num_cpus=0)
    class Probe:
        def ping(self) -> bool:
            return True

    try:
        ray.get(Probe.remote().ping.remote(), timeout=120)
    except Exception as error:  # noqa: BLE001 - any failure here means the same to the user
        mode = os.environ.get("RAY_AUTH_MODE", "disabled")
        ray.shutdown()
        detail = (str(error).strip().splitlines() or [""])[0][:200]
        raise RuntimeError(f"ray.address {address!r}: connected, but the cluster cannot run this driver's actors "
                           f"({type(error).__name__}: {detail}); the usual cause is an authentication mode that "
                           f"differs from the cluster's: this driver's RAY_AUTH_MODE is {mode!r}; set the cluster's "
                           f"(RAY_AUTH_MODE=token or disabled) and try again") from None
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    resources = ray.cluster_resources()
    return (f"Ray: cluster at {address}, {len(nodes)} node(s), {resources.get('CPU', 0):g} CPU, "
            f"{resources.get('GPU', 0):g} GPU")


def run_tune(config: SearchConfig, out: Path, task_spec: Dict[str, Any], controller, ledger: Ledger,
             baselines: List[Genotype], forced: List[Genotype], state_path: Path, *, verbose: bool = False) -> None:
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter

    from ..controllers.tune import NASSearcher

    quiet_ray_loggers(verbose)

    budget = config.search.trials
    remaining = budget - len(ledger)
    resources = config.resources
    print(connect_ray(config.ray.address, config.ray.num_cpus, verbose), flush=True)
    try:
        available = ray.cluster_resources()
        # A trial asking for more than the cluster has would wait forever without a word.
        if resources.cpus_per_trial > available.get("CPU", 0) or resources.gpus_per_trial > available.get("GPU", 0):
            raise ValueError(f"resources: a trial asks for {resources.cpus_per_trial} CPU / {resources.gpus_per_trial} "
                             f"GPU but the cluster has {available.get('CPU', 0):g} CPU / {available.get('GPU', 0):g} GPU")
        baseline_names = {g.hash(): name for g, name in zip(baselines, config.search.baselines)}

        class LedgerSearcher(NASSearcher):
            """A topology already in the ledger is answered from it, never trained again; the
            ``forced`` genotypes (baselines lost in flight by a killed driver) run first, and the
            controller learns of them by ``record``."""

            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                self.forced = list(forced)
                self.forced_trials: Dict[str, Genotype] = {}

            def suggest(self, trial_id):
                if self.forced and (self.max_trials is None or self.suggested < self.max_trials):
                    genotype = self.forced.pop(0)
                    self.suggested += 1
                    self.forced_trials[trial_id] = genotype
                    return {"genotype": genotype.to_dict(), "hash": genotype.hash(),
                            "trained_hash": trained_hash(genotype, config.proxy),
                            "baseline": baseline_names.get(genotype.hash())}
                suggestion = super().suggest(trial_id)
                if isinstance(suggestion, dict):
                    suggestion["baseline"] = baseline_names.get(suggestion["hash"])
                    suggestion["trained_hash"] = trained_hash(Genotype.from_dict(suggestion["genotype"]), config.proxy)
                    known = ledger.find(suggestion["hash"], suggestion["trained_hash"])
                    if known is not None:
                        suggestion["known"] = {k: v for k, v in known.items() if k not in ("genotype", "trial")}
                return suggestion

            def on_trial_complete(self, trial_id, result=None, error=False):
                genotype = self.forced_trials.pop(trial_id, None)
                if genotype is None:
                    return super().on_trial_complete(trial_id, result, error)
                value = None if error or not result else result.get("reward")
                self.controller.record(genotype, value)

        searcher = LedgerSearcher(controller, metric="reward", mode="max", max_trials=remaining)
        proxy = config.proxy
        evals = max(1, math.ceil(proxy.steps / proxy.eval_every)) if proxy.eval_every else 1
        if config.scheduler.name == "asha" and evals > 1:
            class BaselinesRunToTheEnd(ASHAScheduler):
                """ASHA, except that a baseline is never stopped early: it is the yardstick, so
                its AP must come from the full recipe (its results still set the rungs)."""

                def on_trial_result(self, tune_controller, trial, result):
                    decision = super().on_trial_result(tune_controller, trial, result)
                    if trial.config.get("baseline") and result.get("training_iteration", 0) < evals:
                        return self.CONTINUE
                    return decision

            scheduler = BaselinesRunToTheEnd(metric="reward", mode="max", time_attr="training_iteration", max_t=evals,
                                             grace_period=min(config.scheduler.grace_evals, evals),
                                             reduction_factor=config.scheduler.reduction_factor)
        else:
            scheduler = FIFOScheduler()
        setup = {"task": task_spec, "proxy": {k: v for k, v in vars(proxy).items() if k != "threads"},
                 "reward": {"target_macs": config.reward.target_macs, "weight": config.reward.weight},
                 "cpus": resources.cpus_per_trial}
        trainable = tune.with_resources(tune.with_parameters(proxy_trial, setup=setup),
                                        {"cpu": resources.cpus_per_trial, "gpu": resources.gpus_per_trial})
        progress = LedgerCallback(ledger, controller, state_path, budget,
                                  baseline_names,
                                  _controller_label(config))
        run = f"run-{len(list_runs(out)) + 1}"
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, max_concurrent=config.search.concurrent),
                                        scheduler=scheduler, num_samples=-1, reuse_actors=True,
                                        trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
            run_config=tune.RunConfig(name=run, storage_path=str(out / "tune"), verbose=2 if verbose else 0,
                                      callbacks=[progress],
                                      failure_config=tune.FailureConfig(max_failures=config.search.retries)),
        )
        tuner.fit()
    finally:
        ray.shutdown()


def _trial_name(trial) -> str:
    """``trial-<tune id>-<genotype hash>``: short, and findable from the ledger."""
    return f"trial-{trial.trial_id}-{str(trial.config.get('hash', ''))[:8]}"


def _controller_label(config: SearchConfig) -> str:
    spec = config.controller
    return str(spec.get("name", spec.get("controller"))) if isinstance(spec, dict) else Path(str(spec)).stem


def _tune_callback_base():
    from ray.tune import Callback
    return Callback


class LedgerCallback(_tune_callback_base()):
    """Appends each finished trial to the ledger (and saves the controller) the moment the driver
    hears of it, and prints one progress line per event."""

    def __init__(self, ledger: Ledger, controller, state_path: Path, budget: int, baselines: Dict[str, str],
                 controller_name: str):
        self.ledger, self.controller, self.state_path = ledger, controller, state_path
        self.budget, self.baselines, self.controller_name = budget, baselines, controller_name
        self.running = 0
        self.start = time.time()
        self.done_at_start = len(ledger)

    def on_step_end(self, iteration, trials, **info):
        self.running = sum(t.status == "RUNNING" for t in trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = dict(trial.last_result or {})
        status = "ok" if result.get("final") else "stopped"
        self._count_running(trials, trial)
        self._finish(trial, result, status, None)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._count_running(trials, trial)
        self._finish(trial, dict(trial.last_result or {}), "failed", _error_text(trial))

    def _count_running(self, trials, finished) -> None:
        # Tune still calls the finishing trial RUNNING here.
        self.running = sum(t.status == "RUNNING" and t is not finished for t in trials)

    def _finish(self, trial, result: Dict[str, Any], status: str, error) -> None:
        config = trial.config
        if "hash" not in config:
            return
        failures = getattr(trial, "num_failures", 0)  # an errored trial's count includes its last failure
        entry = ledger_entry(len(self.ledger) + 1, config, result, status, error, self.baselines,
                             self.controller_name, failures if status == "failed" else failures + 1)
        self.ledger.append(entry)
        save_state(self.controller, self.state_path)
        self._print(entry)

    def _print(self, entry: Dict[str, Any]) -> None:
        done = len(self.ledger)
        finished = [e for e in self.ledger if e["status"] != "failed"]
        best = max(finished, key=lambda e: e["reward"]) if finished else None
        elapsed = time.time() - self.start
        new = done - self.done_at_start
        eta = elapsed / new * (self.budget - done) if new else float("nan")
        name = entry.get("baseline") or entry["hash"][:8]
        what = f"failed ({str(entry['error'])[:60]})" if entry["status"] == "failed" else \
            f"AP {entry['ap']:.3f}" + (" (stopped early)" if entry["status"] == "stopped" else "")
        best_text = f"best {best['reward']:.3f} {best.get('baseline') or best['hash'][:8]}" if best else "best -"
        print(f"[{done}/{self.budget}] {self.running} running | {name}: {what} | {best_text} | "
              f"{_clock(elapsed)} elapsed, ~{_clock(eta)} left", flush=True)


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
