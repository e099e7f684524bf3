"""The controller interface: propose genotypes, learn from their rewards (ask / tell).

A controller works on a :class:`~nasfpn.space.SearchSpace`'s decision sequences and hands out
genotypes keyed by their canonical hash. The loop is plain Python (no Ray)::

    controller = PPO(load_space("nasfpn"), seed=0)
    for _ in range(100):
        trial_id, genotype = controller.ask()
        controller.tell(trial_id, evaluate(genotype))   # None: the trial failed

Rules every controller shares (they live here, not in the algorithms):

* **Warm start.** ``warm_start`` genotypes are asked first, in order, exactly as given. One
  inside the space (``space.contains``) also teaches the algorithm; one outside is evaluated
  and remembered but the algorithm does not learn from it (it has no decisions in the space).
* **Never pay twice** (``dedupe``, on by default). A proposal whose hash was already evaluated
  gets its known reward fed back to the algorithm instead of a trial, and one whose hash is
  pending (asked, not told) is dropped; the controller then proposes again. After
  ``dedupe_attempts`` known proposals in a row (a converged algorithm), up to as many one-decision
  mutations of the first are tried (``space.mutate``: a new neighbour, learned from like any
  proposal); if all are known too, the first is handed out anyway (a *repeat*). ``stats`` counts
  ``duplicates`` (known proposals), ``neighbours`` and ``repeats``.
* **Failures.** ``tell(trial_id, None)`` (or a non-finite reward) is a failed trial. With
  ``failure_reward=None`` (default) it is dropped: not learned from and not remembered, so it
  may be proposed again. With a number, the failure counts as that reward.
* **Evaluations it did not ask for** (a ledger read on resume): :meth:`Controller.record`.
* **State.** :meth:`Controller.state_dict` is a versioned dict of plain data (and tensors for
  the policy controllers): settings, random states, memo, pending trials, algorithm state. A
  controller restored from it proposes exactly what the original would have.
"""
from __future__ import annotations

import inspect
import logging
import math
import random
from collections import Counter
from typing import Any, ClassVar, Iterable, Mapping, Sequence

from ..genotype import Genotype
from ..space import SearchSpace
from .config import load_controller_config
from .util import check_bool, check_float, check_int, genotype_to_plain, rng_from_state, rng_state

logger = logging.getLogger(__name__)

STATE_FORMAT = "nasfpn.controller"
STATE_VERSION = 1
STAT_KEYS = ("asked", "told", "failures", "duplicates", "neighbours", "repeats", "recorded")
HASH_CACHE_SIZE = 100_000


