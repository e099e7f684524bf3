"""The stages of a search: plain, Ray-free ask/tell objects over :class:`Candidate` and
:class:`TrialRecord`, in the spirit of Tune's ``ConcurrencyLimiter`` and ``Repeater``.

A stage proposes candidates (``ask``: a candidate, or ``None`` for "nothing now") and learns
their records (``tell``). :class:`Pipeline` runs stages in order over one ledger: it answers a
candidate whose trial key is already in the ledger at once, in the driver, without a Ray trial;
it keeps the search's trial budget; and it starts a stage marked ``after_all`` only when every
earlier trial has finished (confirmation needs the whole search's ranking). The Ray adapter
(:mod:`nasfpn.search.tune_run`) only turns ``ask`` into Tune suggestions and finished Tune
trials into ``finish``.

Stages here: :class:`Baselines` (the hand-designed necks first), :class:`ControllerStage` (a
controller's proposals), :class:`Seeds` (one candidate under several proxy seeds, the mean told
back, as Tune's ``Repeater``) and :class:`Confirmation` (the finalists re-trained over seeds under
the confirmation recipe, see :mod:`nasfpn.search.confirm`). A zero-cost pre-screen or a warm
start from an earlier search would be one more stage.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..train import ProxyConfig
from .ledger import Ledger
from .records import Candidate, Key, TrialRecord

log = logging.getLogger(__name__)


class Stage:
    """The contract: ``ask`` a candidate (``None``: nothing now), ``tell`` its record,
    ``finished`` once it will ask nothing more, ``lost`` for a candidate that was in flight when
    a driver died (ask it again)."""
    name = "stage"
    after_all = False  # start only when every earlier trial has finished
    full_only = False  # answer from the ledger only with full-recipe records (not ones ASHA stopped)
    in_budget = True   # its trials count towards the search's trial budget

    def ask(self) -> Optional[Candidate]:
        raise NotImplementedError

    def tell(self, candidate: Candidate, record: TrialRecord) -> None:
        pass

    @property
    def finished(self) -> bool:
        raise NotImplementedError


class Baselines(Stage):
    """The hand-designed necks, first, each once; the controller learns their rewards too (by
    ``record``), so they teach it without costing it a proposal."""
    name = "baselines"

    def __init__(self, candidates: Sequence[Candidate], ledger: Ledger, controller=None):
        self.queue = [c for c in candidates if ledger.find(c.key) is None]
        self.controller = controller

    def ask(self) -> Optional[Candidate]:
        return self.queue.pop(0) if self.queue else None

    def tell(self, candidate: Candidate, record: TrialRecord) -> None:
        if self.controller is not None and self.controller.known_reward(candidate.hash) is None:
            self.controller.record(candidate.genotype, record.reward if record.status != "failed" else None)

    @property
    def finished(self) -> bool:
        return not self.queue


class ControllerStage(Stage):
    """A controller's proposals under the search recipe; each record's reward is told back
    (``None`` for a failure: the controller's ``failure_reward`` decides what it counts as)."""
    name = "search"

    def __init__(self, controller, proxy: ProxyConfig, baselines: Dict[str, str]):
        self.controller, self.proxy, self.baselines = controller, proxy, baselines

    def ask(self) -> Optional[Candidate]:
        trial_id, genotype = self.controller.ask()
        candidate = Candidate.of(genotype, self.proxy, seed=self.proxy.seed, trial_id=trial_id)
        return dataclasses.replace(candidate, baseline=self.baselines.get(candidate.hash))

    def tell(self, candidate: Candidate, record: TrialRecord) -> None:
        if self.controller.is_pending(candidate.trial_id):
            self.controller.tell(candidate.trial_id, record.reward if record.status != "failed" else None)

    @property
    def finished(self) -> bool:
        return False  # the pipeline's budget ends it


class Seeds(Stage):
    """Each candidate of ``inner`` trained under ``seeds`` proxy seeds; ``inner`` is told one
    record whose reward is the mean of the seeds that did not fail (as Tune's ``Repeater``)."""

    def __init__(self, inner: Stage, seeds: Sequence[int], ledger: Optional[Ledger] = None):
        if not seeds:
            raise ValueError("Seeds: at least one seed")
        self.inner, self.seeds, self.ledger = inner, list(seeds), ledger
        self.name, self.after_all = inner.name, inner.after_all
        self.full_only, self.in_budget = inner.full_only, inner.in_budget
        self.queue: List[Candidate] = []
        self.groups: Dict[str, List[Optional[TrialRecord]]] = {}  # trial id of the inner candidate -> records
        self.parents: Dict[str, Candidate] = {}

    def ask(self) -> Optional[Candidate]:
        if not self.queue:
            parent = self.inner.ask()
            if parent is None:
                return None
            group = f"{parent.trial_id or parent.hash}"
            self.parents[group] = parent
            self.groups[group] = []
            self.queue = [dataclasses.replace(parent, seed=s, trial_id=group) for s in self.seeds]
            for copy in list(self.queue):  # seeds of this very genotype recorded before a resume
                known = self.ledger.find(copy.key) if self.ledger is not None else None
                if known is not None and known.candidate.hash == copy.hash:
                    self.queue.remove(copy)
                    self.tell(copy, known)
            if not self.queue:
                return self.ask()
        return self.queue.pop(0)

    def tell(self, candidate: Candidate, record: TrialRecord) -> None:
        records = self.groups.get(candidate.trial_id)
        if records is None:
            return
        records.append(record)
        if len(records) < len(self.seeds):
            return
        parent = self.parents.pop(candidate.trial_id)
        del self.groups[candidate.trial_id]
        good = [r for r in records if r.status != "failed"]
        mean = dataclasses.replace(records[0], candidate=parent, status=good[0].status if good else "failed",
                                   reward=sum(r.reward for r in good) / len(good) if good else 0.0)
        self.inner.tell(parent, mean)

    @property
    def finished(self) -> bool:
        return not self.queue and self.inner.finished


class Confirmation(Stage):
    """The finalists under the confirmation recipe and seeds, planned from the ledger once the
    search has finished (``plan`` returns the candidates; those already in the ledger are
    skipped, so a resumed or extended confirmation pays for nothing twice)."""
    name = "confirm"
    after_all = True
    full_only = True
    in_budget = False

    def __init__(self, plan: Callable[[Ledger], List[Candidate]], ledger: Ledger):
        self.plan, self.ledger = plan, ledger
        self.queue: Optional[List[Candidate]] = None

    def ask(self) -> Optional[Candidate]:
        if self.queue is None:
            self.queue = [c for c in self.plan(self.ledger) if self.ledger.find(c.key, full=True) is None]
            log.info("confirmation: %d trial(s) to run", len(self.queue))
        return self.queue.pop(0) if self.queue else None

    @property
    def finished(self) -> bool:
        return self.queue is not None and not self.queue


class Pipeline:
    """Stages in order over one ledger.

    Args:
        stages: asked in order; a stage is asked once every earlier one is ``finished`` (and,
            if it is ``after_all``, once no trial is in flight).
        ledger: where every record goes; a candidate whose key it holds is answered from it.
        budget: trials of the stages before confirmation in all (records answered from the ledger count,
            so a search ends with exactly its budget of lines); ``None``: no limit.
        on_record: called with each record after it is written (progress, saving state).
    """

    def __init__(self, stages: Sequence[Stage], ledger: Ledger, *, budget: Optional[int] = None,
                 on_record: Callable[[TrialRecord], None] = lambda record: None):
        self.stages, self.ledger, self.budget, self.on_record = list(stages), ledger, budget, on_record
        self.in_flight: Dict[Key, Tuple[Stage, Candidate]] = {}
        self._waiting: Dict[Key, List[Tuple[Stage, Candidate]]] = {}  # same key as one in flight

    def _search_trials(self) -> int:
        waiting = [stage for queue in self._waiting.values() for stage, _ in queue]
        return sum(r.candidate.stage != "confirm" for r in self.ledger) + \
            sum(s.in_budget for s, _ in self.in_flight.values()) + sum(s.in_budget for s in waiting)

    def _over_budget(self, stage: Stage) -> bool:
        return stage.in_budget and self.budget is not None and self._search_trials() >= self.budget

    @property
    def finished(self) -> bool:
        return not self.in_flight and self._current() is None

    def _current(self) -> Optional[Stage]:
        for stage in self.stages:
            if not stage.finished and not self._over_budget(stage):
                return stage
        return None

    def ask(self) -> Optional[Candidate]:
        """The next candidate to train, or ``None`` (nothing now: wait for a result, or
        ``finished``). Candidates answered from the ledger are recorded on the way."""
        while True:
            stage = self._current()
            if stage is None or (stage.after_all and any(s is not stage for s, _ in self.in_flight.values())):
                return None
            candidate = stage.ask()
            if candidate is None:
                return None
            known = self.ledger.find(candidate.key, full=stage.full_only)
            if known is not None:  # trained before (or the same neck under another hash): free, a line of its own
                self._record(stage, candidate, known.answer(self.ledger.next_trial(), candidate))
                continue
            if candidate.key in self.in_flight:  # the same neck is training right now: wait for it
                self._waiting.setdefault(candidate.key, []).append((stage, candidate))
                continue
            self.in_flight[candidate.key] = (stage, candidate)
            return candidate

    def finish(self, candidate: Candidate, record: TrialRecord) -> None:
        """A trained candidate's record: written, told to its stage, and to any candidate that
        waited for the same key."""
        if candidate.key not in self.in_flight:
            raise ValueError(f"finish: {candidate.label} (seed {candidate.seed}, {candidate.recipe}) is not in flight")
        stage, candidate = self.in_flight.pop(candidate.key)
        self._record(stage, candidate, record)
        for other_stage, other in self._waiting.pop(candidate.key, []):
            answer = record.answer(self.ledger.next_trial(), other) if record.status != "failed" else \
                dataclasses.replace(record, trial=self.ledger.next_trial(), candidate=other, attempts=0)
            self._record(other_stage, other, answer)

    def _record(self, stage: Stage, candidate: Candidate, record: TrialRecord) -> None:
        self.ledger.append(record)
        stage.tell(candidate, record)
        self.on_record(record)

