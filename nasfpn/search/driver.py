"""``nasfpn search``: the controller proposes, Ray Tune trains proxies, the ledger remembers.

The driver prepares the task once (backbone warm-up, feature caches), builds the controller and
its Tune ``Searcher``, and runs Tune with a concurrency limit, ASHA on the intermediate AP and a
retry budget for crashed trials. Every finished trial is appended to the ledger and the
controller's state saved beside it at once; ``--resume`` reads both back, so a driver killed at
any moment loses no finished trial, trains none twice, and ends with exactly the budget.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import yaml

from ..genotype import Genotype, load_genotype
from ..space import load_space
from ..task import prepare_task
from ..train import precision_name, proxy_device, proxy_genotype
from .config import SearchConfig, search_config
from .ledger import Ledger

log = logging.getLogger(__name__)


def ray_environment(verbose: bool, address: str | None) -> None:
    """Set before ``import ray``: Ray's own output off by default, no usage statistics, and
    token authentication towards a cluster given by HOST:PORT (see :func:`cluster_auth_environment`)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "0")
    if not verbose:
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "1000")
    cluster_auth_environment(address)


def cluster_auth_environment(address: str | None) -> None:
    """Before ``import ray``: Ray sends a cluster its token by itself only for address "auto";
    with HOST:PORT only when told, and the head then refuses us after half a minute of retries."""
    if address and address != "auto" and "RAY_AUTH_MODE" not in os.environ and auth_token_available():
        os.environ["RAY_AUTH_MODE"] = "token"


def auth_token_available() -> bool:
    """Whether this machine holds a Ray auth token where Ray looks for one."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token"
    return Path(path).is_file()


def quiet_ray_loggers(verbose: bool) -> None:
    """After ``import ray`` (which sets its loggers up): its driver-side notices, such as that
    its default token authentication is on, only with ``--verbose``."""
    if not verbose:
        logging.getLogger("ray").setLevel(logging.ERROR)


def run_search(config: SearchConfig, out: str | Path, *, resume: bool = False, verbose: bool = False) -> Path:
    """Run (or resume) a search into the experiment folder ``out``; return the leaderboard path."""
    out = Path(out).resolve()
    if resume:
        config = search_config(yaml.safe_load((out / "config.yaml").read_text()))
    elif (out / "ledger.jsonl").exists():
        raise ValueError(f"{out} already holds a search; resume it with --resume {out} or pick another --out")
    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        _atomic_write(out / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    ledger = Ledger(out / "ledger.jsonl")
    budget = config.search.trials
    if len(ledger) >= budget:
        log.warning("%s: all %d trials are done", out, budget)
        from .report import build_report
        return build_report(out)

    proxy = config.proxy
    started = time.time()
    task = prepare_task(config.data, config.backbone, proxy)
    space = load_space(config.space)
    # As the proxy trains them (its width, at most its repeats), so the ledger holds what was trained.
    baselines = [proxy_genotype(load_genotype(name).replace(width=proxy.width), proxy)
                 for name in config.search.baselines]
    controller = _controller(config, space, baselines)
    state_path = out / "controller.pt"
    queued = {g.hash() for g in baselines}
    if resume and state_path.is_file():
        state = torch.load(state_path, weights_only=True)
        controller.load_state_dict(state)
        for trial_id in state["pending"]:
            controller.tell(trial_id, None)  # in flight when the driver died: dropped, may be proposed again
        queued = {Genotype.from_dict(g).hash() for g in state["warm"]}
    for entry in ledger:  # finished after the last controller save (a kill in between)
        if entry["status"] != "failed" and controller.known_reward(entry["hash"]) is None:
            controller.record(Genotype.from_dict(entry["genotype"]), entry["reward"])
    # Baselines the controller already handed out but that never finished are run first.
    tried = {entry["hash"] for entry in ledger}
    forced = [g for g in baselines if g.hash() not in tried and g.hash() not in queued]
    _atomic_write(out / "experiment.json", json.dumps({
        "name": out.name, "trials": budget, "channels": {str(k): v for k, v in task.channels.items()},
        "width": proxy.width, "image_size": proxy.image_size, "backbone": config.backbone.name,
        "backbone_weights": task.backbone_weights, "space": config.space, "controller": _controller_name(config),
        "recipe": f"{proxy.steps} steps of batch {proxy.batch_size} at {proxy.image_size} px, width {proxy.width}, "
                  f"{proxy.optimizer} lr {proxy.lr}, seed {proxy.seed}, {precision_name(proxy.amp, proxy_device())}, "
                  f"{_repeats_phrase(proxy.max_repeats)}, "
                  f"backbone {config.backbone.name} "
                  f"({'frozen' if config.backbone.freeze else 'trained'})",
        "train_images": len(task.train), "val_images": len(task.val)}, indent=1))
    log.warning("prepared in %.0f s: %d train / %d val images, backbone weights %s", time.time() - started,
                len(task.train), len(task.val), task.backbone_weights)

    ray_environment(verbose, config.ray.address)
    from .tune_run import run_tune
    run_tune(config, out, task.spec, controller, ledger, baselines, forced, state_path, verbose=verbose)
    from .report import build_report
    return build_report(out)


def _controller(config: SearchConfig, space, baselines):
    from ..controllers import make_controller

    spec = config.controller
    if isinstance(spec, dict):
        spec = {"controller": spec.get("name", spec.get("controller")), **{k: v for k, v in spec.items() if k != "name"}}
    return make_controller(space, spec, seed=config.search.seed, warm_start=baselines)


def _controller_name(config: SearchConfig) -> str:
    spec = config.controller
    if isinstance(spec, dict):
        return str(spec.get("name", spec.get("controller")))
    return Path(str(spec)).stem


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def save_state(controller, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".controller.")
    os.close(fd)
    torch.save(controller.state_dict(), tmp)
    os.replace(tmp, path)


def ledger_entry(trial_number: int, config: Dict[str, Any], result: Optional[Dict[str, Any]], status: str,
                 error: Optional[str], baselines: Dict[str, str], controller_name: str, attempts: int) -> Dict[str, Any]:
    """One ledger line: the genotype and its hash, what it scored, how it ended."""
    result = result or {}
    keys = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "params", "macs", "steps", "seconds",
            "train_seconds", "eval_seconds", "final_loss", "proxy_repeats", "precision")
    return {"trial": trial_number, "hash": config["hash"], "genotype": config["genotype"], "status": status,
            "reward": float(result.get("reward", 0.0)) if status != "failed" else 0.0,
            **{k: result.get(k) for k in keys if k in result}, "ap": float(result.get("ap", 0.0)),
            "baseline": baselines.get(config["hash"]), "controller": controller_name, "error": error,
            "trained_hash": config.get("trained_hash"),
            "attempts": attempts, "answered_from_ledger": bool(result.get("answered_from_ledger")),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S")}


def trained_hash(genotype: Genotype, proxy) -> str:
    """The hash of the neck the proxy really trains for ``genotype`` (at the proxy's width and
    repeat cap): genotypes that differ only in what the proxy overrides cost one training."""
    return proxy_genotype(genotype.replace(width=proxy.width), proxy).hash()


def list_runs(out: Path) -> List[Path]:
    return sorted((out / "tune").glob("run-*")) if (out / "tune").is_dir() else []


def _repeats_phrase(max_repeats: Optional[int]) -> str:
    if max_repeats is None:
        return "full repeats"
    return "one cell of each neck" if max_repeats == 1 else f"at most {max_repeats} repeats"