class Controller:
    """Base class: the shared bookkeeping of ask / tell. Subclasses implement ``_propose``
    (a decision sequence), ``_observe`` (learn from one reward) and their state.

    Args:
        space: the search space.
        seed: seeds every random choice the controller makes.
        warm_start: genotypes asked first (see the module docstring).
        dedupe: feed known rewards back instead of proposing a known hash again.
        dedupe_attempts: known proposals per ``ask`` before neighbours are tried, and neighbours
            tried before a repeat.
        failure_reward: the reward a failed trial counts as; ``None`` drops failures.

    Raises:
        ValueError: naming a bad setting.
    """

    name: ClassVar[str] = ""

    def __init__(self, space: SearchSpace, *, seed: int = 0, warm_start: Iterable[Genotype] = (),
                 dedupe: bool = True, dedupe_attempts: int = 20, failure_reward: float | None = None):
        if not isinstance(space, SearchSpace):
            raise TypeError(f"space must be a SearchSpace, got {type(space).__name__}")
        self.space = space
        self.settings: dict[str, Any] = {
            "seed": check_int("seed", seed, low=0),
            "dedupe": check_bool("dedupe", dedupe),
            "dedupe_attempts": check_int("dedupe_attempts", dedupe_attempts, low=1),
            "failure_reward": None if failure_reward is None else check_float("failure_reward", failure_reward),
        }
        self.rng = random.Random(seed)
        self._warm: list[Genotype] = []
        for genotype in warm_start:
            if not isinstance(genotype, Genotype):
                raise TypeError(f"warm_start: expected Genotype objects, got {type(genotype).__name__}")
            self._warm.append(genotype.validate())
        self._counter = 0
        self._pending: dict[str, tuple[str, list[int] | None]] = {}   # trial id -> (hash, decisions)
        self._pending_hashes: Counter[str] = Counter()
        self._memo: dict[str, list[float]] = {}                      # hash -> [mean reward, evaluations]
        self._hash_cache: dict[tuple[int, ...], str] = {}              # decisions -> hash (not state)
        self._last_decoded: tuple[tuple[int, ...], Genotype] | None = None
        self.stats: dict[str, Any] = {key: 0 for key in STAT_KEYS} | {"best_reward": None, "best_hash": None}

    # --- configuration -------------------------------------------------------------------
    @classmethod
    def setting_names(cls) -> list[str]:
        """The keys ``from_config`` accepts (besides ``controller``)."""
        names: list[str] = []
        for klass in reversed(cls.__mro__):
            if "__init__" in vars(klass) and issubclass(klass, Controller):
                names += [p.name for p in inspect.signature(klass.__init__).parameters.values()
                          if p.kind is p.KEYWORD_ONLY and p.name != "warm_start" and p.name not in names]
        return names

    @classmethod
    def from_config(cls, space: SearchSpace, config: Mapping[str, Any] | str, *, seed: int | None = None,
                    warm_start: Iterable[Genotype] = ()) -> "Controller":
        """Build from a settings mapping or a YAML file / shipped name (``controllers/*.yaml``).

        ``seed`` overrides the file's seed. Raises ValueError for unknown keys or a file made
        for another controller.
        """
        data = dict(load_controller_config(config))
        name = data.pop("controller", cls.name)
        if name != cls.name:
            raise ValueError(f"config is for controller {name!r}, not {cls.name!r}")
        unknown = sorted(set(data) - set(cls.setting_names()))
        if unknown:
            raise ValueError(f"{cls.name}: unknown setting(s) {unknown}; valid keys are "
                             f"{['controller', *cls.setting_names()]}")
        if seed is not None:
            data["seed"] = seed
        return cls(space, warm_start=warm_start, **data)

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self.settings.items())
        return f"{type(self).__name__}(space={self.space.name!r}, {settings})"

    # --- ask / tell ----------------------------------------------------------------------
    def ask(self, trial_id: str | None = None) -> tuple[str, Genotype]:
        """Propose the next genotype to evaluate.

        Args:
            trial_id: the id to file it under (e.g. Tune's); by default ``<name>-<counter>``.
        Returns:
            ``(trial_id, genotype)``.
        """
        if trial_id is None:
            trial_id = f"{self.name}-{self._counter:06d}"
        if trial_id in self._pending:
            raise ValueError(f"trial id {trial_id!r} is already pending")
        self._counter += 1
        genotype, decisions, key = self._next()
        self._pending[trial_id] = (key, decisions)
        self._pending_hashes[key] += 1
        self.stats["asked"] += 1
        return trial_id, genotype

    def tell(self, trial_id: str, reward: float | None) -> None:
        """Report the reward of an asked trial (``None`` or non-finite: it failed)."""
        if trial_id not in self._pending:
            raise ValueError(f"trial id {trial_id!r} is not pending; pending: {sorted(self._pending)[:10]}")
        reward = self._reward_or_failure(reward)
        key, decisions = self._pending.pop(trial_id)
        self._pending_hashes[key] -= 1
        if self._pending_hashes[key] <= 0:
            del self._pending_hashes[key]
        self.stats["told"] += 1
        if reward is not None:
            self._remember(key, reward)
            if decisions is not None:
                self._observe(decisions, reward)

    def forget(self, trial_id: str, *, ask_again: bool = True) -> None:
        """Drop a pending trial without a reward: it was lost, not failed (in flight when a
        driver died), so nothing is learnt and ``failure_reward`` does not apply. With
        ``ask_again`` its genotype is proposed again before anything new."""
        if trial_id not in self._pending:
            raise ValueError(f"trial id {trial_id!r} is not pending")
        key, decisions = self._pending.pop(trial_id)
        self._pending_hashes[key] -= 1
        if self._pending_hashes[key] <= 0:
            del self._pending_hashes[key]
        if ask_again and decisions is not None:
            self._warm.insert(0, self._genotype(decisions))

    def record(self, genotype: Genotype, reward: float | None) -> None:
        """Tell the controller about an evaluation it did not ask for (e.g. a ledger entry on
        resume). It joins the memo; the algorithm learns from it if it is in the space. Record
        only what a restored controller does not already know (``known_reward`` is ``None``)."""
        reward = self._reward_or_failure(reward)
        self.stats["recorded"] += 1
        if reward is None:
            return
        self._remember(genotype.hash(), reward)
        decisions = self._decisions_of(genotype)
        if decisions is not None:
            self._observe(decisions, reward)

    def known_reward(self, key: str) -> float | None:
        """The mean reward recorded for a canonical hash, or ``None``."""
        entry = self._memo.get(key)
        return None if entry is None else entry[0]

    def trial_hash(self, trial_id: str) -> str:
        """The canonical hash of a pending trial's genotype."""
        if trial_id not in self._pending:
            raise ValueError(f"trial id {trial_id!r} is not pending")
        return self._pending[trial_id][0]

    def is_pending(self, trial_id: str) -> bool:
        return trial_id in self._pending

    @property
    def num_pending(self) -> int:
        return len(self._pending)

    # --- internals -----------------------------------------------------------------------
    def _next(self) -> tuple[Genotype, list[int] | None, str]:
        dedupe = self.settings["dedupe"]
        while self._warm:
            genotype = self._warm.pop(0)
            key = genotype.hash()
            if dedupe and self._known(key):
                logger.info("warm start %s is already known; skipped", genotype.name or key[:12])
                continue
            return genotype, self._decisions_of(genotype), key
        first: list[int] | None = None
        for _ in range(self.settings["dedupe_attempts"] if dedupe else 1):
            decisions = self._propose()
            key = self._hash(decisions)
            if not dedupe or not self._known(key):
                return self._decoded(decisions), decisions, key
            first = first or decisions
            self.stats["duplicates"] += 1
            if key in self._memo:  # the known reward teaches the algorithm instead of a trial
                self._observe(decisions, self._memo[key][0])
        # The algorithm keeps proposing known genotypes: try neighbours of its first, then repeat.
        assert first is not None
        decisions = first
        for _ in range(self.settings["dedupe_attempts"]):
            decisions = self.space.mutate(decisions, self.rng)
            key = self._hash(decisions)
            if not self._known(key):
                self.stats["neighbours"] += 1
                return self._decoded(decisions), decisions, key
        self.stats["repeats"] += 1
        return self._genotype(first), first, self._hash(first)

    def _known(self, key: str) -> bool:
        return key in self._memo or key in self._pending_hashes

    def _hash(self, decisions: Sequence[int]) -> str:
        """The canonical hash of a decision sequence (cached: the converged algorithms propose
        the same sequences over and over)."""
        sequence = tuple(decisions)
        key = self._hash_cache.get(sequence)
        if key is None:
            if len(self._hash_cache) >= HASH_CACHE_SIZE:
                self._hash_cache.clear()
            genotype = self._genotype(sequence)
            self._last_decoded = (sequence, genotype)
            key = self._hash_cache[sequence] = genotype.hash()
        return key

    def _decoded(self, decisions: Sequence[int]) -> Genotype:
        """The genotype of a decision sequence, reusing the one ``_hash`` just decoded."""
        if self._last_decoded is not None and self._last_decoded[0] == tuple(decisions):
            return self._last_decoded[1]
        return self._genotype(decisions)

    def _reward_or_failure(self, reward: float | None) -> float | None:
        if reward is not None and (isinstance(reward, bool) or not isinstance(reward, (int, float))):
            raise TypeError(f"reward must be a number or None, got {reward!r}")
        if reward is None or not math.isfinite(reward):
            self.stats["failures"] += 1
            return self.settings["failure_reward"]
        return float(reward)

    def _remember(self, key: str, reward: float) -> None:
        mean, n = self._memo.get(key, (0.0, 0))
        self._memo[key] = [(mean * n + reward) / (n + 1), n + 1]
        if self.stats["best_reward"] is None or reward > self.stats["best_reward"]:
            self.stats["best_reward"], self.stats["best_hash"] = reward, key

    def _decisions_of(self, genotype: Genotype) -> list[int] | None:
        return self.space.encode(genotype) if self.space.contains(genotype) else None

    def _genotype(self, decisions: Sequence[int]) -> Genotype:
        return self.space.decode(decisions)

    # --- what subclasses implement ----------------------------------------------------------
    def _propose(self) -> list[int]:
        raise NotImplementedError

    def _observe(self, decisions: list[int], reward: float) -> None:
        """Learn from one reward of a decision sequence (told, recorded or already known)."""

    def _algorithm_state(self) -> dict[str, Any]:
        return {}

    def _load_algorithm_state(self, state: Mapping[str, Any]) -> None:
        pass

    # --- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: a versioned dict of plain data (and tensors
        for the policy controllers; save it with ``torch.save`` and load it with
        ``weights_only=True``)."""
        return {
            "format": STATE_FORMAT, "version": STATE_VERSION, "controller": self.name,
            "settings": dict(self.settings),
            "space": {"name": self.space.name, "decision_sizes": list(self.space.decision_sizes)},
            "rng": rng_state(self.rng), "counter": self._counter,
            "warm": [genotype_to_plain(g) for g in self._warm],
            "pending": {tid: {"hash": key, "decisions": None if d is None else list(d)}
                        for tid, (key, d) in self._pending.items()},
            "memo": {key: list(entry) for key, entry in self._memo.items()},
            "stats": dict(self.stats),
            "algorithm": self._algorithm_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict`. Raises ValueError if it was made by another kind of
        controller, another format version or for another space; warns if settings differ."""
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a controller state: expected format {STATE_FORMAT!r}")
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"controller state version {state.get('version')!r}; this code reads {STATE_VERSION}")
        if state["controller"] != self.name:
            raise ValueError(f"state is for controller {state['controller']!r}, not {self.name!r}")
        if list(state["space"]["decision_sizes"]) != list(self.space.decision_sizes):
            raise ValueError(f"state is for space {state['space']['name']!r} with other decisions than "
                             f"{self.space.name!r}")
        if dict(state["settings"]) != self.settings:
            logger.warning("restoring %s state made with settings %s into one with %s",
                           self.name, dict(state["settings"]), self.settings)
        self.rng.setstate(rng_from_state(state["rng"]))
        self._counter = int(state["counter"])
        self._warm = [Genotype.from_dict(g) for g in state["warm"]]
        self._pending = {tid: (p["hash"], None if p["decisions"] is None else [int(x) for x in p["decisions"]])
                         for tid, p in state["pending"].items()}
        self._pending_hashes = Counter(key for key, _ in self._pending.values())
        self._memo = {key: [float(entry[0]), int(entry[1])] for key, entry in state["memo"].items()}
        self.stats = dict(state["stats"])
        self._load_algorithm_state(state["algorithm"])
