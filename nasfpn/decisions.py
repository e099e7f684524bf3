"""The decision sequence of a search space, position by position: what one position is
(:class:`Decision`), the cursor that replays a partial sequence and says which options are valid
next (:class:`Walk`: what :meth:`SearchSpace.decode`, ``sample``, ``mutate`` and the controllers'
masks run on), and the error both report (:class:`SpaceError`). :mod:`nasfpn.space` holds the
space itself and imports these; plain Python, no torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .genotype import Genotype, Node
from .vocabulary import COMBINES, LATERALS, OPS

if TYPE_CHECKING:  # annotations only: the space imports this module
    from .space import SearchSpace

CHOOSABLE = ("lateral", "extra", "downsample", "activation", "unused")


class SpaceError(ValueError):
    """A search-space file that is malformed; the message names the field."""


@dataclass(frozen=True)
class Decision:
    """One position of the decision sequence: its kind (``input``, ``level``...), the node slot
    (or output level index) it belongs to, and how many options it has."""
    kind: str
    slot: int
    size: int
    detail: str = ""


class Walk:
    """The state of a partly made decision sequence (what :class:`SearchSpace` replays)."""

    def __init__(self, space: SearchSpace):
        self.space = space
        self.decisions: list[int] = []
        self.fields: dict[str, Any] = {}
        self.num_nodes = space.min_nodes
        self.nodes: list[dict[str, Any]] = [{"k": space.inputs[0], "inputs": [], "level": None,
                                             "combine": space.combines[0], "op": space.ops[0]}
                                            for _ in range(space.max_nodes)]
        self.outputs: dict[int, int] = {}
        self._template: Genotype | None = None  # cached: rebuilt only when a field is chosen
        self._choices: tuple[int, tuple[int, ...]] | None = None  # (position, its valid options)

    @property
    def done(self) -> bool:
        return len(self.decisions) == len(self.space.decisions)

    @property
    def template(self) -> Genotype:
        if self._template is None:
            self._template = self.space.template.replace(**self.fields)
        return self._template

    def choices(self) -> list[int]:
        position = len(self.decisions)
        if self._choices is None or self._choices[0] != position:
            self._choices = (position, tuple(self._choices_now()))
        return list(self._choices[1])

    def _choices_now(self) -> list[int]:
        space, d = self.space, self.space.decisions[len(self.decisions)]
        if d.kind == "choose":
            return [c for c, option in enumerate(space.choose[d.detail]) if self._compatible(d.detail, option)]
        if d.kind == "num_nodes":
            return list(range(d.size))
        if d.kind == "output":
            level = space.levels[d.slot]
            if level not in self.template.cell_levels:
                return [0]
            L = len(space.levels)
            return [d.slot] + [L + i for i in range(self.num_nodes) if self.nodes[i]["level"] == level]
        i = d.slot
        if i >= self.num_nodes:
            return [0]
        node = self.nodes[i]
        if d.kind == "num_inputs":
            return list(range(d.size))
        if d.kind == "input":
            if int(d.detail) >= node["k"]:
                return [0]
            cell = set(self.template.cell_levels)
            L = len(space.levels)
            pool = [k for k, lv in enumerate(space.levels) if lv in cell] + list(range(L, L + len(space.raw) + i))
            return [p for p in pool if p not in node["inputs"]]
        if d.kind == "level":
            levels = self.template.cell_levels
            if space.outputs == "last" and i >= self.num_nodes - len(levels):
                first = self.num_nodes - len(levels)
                taken = {self.nodes[j]["level"] for j in range(first, i)}
                levels = [lv for lv in levels if lv not in taken]
            return [space.levels.index(lv) for lv in levels]
        if d.kind == "combine":
            return [c for c, name in enumerate(space.combines) if node["k"] in COMBINES[name].arity]
        inputs = [space.input_name(p) for p in node["inputs"]]  # op: one that reads a raw feature needs one
        return [c for c, name in enumerate(space.ops) if not OPS[name].input_problem(inputs, space.raw, node["level"])]

    def _compatible(self, key: str, option: Any) -> bool:
        """Whether a field option agrees with the fields already fixed or chosen."""
        settled = {k: getattr(self.template, k) for k in CHOOSABLE if k not in self.space.choose or k in self.fields}
        settled[key] = option
        lateral, extra = settled.get("lateral"), settled.get("extra")
        return not (extra is not None and extra.source == "lateral" and not LATERALS[lateral].shared)

    def step(self, choice: int) -> None:
        valid = self.choices()
        d = self.space.decisions[len(self.decisions)]
        if choice not in valid:
            where = f"decision {len(self.decisions)} ({d.kind}{'' if d.kind in ('choose', 'num_nodes') else f', slot {d.slot}'})"
            raise SpaceError(f"{where}: {choice!r} is not a valid option; valid: {valid}")
        self.decisions.append(choice)
        space = self.space
        if d.kind == "choose":
            self.fields[d.detail] = space.choose[d.detail][choice]
            self._template = None
        elif d.kind == "num_nodes":
            self.num_nodes = space.min_nodes + choice
        elif d.kind == "output":
            self.outputs[d.slot] = choice
        elif d.slot < self.num_nodes:
            node = self.nodes[d.slot]
            if d.kind == "num_inputs":
                node["k"] = space.inputs[choice]
            elif d.kind == "input" and int(d.detail) < node["k"]:
                node["inputs"].append(choice)
            elif d.kind == "level":
                node["level"] = space.levels[choice]
            elif d.kind == "combine":
                node["combine"] = space.combines[choice]
            elif d.kind == "op":
                node["op"] = space.ops[choice]

    def genotype(self) -> Genotype:
        space, template = self.space, self.template
        L = len(space.levels)

        def name(p: int) -> str:  # of an output pick
            return f"P{space.levels[p]}" if p < L else f"n{p - L}"

        nodes = tuple(Node(tuple(space.input_name(p) for p in node["inputs"]), node["level"], node["combine"], node["op"])
                      for node in self.nodes[: self.num_nodes])
        if space.outputs == "last":
            last = {nodes[i].level: f"n{i}" for i in range(self.num_nodes - len(template.cell_levels), self.num_nodes)}
            outputs = tuple(last[lv] for lv in template.cell_levels)
        else:
            outputs = tuple(name(self.outputs[space.levels.index(lv)]) for lv in template.cell_levels)
        return template.replace(nodes=nodes, outputs=outputs, name="").validate()
