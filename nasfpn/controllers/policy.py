"""An LSTM policy over a search space's decision sequence, and the base of the RL controllers.

At step ``t`` the LSTM reads the embedding of decision ``t-1`` (a start token at ``t = 0``)
plus a learned embedding of position ``t``; the head of decision ``t``'s kind (one linear
softmax head per kind: ``input``, ``level``, ``combine``...) scores its options; options the
space does not allow after the earlier decisions (:meth:`~nasfpn.space.Walk.choices`) get
``-inf``, so every sample decodes to a valid genotype. Sampling runs a batch of walks at once.
"""
from __future__ import annotations

import copy
import logging
import math
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..genotype import Genotype
from ..space import SearchSpace, Walk
from .base import Controller
from .util import check_bool, check_float, check_int

logger = logging.getLogger(__name__)


class DecisionPolicy(nn.Module):
    """LSTM policy over a fixed-length sequence of discrete decisions.

    Args:
        kinds: the kind of each position (``space.decision_kinds``).
        sizes: the number of options of each position (``space.decision_sizes``).
        hidden: LSTM width. embed: embedding width.
    """

    def __init__(self, kinds: Sequence[str], sizes: Sequence[int], *, hidden: int = 64, embed: int = 32,
                 logit_bound: float = 0.0):
        super().__init__()
        self.logit_bound = logit_bound
        self.kinds = list(dict.fromkeys(kinds))
        width = {k: max(s for kk, s in zip(kinds, sizes) if kk == k) for k in self.kinds}
        offset, start = {}, 0
        for k in self.kinds:
            offset[k], start = start, start + width[k]
        self.head_of = [self.kinds.index(k) for k in kinds]
        self.positions_of = [[t for t, kk in enumerate(kinds) if kk == k] for k in self.kinds]
        self.register_buffer("offsets", torch.tensor([offset[k] for k in kinds]), persistent=False)
        self.max_size = max(sizes)
        self.start_token = start
        self.tokens = nn.Embedding(start + 1, embed)
        self.positions = nn.Embedding(len(sizes), embed)
        self.lstm = nn.LSTM(embed, hidden, batch_first=True)
        self.heads = nn.ModuleList(nn.Linear(hidden, width[k]) for k in self.kinds)

    def _bound(self, logits: torch.Tensor) -> torch.Tensor:
        """``c * tanh(logits / c)``: no option's probability falls below a floor (ENAS's
        ``tanh_constant``), so the policy never stops exploring; ``c = 0``: unbounded."""
        c = self.logit_bound
        return logits if c == 0 else c * torch.tanh(logits / c)

    def sample(self, space: SearchSpace, count: int, generator: torch.Generator) -> list[list[int]]:
        """``count`` decision sequences, every one valid in ``space``."""
        return [walk.decisions for walk in self.sample_walks(space, count, generator)[0]]

    @torch.no_grad()
    def sample_walks(self, space: SearchSpace, count: int,
                     generator: torch.Generator) -> tuple[list[Walk], torch.Tensor]:
        """``count`` finished walks of ``space`` and their ``[count, positions, max_size]``
        masks of valid options, sampled together one position at a time."""
        walks = [space.walk() for _ in range(count)]
        masks = torch.zeros(count, len(self.head_of), self.max_size, dtype=torch.bool)
        previous = torch.full((count,), self.start_token, dtype=torch.long)
        state = None
        for t, head in enumerate(self.head_of):
            x = (self.tokens(previous) + self.positions.weight[t]).unsqueeze(1)
            out, state = self.lstm(x, state)
            valid = [w.choices() for w in walks]
            masks[[b for b, v in enumerate(valid) for _ in v], t, [c for v in valid for c in v]] = True
            if all(len(v) == 1 for v in valid):
                picks = [v[0] for v in valid]
            else:
                logits = self._bound(self.heads[head](out[:, 0]))
                probs = torch.softmax(logits.masked_fill(~masks[:, t, : logits.shape[1]], -math.inf), dim=-1)
                picks = torch.multinomial(probs, 1, generator=generator).squeeze(1).tolist()
            for walk, pick in zip(walks, picks):
                walk.step(pick)
            previous = torch.tensor(picks, dtype=torch.long) + int(self.offsets[t])
        return walks, masks

    def log_probs(self, decisions: torch.Tensor, masks: torch.Tensor,
                  per_decision: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probability and entropy (summed over positions) of each sequence, with the whole
        sequence through the LSTM at once (teacher forcing).

        Args:
            decisions: ``[batch, positions]`` choices. masks: ``[batch, positions, max_size]``
                valid options (from :func:`valid_masks`).
        """
        batch, length = decisions.shape
        previous = torch.cat([torch.full((batch, 1), self.start_token, dtype=torch.long),
                              decisions[:, :-1] + self.offsets[:-1]], dim=1)
        out, _ = self.lstm(self.tokens(previous) + self.positions.weight[:length])
        logits = out.new_full((batch, length, self.max_size), -math.inf)
        for head, positions in zip(self.heads, self.positions_of):
            logits[:, positions, : head.out_features] = self._bound(head(out[:, positions]))
        log_soft = torch.log_softmax(logits.masked_fill(~masks, -math.inf), dim=-1)
        logp = log_soft.gather(2, decisions.unsqueeze(2)).squeeze(2)
        entropy = -(log_soft.exp() * log_soft.masked_fill(~masks, 0.0)).sum((1, 2))  # no 0 * -inf
        return (logp if per_decision else logp.sum(1)), entropy


def valid_masks(space: SearchSpace, sequences: Sequence[Sequence[int]], max_size: int) -> torch.Tensor:
    """``[batch, positions, max_size]`` booleans: the options valid at each step of each walk."""
    masks = torch.zeros(len(sequences), len(space.decisions), max_size, dtype=torch.bool)
    for b, decisions in enumerate(sequences):
        walk = space.walk()
        for t, choice in enumerate(decisions):
            masks[b, t, walk.choices()] = True
            walk.step(choice)
    return masks


class PolicyController(Controller):
    """Shared machinery of the policy-gradient controllers: an LSTM policy, batched sampling
    (a queue of samples drawn ``batch_size`` at a time, dropped after each update so every
    proposal comes from the current policy), a buffer of rewarded samples, a moving-average
    reward baseline and Adam. Subclasses implement :meth:`_update` on a full buffer.

    Args:
        batch_size: rewarded samples per policy update.
        lr: Adam learning rate. hidden, embed: policy sizes.
        logit_bound: logits are squashed to ``(-bound, bound)`` (0: not), a floor under every
            option's probability that keeps the policy exploring.
        entropy_weight: weight of the entropy bonus.
        baseline_decay: the baseline is ``decay * baseline + (1 - decay) * batch mean``.
        normalize: divide advantages by the batch's reward standard deviation (keeps the step
            size independent of the reward's scale, e.g. AP differences of 0.01).
        grad_clip: maximum gradient norm.
        (others: see :class:`~nasfpn.controllers.base.Controller`)
    """

    def __init__(self, space: SearchSpace, *, batch_size: int = 16, lr: float = 0.005, hidden: int = 64,
                 embed: int = 32, logit_bound: float = 2.5, entropy_weight: float = 0.01,
                 baseline_decay: float = 0.5, normalize: bool = True, grad_clip: float = 1.0, **common: Any):
        super().__init__(space, **common)
        self.settings.update(
            batch_size=check_int("batch_size", batch_size, low=1),
            lr=check_float("lr", lr, low=0, open_low=True),
            hidden=check_int("hidden", hidden, low=1), embed=check_int("embed", embed, low=1),
            logit_bound=check_float("logit_bound", logit_bound, low=0),
            entropy_weight=check_float("entropy_weight", entropy_weight, low=0),
            baseline_decay=check_float("baseline_decay", baseline_decay, low=0, high=1),
            normalize=check_bool("normalize", normalize),
            grad_clip=check_float("grad_clip", grad_clip, low=0, open_low=True))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.settings["seed"])
            self.policy = DecisionPolicy(space.decision_kinds, space.decision_sizes, hidden=hidden, embed=embed,
                                         logit_bound=logit_bound)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=lr)
        self.generator = torch.Generator().manual_seed(self.settings["seed"])
        self._queue: list[list[int]] = []
        self._buffer: list[tuple[list[int], float]] = []
        self.baseline: float | None = None
        self.stats["updates"] = 0
        self._sampled: dict[tuple[int, ...], tuple[Walk, torch.Tensor]] = {}  # walk and masks (not state)

    def _propose(self) -> list[int]:
        if not self._queue:
            if len(self._sampled) > 64 * self.settings["batch_size"]:  # no update for long: all failed
                self._sampled.clear()
            walks, masks = self.policy.sample_walks(self.space, self.settings["batch_size"], self.generator)
            self._queue = [walk.decisions for walk in walks]
            self._sampled.update((tuple(w.decisions), (w, m)) for w, m in zip(walks, masks))
        return self._queue.pop(0)

    def _genotype(self, decisions: Sequence[int]) -> Genotype:
        sampled = self._sampled.get(tuple(decisions))
        return self.space.decode(decisions) if sampled is None else sampled[0].genotype()

    def _observe(self, decisions: list[int], reward: float) -> None:
        self._buffer.append((list(decisions), reward))
        if len(self._buffer) >= self.settings["batch_size"]:
            batch, self._buffer = self._buffer, []
            self._queue = []
            self._learn(batch)

    def _learn(self, batch: list[tuple[list[int], float]]) -> None:
        rewards = torch.tensor([r for _, r in batch], dtype=torch.float)
        mean = float(rewards.mean())
        baseline = mean if self.baseline is None else self.baseline
        advantages = rewards - baseline
        if self.settings["normalize"] and len(batch) > 1:
            std = float(rewards.std(unbiased=False))
            advantages = advantages / std if std > 1e-8 else torch.zeros_like(advantages)
        decay = self.settings["baseline_decay"]
        self.baseline = mean if self.baseline is None else decay * self.baseline + (1 - decay) * mean
        decisions = torch.tensor([d for d, _ in batch], dtype=torch.long)
        masks = torch.stack([self._masks(d) for d, _ in batch])
        self._sampled.clear()
        self._update(decisions, masks, advantages)
        self.stats["updates"] += 1

    def _masks(self, decisions: Sequence[int]) -> torch.Tensor:
        sampled = self._sampled.get(tuple(decisions))
        return valid_masks(self.space, [decisions], self.policy.max_size)[0] if sampled is None else sampled[1]

    def _update(self, decisions: torch.Tensor, masks: torch.Tensor, advantages: torch.Tensor) -> None:
        raise NotImplementedError

    def _step(self, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):
            logger.warning("%s: non-finite loss %s; update skipped", self.name, loss.item())
            return
        self.optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.policy.parameters(), self.settings["grad_clip"])
        self.optimizer.step()

    def _algorithm_state(self) -> dict[str, Any]:
        return {"policy": {k: v.clone() for k, v in self.policy.state_dict().items()},
                "optimizer": copy.deepcopy(self.optimizer.state_dict()), "generator": self.generator.get_state(),
                "queue": [list(d) for d in self._queue], "buffer": [[list(d), r] for d, r in self._buffer],
                "baseline": self.baseline}

    def _load_algorithm_state(self, state: Mapping[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(torch.as_tensor(state["generator"], dtype=torch.uint8))
        self._queue = [[int(x) for x in d] for d in state["queue"]]
        self._buffer = [([int(x) for x in d], float(r)) for d, r in state["buffer"]]
        self.baseline = None if state["baseline"] is None else float(state["baseline"])
