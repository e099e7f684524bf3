"""``nasfpn search`` and ``nasfpn confirm``: the stages propose, Ray Tune trains proxies, the
ledger remembers.

The driver validates everything and checks a cluster address before it writes anything, takes
the experiment folder's lock, prepares the task once (backbone warm-up, feature caches), and
runs two phases over one ledger: the search (baselines first, then the controller's proposals,
ASHA on the intermediate AP) up to its trial budget, then the confirmation (the finalists and
the baselines over several seeds under the confirmation recipe). Every finished trial is
appended to the ledger and the controller's state saved beside it at once; ``--resume`` reads
both back, so a driver killed at any moment loses no finished trial, trains none twice, and
ends with exactly the budget.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import torch

from ..detectors import TWO_STAGE
from ..fsio import atomic_torch_save, atomic_write_text, read_json, read_yaml
from ..genotype import load_genotype
from ..space import load_space
from ..data.split import MIN_VAL_IMAGES
from ..task import DataConfig, prepare_task, resolved_val_fraction, task_problem
from ..train import ProxyConfig, precision_name, proxy_device, proxy_genotype
from .config import SearchConfig, search_config
from .confirm import confirm_proxy, plan, recipe_name
from .connect import check_address
from .ledger import Ledger
from .lock import FolderLock
from .records import SEARCH, Candidate, TrialRecord
from .stages import Baselines, Confirmation, ControllerStage, Pipeline, Seeds

log = logging.getLogger(__name__)


def run_search(config: Optional[SearchConfig], out: str | Path, *, resume: bool = False, confirm_only: bool = False,
               confirm: Optional[Dict[str, Any]] = None, verbose: bool = False) -> Path:
    """Run, resume (``resume``) or confirm/extend the confirmation of (``confirm_only``, with
    ``confirm`` overriding the folder's confirm section) the search in ``out``; return the
    leaderboard's path.

    Raises:
        ValueError: a bad configuration, address or folder (nothing is written then).
    """
    out = Path(out).resolve()
    if resume or confirm_only:
        needed = ["config.yaml"] + (["ledger.jsonl"] if confirm_only else [])
        missing = [name for name in needed if not (out / name).is_file()]
        if missing:
            raise ValueError(f"{out}: not an experiment folder (no {' and no '.join(missing)})")
        saved = read_yaml(out / "config.yaml", "the search's configuration") or {}
        if isinstance(saved.get("search"), dict):
            saved["search"].pop("dedupe", None)  # written by searches before it went (it did nothing)
        config = search_config(saved)
        if confirm:
            config = dataclasses.replace(config, confirm=search_config({"confirm": {
                **dataclasses.asdict(config.confirm), **confirm}}).confirm)
    elif (out / "ledger.jsonl").exists():
        raise ValueError(f"{out} already holds a search; resume it with --resume {out} or pick another --out")
    assert config is not None
    space = load_space(config.space)          # bad names fail here, before anything is written
    controller = _controller(config, space)
    for name in config.search.baselines:
        problem = task_problem(load_genotype(name), config.backbone)
        if problem:  # a neck with recursion (RFP) on a cached backbone: refused before anything is written
            raise ValueError(f"search.baselines: {problem}")
    problem = task_problem(space.template, config.backbone)
    if problem:
        raise ValueError(f"space {config.space!r}: its cells have recursion: {problem}")
    check_address(config.ray.address)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    lock = FolderLock(out).acquire()  # refused: another driver's folder, left as it is
    try:
        return _run_locked(config, out, space, controller, resume=resume, confirm_only=confirm_only, verbose=verbose)
    except BaseException:
        if created and not (out / "ledger.jsonl").exists():  # a search that could not start leaves no folder
            lock.release()
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        lock.release()


def _run_locked(config: SearchConfig, out: Path, space, controller, *, resume: bool, confirm_only: bool,
                verbose: bool) -> Path:
    from .report import build_report

    fresh = not resume and not confirm_only
    if fresh and (out / "ledger.jsonl").exists():  # another driver got here first
        raise ValueError(f"{out} already holds a search; resume it with --resume {out} or pick another --out")
    if fresh:  # with every default resolved, so a resume trains what this driver would have
        config = _resolved(config)
        atomic_write_text(out / "config.yaml", _yaml(config))
    proxy = config.proxy
    ledger = Ledger(out / "ledger.jsonl", default_seed=proxy.seed)
    if not fresh:
        check_same_detector(out, proxy, ledger)
    budget = config.search.trials
    searched = sum(r.candidate.stage != "confirm" for r in ledger)
    if confirm_only and searched < budget:
        raise ValueError(f"{out}: the search has {searched} of its {budget} trials; finish it first "
                         f"(nasfpn search --resume {out})")
    confirm_recipe = confirm_proxy(proxy, config.confirm)
    recipe = recipe_name(confirm_recipe, proxy)
    baseline_genotypes = {name: proxy_genotype(load_genotype(name).replace(width=proxy.width), proxy)
                          for name in config.search.baselines}

    started = time.time()
    task = prepare_task(config.data, config.backbone, proxy, cache_root=config.data.cache_dir)
    recipes = {SEARCH: {"task": task.spec, "proxy": _plain_proxy(proxy)}}
    if config.confirm.enabled and recipe != SEARCH:
        # Another image size needs its own feature caches, of the search's one backbone.
        backbone = config.backbone if task.backbone_weights == "random" else \
            dataclasses.replace(config.backbone, weights=task.backbone_weights)
        confirm_task = task if confirm_recipe.image_size == proxy.image_size else \
            prepare_task(config.data, backbone, confirm_recipe, cache_root=config.data.cache_dir)
        recipes[recipe] = {"task": confirm_task.spec, "proxy": _plain_proxy(confirm_recipe)}
    if confirm_only:  # the extended confirmation, once the task is known to work
        atomic_write_text(out / "config.yaml", _yaml(config))
    meta = _experiment(out, config, task, recipe, confirm_recipe)
    log.warning("prepared in %.0f s: %d train / %d val images, backbone weights %s", time.time() - started,
                len(task.train), len(task.val), task.backbone_weights)
    if len(task.val) < MIN_VAL_IMAGES:
        print(f"warning: the validation split has {len(task.val)} images: too few to rank necks well (below about "
              f"{MIN_VAL_IMAGES}, seeds alone move one neck's AP as much as many necks differ; measured on bccd: "
              f"73 images ranked with a seed-to-seed tau of 0.54, 146 with 0.76); give data.val_fraction "
              "or data.val_annotations more images", flush=True)

    state_path = out / "controller.pt"
    if searched < budget and resume:
        _restore_controller(controller, state_path, ledger, config.search.seeds)
    search_stage = ControllerStage(controller, proxy, {g.hash(): n for n, g in baseline_genotypes.items()})
    stages = [Baselines([Candidate.of(g, proxy, seed=proxy.seed, baseline=name, stage="baseline")
                         for name, g in baseline_genotypes.items()], ledger, controller),
              Seeds(search_stage, [proxy.seed + i for i in range(config.search.seeds)], ledger)
              if config.search.seeds > 1 else search_stage]
    search = Pipeline(stages, ledger, budget=budget)
    # As written (not capped as the search proxy trains them): the confirmation may raise the cap.
    confirm_candidates = [Candidate.of(load_genotype(name), confirm_recipe, seed=0, recipe=recipe, baseline=name,
                                       stage="confirm") for name in config.search.baselines]

    def _confirm_plan(led: Ledger) -> List[Candidate]:
        return plan(led, confirm_candidates, config.confirm, confirm_recipe, recipe)

    confirmation = Pipeline([Confirmation(_confirm_plan, ledger)], ledger)

    def _confirm_left(planned: Optional[List[Candidate]] = None) -> List[Candidate]:
        if not config.confirm.enabled:
            return []
        return [c for c in (_confirm_plan(ledger) if planned is None else planned)
                if ledger.find(c.key, full=True) is None]

    if searched >= budget and not _confirm_left():
        log.warning("%s: all %d trials are done", out, budget)
        return build_report(out)

    def save_controller(record: TrialRecord) -> None:
        atomic_torch_save(controller.state_dict(), state_path)

    def search_report() -> None:  # the search's leaderboard now, not only after the confirmation
        planned = _confirm_plan(ledger)
        left = len(_confirm_left(planned))
        if not left:
            return
        try:  # a report that cannot be drawn must not stop the confirmation (the final one says why)
            path = build_report(out)
        except Exception as err:  # noqa: BLE001 - any failure here means the same: go on
            log.warning("the search's report could not be written: %s: %s", type(err).__name__, err)
            return
        known = f" ({len(planned) - left} of its {len(planned)} are in the ledger already)" \
            if left < len(planned) else ""
        print(f"wrote {path} (the search's); the confirmation follows: {left} trials{known}", flush=True)

    if searched >= budget and not confirm_only and not (out / "leaderboard.md").is_file():
        search_report()  # killed between the search's last trial and its report
    phases = [Phase("search", search, lambda: budget, lambda: sum(r.candidate.stage != "confirm" for r in ledger),
                    _asha(config), save_controller, search_report)] if searched < budget else []
    if config.confirm.enabled:  # planned when it starts: the finalists are known only then
        phases.append(Phase("confirm", confirmation, lambda: len(_confirm_plan(ledger)),
                            lambda: len(_confirm_plan(ledger)) - len(_confirm_left())))
    run_phases(config, out, recipes, phases, meta, verbose=verbose)
    return build_report(out)


class SearchInterrupted(RuntimeError):
    """The driver was asked to stop (Ctrl-C); every finished trial is in the ledger."""


def _resolved(config: SearchConfig) -> SearchConfig:
    """``config`` with the defaults that could change between versions or shells written out:
    the cache folder (else ``$NASFPN_CACHE`` at resume time decides), the share held out for
    validation (the ledger does not key trials by the split) and the confirmation's steps."""
    from ..cache import default_cache_root

    data = dataclasses.replace(config.data, cache_dir=str(Path(config.data.cache_dir or default_cache_root())
                                                          .expanduser().resolve()),
                               val_fraction=resolved_val_fraction(config.data))
    confirm = dataclasses.replace(config.confirm, steps=confirm_proxy(config.proxy, config.confirm).steps)
    return dataclasses.replace(config, data=data, confirm=confirm)


@dataclass
class Phase:
    """One Tune run of a search: a pipeline until it is finished. ``total`` and ``done``: the
    trials of the phase in all and finished so far (asked when it starts, and for the progress
    line; nothing left skips it); ``scheduler``: ASHA settings or ``None``; ``on_record``: called
    after each record is written; ``on_finish``: once the phase has run to its end."""
    name: str
    pipeline: Pipeline
    total: Callable[[], int]
    done: Callable[[], int]
    scheduler: Optional[Dict[str, int]] = None
    on_record: Callable[[TrialRecord], None] = lambda record: None
    on_finish: Callable[[], None] = lambda: None


def run_phases(config: SearchConfig, out: Path, recipes: Dict[str, Any], phases: List[Phase],
               meta: Optional[Dict[str, Any]] = None, *, verbose: bool = False) -> None:
    """Connect to Ray (private or the cluster of ``config.ray``) and run each phase in turn over
    the recipes' prepared tasks; ``meta`` (``experiment.json``) keeps the driver's wall time."""
    if not phases:
        return
    from .connect import cluster_resources, connect_ray, disconnect_ray, quiet_ray_loggers, ray_environment
    ray_environment(verbose, config.ray.address)
    from .tune_run import LedgerCallback, run_phase

    quiet_ray_loggers(verbose)
    print(connect_ray(config.ray.address, config.ray.num_cpus, verbose), flush=True)
    session = time.time()
    before = (meta or {}).get("wall_seconds", 0.0)
    try:
        _check_resources(cluster_resources(), config)
        setup = {"recipes": recipes, "cpus": config.resources.cpus_per_trial,
                 "reward": dataclasses.asdict(config.reward)}
        for phase in phases:
            total = phase.total()
            if phase.done() >= total:
                continue
            callback = LedgerCallback(phase.pipeline, total, _controller_name(config), phase.name, phase.done)

            def on_record(record: TrialRecord, phase=phase, callback=callback) -> None:
                phase.on_record(record)
                if meta is not None:
                    meta["wall_seconds"] = round(before + time.time() - session, 1)
                    atomic_write_text(out / "experiment.json", json.dumps(meta, indent=1))
                callback.print_record(record)

            phase.pipeline.on_record = on_record
            run_phase(phase.pipeline, callback, out=out, setup=setup, concurrent=config.search.concurrent,
                      retries=config.search.retries, cpus=config.resources.cpus_per_trial,
                      gpus=config.resources.gpus_per_trial, scheduler=phase.scheduler, verbose=verbose)
            if not phase.pipeline.finished:  # Tune stops gracefully on Ctrl-C: so do we, with nothing lost
                raise SearchInterrupted(f"interrupted during the {phase.name} phase ({phase.done()} of {total} "
                                        f"trials done, all kept); continue with: nasfpn search --resume {out}")
            phase.on_finish()
    finally:
        disconnect_ray()


def _restore_controller(controller, state_path: Path, ledger: Ledger, seeds: int = 1) -> None:
    """On resume: the controller's saved state (if any); every neck the ledger finished that it
    does not know is recorded (with ``seeds`` > 1, only necks with all their seeds, at the mean);
    a trial that was in flight is forgotten (lost, not failed: no reward, not even
    ``failure_reward``) and proposed again unless it is now known."""
    state = None
    if state_path.is_file():
        try:
            state = torch.load(state_path, weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable state means the same to the user
            raise ValueError(f"{state_path}: damaged controller state ({type(err).__name__}); remove it to "
                             "restart the controller from the ledger alone") from None
        controller.load_state_dict(state)
    groups: Dict[str, List[TrialRecord]] = {}
    for record in ledger:
        if record.candidate.stage != "confirm" and record.status != "failed":
            groups.setdefault(record.candidate.hash, []).append(record)
    for records in groups.values():
        complete = len({r.candidate.seed for r in records}) >= seeds or records[0].candidate.stage == "baseline"
        if complete and controller.known_reward(records[0].candidate.hash) is None:
            controller.record(records[0].candidate.genotype, sum(r.reward for r in records) / len(records))
    for trial_id, pending in (state or {}).get("pending", {}).items():
        controller.forget(trial_id, ask_again=controller.known_reward(pending["hash"]) is None)


def _controller(config: SearchConfig, space):
    from ..controllers import make_controller

    spec = config.controller
    if isinstance(spec, dict):
        spec = {"controller": spec.get("name", spec.get("controller")), **{k: v for k, v in spec.items() if k != "name"}}
    return make_controller(space, spec, seed=config.search.seed)


def _controller_name(config: SearchConfig) -> str:
    spec = config.controller
    if isinstance(spec, dict):
        return str(spec.get("name", spec.get("controller")))
    return Path(str(spec)).stem


def _asha(config: SearchConfig) -> Optional[Dict[str, int]]:
    proxy = config.proxy
    evals = max(1, -(-proxy.steps // proxy.eval_every)) if proxy.eval_every else 1
    if config.scheduler.name != "asha" or evals <= 1:
        return None
    return {"evals": evals, "grace_evals": config.scheduler.grace_evals,
            "reduction_factor": config.scheduler.reduction_factor}


def _check_resources(available: Dict[str, float], config: SearchConfig) -> None:
    """A trial asking for more than the cluster has would wait forever without a word."""
    r = config.resources
    if r.cpus_per_trial > available.get("CPU", 0) or r.gpus_per_trial > available.get("GPU", 0):
        raise ValueError(f"resources: a trial asks for {r.cpus_per_trial} CPU / {r.gpus_per_trial} GPU but the "
                         f"cluster has {available.get('CPU', 0):g} CPU / {available.get('GPU', 0):g} GPU")


def _experiment(out: Path, config: SearchConfig, task, recipe: str, confirm_recipe: ProxyConfig) -> Dict[str, Any]:
    """``experiment.json``: what the report needs besides the ledger (written at every start;
    the wall time of earlier driver sessions is kept)."""
    path = out / "experiment.json"
    before = read_json(path).get("wall_seconds", 0.0) if path.is_file() else 0.0
    proxy = config.proxy
    meta = {"name": out.name, "trials": config.search.trials, "concurrent": config.search.concurrent,
            "channels": {str(k): v for k, v in task.channels.items()}, "width": proxy.width,
            "image_size": proxy.image_size, "backbone": config.backbone.name,
            "backbone_weights": task.backbone_weights, "space": config.space, "controller": _controller_name(config),
            "recipe": recipe_text(proxy, config), "detector": proxy.detector, "roi_extractor": proxy.roi_extractor,
            "confirm": {"recipe": recipe, "enabled": config.confirm.enabled, "top_k": config.confirm.top_k,
                        "seeds": config.confirm.seeds, "text": recipe_text(confirm_recipe, config)},
            "train_images": len(task.train), "val_images": len(task.val),
            "wall_seconds": before}
    atomic_write_text(path, json.dumps(meta, indent=1))
    return meta


def recipe_text(proxy: ProxyConfig, config: SearchConfig) -> str:
    repeats = "full repeats" if proxy.max_repeats is None else \
        "one cell of each neck" if proxy.max_repeats == 1 else f"at most {proxy.max_repeats} repeats"
    return (f"detector {detector_text(proxy)}, {proxy.steps} steps of batch {proxy.batch_size} at "
            f"{proxy.image_size} px, width {proxy.width}, {proxy.optimizer} lr {proxy.lr}, "
            f"{precision_name(proxy.amp, proxy_device())}, {repeats}, "
            f"{aux_text(proxy)}backbone {config.backbone.name} ({'frozen' if config.backbone.freeze else 'trained'})"
            f"{subset_text(config.data)}")


def detector_text(proxy: ProxyConfig) -> str:
    """The proxy detector, as the recipe line and ``nasfpn train`` name it: it changes every neck's AP."""
    soft = proxy.detector in TWO_STAGE and proxy.roi_extractor == "soft"
    return f"{proxy.detector}{' (soft RoI selection)' if soft else ''}"


def check_same_detector(out: Path, proxy: ProxyConfig, ledger: Ledger) -> None:
    """Refuse to go on with another detector (or RoI extractor) than the one the search in ``out``
    was trained with: its ledger's results would be ranked beside results of another detector.
    ``experiment.json`` names it (folders made before it did were searched with RetinaNet), and
    so does each trial that finished since.

    Raises:
        ValueError: naming ``proxy.detector`` or ``proxy.roi_extractor``, both values and the folder.
    """
    if not len(ledger):
        return  # nothing trained yet
    path = out / "experiment.json"
    before = read_json(path) if path.is_file() else {}
    used = {"detector": set(), "roi_extractor": set()}
    if path.is_file():
        used["detector"].add(before.get("detector", "retinanet"))
        used["roi_extractor"].add(before.get("roi_extractor", "level"))
    used["detector"].update(r.metrics["detector"] for r in ledger if "detector" in r.metrics)
    for key, values in used.items():
        others = sorted(values - {getattr(proxy, key)})
        if others:
            raise ValueError(f"{out}: its ledger was trained with proxy.{key} {', '.join(map(repr, others))}, "
                             f"its config.yaml now says {getattr(proxy, key)!r}; a search keeps one detector "
                             "(search another one in a new folder)")


def aux_text(proxy: ProxyConfig) -> str:
    """The consistent supervision in the recipe line (empty when off): it changes every neck's AP."""
    return f"consistent supervision on the laterals (aux_loss {proxy.aux_loss:g}), " if proxy.aux_loss else ""


def subset_text(data: DataConfig) -> str:
    """The proxy subset in the recipe line (empty without one): it changes every neck's AP."""
    if data.max_train_images is None and data.max_val_images is None:
        return ""
    train, val = ("all" if n is None else f"at most {n}" for n in (data.max_train_images, data.max_val_images))
    return f", on a class-balanced subset: {train} train / {val} val images (data.split_seed {data.split_seed})"


def _plain_proxy(proxy: ProxyConfig) -> Dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(proxy).items() if k != "threads"}


def _yaml(config: SearchConfig) -> str:
    import yaml
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
