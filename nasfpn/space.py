"""Search spaces: which genotypes may be sampled, as a fixed-length sequence of choices.

A space (YAML under ``search_spaces/``) fixes some genotype fields, lets the controller choose
others, and describes the nodes. A genotype is written as decisions in this order:

1. one decision per field under ``choose`` (e.g. ``lateral``), in the order given;
2. the number of nodes, when ``nodes`` is a range;
3. per node slot ``i`` (up to the maximum): its number of inputs (when there is a choice), one
   pick per input slot, its level, its combine, its op (the last two when there is a choice);
4. with ``outputs: any``, one pick per level: which input or node gives that output. With
   ``outputs: last`` (the NAS-FPN paper's rule), the last nodes are the outputs, their levels
   a permutation of the cell levels, and no decision is spent on them.

Input and output picks index a pool: the space's levels as cell inputs ``P{level}`` first, then
node ``n{i}`` at ``len(levels) + i``. A space with ``raw_inputs`` (backbone levels) also lets
nodes read those raw backbone features: input picks then index ``C{level}`` after the cell
inputs and the nodes after those (output picks are unchanged); without it the layout is as it
was, so the encodings of existing spaces do not move. An op that reads a raw feature (``rfa``)
is offered only to a node reading one at its level. Every position has a fixed number of options
(:attr:`SearchSpace.decision_sizes`); which of them are valid depends on the earlier decisions
(:meth:`SearchSpace.valid_choices`), and a decision with no choice left (an unused input slot,
a slot past the last node) must be 0. Every valid sequence decodes to a valid genotype. Plain
Python: no torch, no Ray.
"""
from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from .decisions import CHOOSABLE, Decision, SpaceError, Walk
from .genotype import ExtraLevels, Genotype, GenotypeError, topological
from .shipped import REFERENCE_DIR, file_or_shipped, yaml_problem, yaml_stems
from .vocabulary import COMBINES, EXTRA_OPS, MAX_INPUTS, OPS, count_text, mergeable_counts

SPACE_KEYS = ("name", "description", "cell", "choose", "nodes", "inputs", "combines", "ops", "raw_inputs", "outputs")


class SearchSpace:
    """A space of genotypes as decisions. See the module docstring for the layout.

    Args:
        cell: fixed genotype fields (``levels``, ``repeats``, ``width`` and any of ``lateral``,
            ``extra``, ``downsample``, ``activation``, ``unused``).
        choose: fields the controller picks, each with its list of options.
        nodes: the number of nodes, or ``(min, max)``.
        inputs: the allowed numbers of inputs per node.
        combines, ops: the allowed merges and node ops.
        raw_inputs: backbone levels whose raw features (``C{level}``) nodes may read.
        outputs: ``any`` or ``last``.
        name: for reports.
    """

    def __init__(self, *, cell: Mapping[str, Any], choose: Mapping[str, Sequence[Any]] | None = None,
                 nodes: int | Sequence[int] = 7, inputs: Sequence[int] = (2,),
                 combines: Sequence[str] = ("sum", "global_attention"), ops: Sequence[str] = ("relu_conv_bn",),
                 raw_inputs: Sequence[int] = (), outputs: str = "any", name: str = ""):
        self.name = name
        choose = dict(choose or {})
        for key in choose:
            if key not in CHOOSABLE:
                raise SpaceError(f"choose: {key!r} cannot be chosen; choosable fields are {list(CHOOSABLE)}")
            if key in cell:
                raise SpaceError(f"choose: {key!r} is also fixed under cell")
            if not isinstance(choose[key], (list, tuple)) or not choose[key]:
                raise SpaceError(f"choose.{key}: must be a non-empty list of options")
        # Every option is checked by building a template genotype with it.
        self.template = self._template({**cell, **{k: v[0] for k, v in choose.items()}})
        self.choose = {key: tuple(self._option(key, v) for v in values) for key, values in choose.items()}
        self.min_nodes, self.max_nodes = (nodes, nodes) if isinstance(nodes, int) else tuple(nodes)
        if not (isinstance(self.min_nodes, int) and isinstance(self.max_nodes, int) and 1 <= self.min_nodes <= self.max_nodes):
            raise SpaceError(f"nodes: must be a positive integer or [min, max], got {nodes!r}")
        self.inputs = tuple(inputs)
        if not self.inputs or not all(isinstance(k, int) and 1 <= k <= MAX_INPUTS for k in self.inputs):
            raise SpaceError(f"inputs: must list input counts between 1 and {MAX_INPUTS}, got {list(inputs)!r}")
        self.combines, self.ops = tuple(combines), tuple(ops)
        for key, values, known in (("combines", self.combines, COMBINES), ("ops", self.ops, OPS)):
            bad = [v for v in values if not isinstance(v, str) or v not in known] or ([] if values else ["(empty)"])
            if bad:
                raise SpaceError(f"{key}: unknown {bad}; choose from {list(known)}")
        mergeable = mergeable_counts(self.combines)
        if not set(self.inputs) <= set(mergeable):
            raise SpaceError(f"inputs: combines {list(self.combines)} merge {count_text(mergeable)} inputs, "
                             f"so inputs must be among {list(mergeable)}")
        if outputs not in ("any", "last"):
            raise SpaceError(f"outputs: must be 'any' or 'last', got {outputs!r}")
        self.outputs = outputs
        self.levels = self.template.levels
        self._check_raw(raw_inputs)
        if outputs == "last":
            too_few = [g for g in self._all_templates() if len(g.cell_levels) > self.min_nodes]
            if too_few:
                raise SpaceError(f"nodes: outputs 'last' needs at least {len(too_few[0].cell_levels)} nodes")
        self.decisions = self._layout()

    # --- construction helpers -------------------------------------------------------------
    def _check_raw(self, raw_inputs: Sequence[int]) -> None:
        self.raw_inputs = tuple(raw_inputs) if isinstance(raw_inputs, (list, tuple)) else (None,)
        backbone = self.template.backbone_levels
        if not set(self.raw_inputs) <= set(backbone) or len(set(self.raw_inputs)) < len(self.raw_inputs):
            raise SpaceError(f"raw_inputs: must list distinct backbone levels of {list(backbone)}, got {raw_inputs!r}")
        self.raw = {f"C{lv}": lv for lv in self.raw_inputs}  # name -> level
        raw_ops = [op for op in self.ops if OPS[op].reads_backbone]
        if raw_ops and (not self.raw or 1 not in self.inputs or len(raw_ops) == len(self.ops)):
            raise SpaceError(f"ops: {raw_ops} read one raw backbone feature: the space needs raw_inputs, 1 among "
                             f"inputs, and another op for the nodes that read cell inputs")

    def input_name(self, pick: int) -> str:
        """The name an input pick stands for: ``P{level}``, then ``C{level}``, then ``n{i}``."""
        L, R = len(self.levels), len(self.raw_inputs)
        return f"P{self.levels[pick]}" if pick < L else f"C{self.raw_inputs[pick - L]}" if pick < L + R else f"n{pick - L - R}"

    @staticmethod
    def _template(cell: Mapping[str, Any]) -> Genotype:
        if "levels" not in cell:
            raise SpaceError("cell.levels: missing")
        data = dict(cell)
        data.setdefault("nodes", [{"inputs": [f"P{cell['levels'][0]}"], "level": cell["levels"][0]}])
        data.setdefault("outputs", {})
        try:
            template = Genotype.from_dict({**data, "outputs": {lv: f"P{lv}" for lv in _levels(data)}})
        except GenotypeError as err:
            raise SpaceError(f"cell: {err}") from None
        return template

    def _option(self, key: str, value: Any) -> Any:
        data = {**self.template.to_dict(), key: value}
        data["outputs"] = {lv: f"P{lv}" for lv in _levels(data)}
        try:
            option = getattr(Genotype.from_dict(data), key)
        except GenotypeError as err:
            raise SpaceError(f"choose.{key}: option {value!r}: {err}") from None
        if key == "extra" and option.source == "backbone" and option.ops and EXTRA_OPS[option.ops[0]].keeps_channels:
            raise SpaceError(f"choose.extra: option {value!r}: {option.ops[0]!r} on the backbone's C5 cannot "
                             f"change its channels to the width; use one of "
                             f"{[name for name, op in EXTRA_OPS.items() if not op.keeps_channels]}")
        if key == "extra" and len(option.ops) != len(self.template.extra.ops):
            raise SpaceError(f"choose.extra: option {value!r} makes {len(option.ops)} extra levels, "
                             f"the cell makes {len(self.template.extra.ops)}")
        return option

    def _all_templates(self) -> list[Genotype]:
        return [self.template.replace(extra=e) for e in self.choose.get("extra", (self.template.extra,))]

    def _layout(self) -> tuple[Decision, ...]:
        L, pool = len(self.levels), len(self.levels) + len(self.raw_inputs) + self.max_nodes - 1
        out: list[Decision] = [Decision("choose", 0, len(v), k) for k, v in self.choose.items()]
        if self.min_nodes < self.max_nodes:
            out.append(Decision("num_nodes", 0, self.max_nodes - self.min_nodes + 1))
        for i in range(self.max_nodes):
            if len(self.inputs) > 1:
                out.append(Decision("num_inputs", i, len(self.inputs)))
            out += [Decision("input", i, pool, str(j)) for j in range(max(self.inputs))]
            out.append(Decision("level", i, L))
            if len(self.combines) > 1:
                out.append(Decision("combine", i, len(self.combines)))
            if len(self.ops) > 1:
                out.append(Decision("op", i, len(self.ops)))
        if self.outputs == "any":
            out += [Decision("output", k, L + self.max_nodes) for k in range(L)]
        return tuple(out)

    # --- the decision sequence -----------------------------------------------------------
    @property
    def decision_sizes(self) -> tuple[int, ...]:
        return tuple(d.size for d in self.decisions)

    @property
    def decision_kinds(self) -> tuple[str, ...]:
        return tuple(d.kind if d.kind != "choose" else f"choose:{d.detail}" for d in self.decisions)

    def walk(self) -> "Walk":
        """A cursor over the decisions: ``choices()`` then ``step(choice)``, in order."""
        return Walk(self)

    def valid_choices(self, prefix: Sequence[int]) -> list[int]:
        """The valid options of the decision after ``prefix``."""
        walk = self.walk()
        for choice in prefix:
            walk.step(choice)
        return walk.choices()

    def decode(self, decisions: Sequence[int]) -> Genotype:
        """Turn a full decision sequence into a genotype.

        Raises:
            SpaceError: naming the position and kind of the first invalid decision.
        """
        if len(decisions) != len(self.decisions):
            raise SpaceError(f"expected {len(self.decisions)} decisions, got {len(decisions)}")
        walk = self.walk()
        for choice in decisions:
            walk.step(choice)
        return walk.genotype()

    def encode(self, genotype: Genotype) -> list[int]:
        """The decisions that decode to ``genotype`` (its cell: ``repeats``, ``width`` and
        ``name`` are not decisions).

        Raises:
            SpaceError: the genotype is not in this space (the message says why).
        """
        genotype = genotype.validate()
        if self.outputs == "last" and set(genotype.outputs) != {f"n{i}" for i in range(len(genotype.nodes) - len(genotype.outputs), len(genotype.nodes))}:
            genotype = _outputs_last(genotype)
        fixed = self.template
        for key in ("levels", *CHOOSABLE):
            value = getattr(genotype, key)
            if key in self.choose:
                if value not in self.choose[key]:
                    raise SpaceError(f"{key} {_show(value)} is not among the space's options")
            elif value != getattr(fixed, key):
                raise SpaceError(f"{key} {_show(value)} differs from the space's {_show(getattr(fixed, key))}")
        if genotype.recursion != fixed.recursion:  # not a decision: every cell of a space has the template's
            have = "none" if genotype.recursion is None else genotype.recursion.label()
            raise SpaceError(f"recursion {have} differs from the space's "
                             f"{'none' if fixed.recursion is None else fixed.recursion.label()}")
        n = len(genotype.nodes)
        if not self.min_nodes <= n <= self.max_nodes:
            raise SpaceError(f"{n} nodes; the space has {self.min_nodes} to {self.max_nodes}")
        L = len(self.levels)
        pool = {self.input_name(p): p for p in range(L + len(self.raw_inputs) + n)}
        out_pool = {f"P{lv}": k for k, lv in enumerate(self.levels)} | {f"n{i}": L + i for i in range(n)}
        strange = [name for node in genotype.nodes for name in node.inputs if name not in pool]
        if strange:
            raise SpaceError(f"input {strange[0]!r} is not among the space's inputs {list(pool)[:-n]}")
        decisions: list[int] = []
        for d in self.decisions:
            node = genotype.nodes[d.slot] if d.kind not in ("choose", "num_nodes", "output") and d.slot < n else None
            if d.kind == "choose":
                decisions.append(self.choose[d.detail].index(getattr(genotype, d.detail)))
            elif d.kind == "num_nodes":
                decisions.append(n - self.min_nodes)
            elif node is None and d.kind != "output":
                decisions.append(0)
            elif d.kind == "num_inputs":
                decisions.append(_index(self.inputs, len(node.inputs), f"node n{d.slot}: {len(node.inputs)} inputs"))
            elif d.kind == "input":
                j = int(d.detail)
                decisions.append(pool[node.inputs[j]] if j < len(node.inputs) else 0)
            elif d.kind == "level":
                decisions.append(self.levels.index(node.level))
            elif d.kind == "combine":
                decisions.append(_index(self.combines, node.combine, f"node n{d.slot}: combine"))
            elif d.kind == "op":
                decisions.append(_index(self.ops, node.op, f"node n{d.slot}: op"))
            else:  # output
                level = self.levels[d.slot]
                decisions.append(out_pool[genotype.output_of(level)] if level in genotype.cell_levels else 0)
        try:
            decoded = self.decode(decisions)
        except SpaceError as err:
            raise SpaceError(f"not in the space: {err}") from None
        if decoded.replace(repeats=genotype.repeats, width=genotype.width, name=genotype.name) != genotype:
            raise SpaceError("not in the space: its decisions decode to a different genotype")
        return decisions

    def contains(self, genotype: Genotype) -> bool:
        """Whether ``genotype``'s cell, as spelled, is in this space."""
        try:
            self.encode(genotype)
        except (SpaceError, GenotypeError):
            return False
        return True

    def sample(self, rng: random.Random | int | None = None) -> list[int]:
        """A decision sequence, each decision drawn uniformly from its valid options."""
        rng = rng if isinstance(rng, random.Random) else random.Random(rng)
        walk = self.walk()
        while not walk.done:
            walk.step(rng.choice(walk.choices()))
        return walk.decisions

    def mutate(self, decisions: Sequence[int], rng: random.Random | int | None = None) -> list[int]:
        """Change one decision that has another valid option; later decisions that the change
        made invalid are redrawn uniformly (regularised evolution's mutation)."""
        rng = rng if isinstance(rng, random.Random) else random.Random(rng)
        walk, options = self.walk(), []
        for position, choice in enumerate(decisions):
            if len(walk.choices()) > 1:
                options.append(position)
            walk.step(choice)
        if not options:
            return list(decisions)
        target = rng.choice(options)
        walk = self.walk()
        for position, choice in enumerate(decisions):
            valid = walk.choices()
            if position == target:
                choice = rng.choice([c for c in valid if c != choice])
            elif choice not in valid:
                choice = rng.choice(valid)
            walk.step(choice)
        return walk.decisions

    def log10_size(self, samples: int = 2000, seed: int = 0) -> float:
        """log10 of the number of valid decision sequences, by Knuth's estimator (the mean over
        random walks of the product of the branching factors along the walk; unbiased)."""
        rng = random.Random(seed)
        logs = []
        for _ in range(samples):
            walk, log = self.walk(), 0.0
            while not walk.done:
                valid = walk.choices()
                log += math.log10(len(valid))
                walk.step(rng.choice(valid))
            logs.append(log)
        top = max(logs)
        return top + math.log10(sum(10 ** (x - top) for x in logs) / len(logs))

    def __repr__(self) -> str:
        return (f"SearchSpace({self.name!r}, nodes={self.min_nodes}..{self.max_nodes}, inputs={list(self.inputs)}, "
                f"combines={list(self.combines)}, ops={list(self.ops)}, outputs={self.outputs!r}, "
                f"choose={list(self.choose)}, decisions={len(self.decisions)})")



def _outputs_last(genotype: Genotype) -> Genotype:
    """The same graph with the output nodes moved after the others where dependencies allow."""
    outs = set(genotype.outputs)
    order = sorted(range(len(genotype.nodes)), key=lambda i: f"n{i}" in outs)
    try:
        return topological(genotype.renumbered(order))
    except GenotypeError:
        return genotype


def _index(options: Sequence[Any], value: Any, what: str) -> int:
    if value not in options:
        raise SpaceError(f"{what} {value!r} is not among the space's options {list(options)}")
    return options.index(value)


def _levels(data: Mapping[str, Any]) -> list[int]:
    levels = data.get("levels")
    if not isinstance(levels, list) or not levels:
        raise SpaceError(f"cell.levels: must be a list of levels, got {levels!r}")
    extra = data.get("extra", {}) or {}
    n_extra = len(extra.get("ops", [])) if isinstance(extra, Mapping) else 0
    return levels if extra.get("source", "output") != "output" else levels[: len(levels) - n_extra]


def _show(value: Any) -> str:
    if isinstance(value, ExtraLevels):
        return f"{{source: {value.source}, ops: {list(value.ops)}}}"
    return repr(list(value) if isinstance(value, tuple) else value)


def space_names() -> list[str]:
    """Names of the spaces shipped under ``search_spaces/`` (``<name>_space.yaml``)."""
    return sorted(name[: -len("_space")] for name in yaml_stems(REFERENCE_DIR) if name.endswith("_space"))


def load_space(path_or_name: str | Path) -> SearchSpace:
    """Load a search space from YAML, or a shipped one by name (``nasfpn``, ``wide``).

    Raises:
        SpaceError: naming the file and the bad field.
    """
    try:
        path = file_or_shipped(path_or_name, REFERENCE_DIR, "space", space_names, suffix="_space.yaml")
    except ValueError as err:
        raise SpaceError(str(err)) from None
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SpaceError(f"{path}: not valid YAML: {yaml_problem(err)}") from None
    try:
        return space_from_dict(data)
    except SpaceError as err:
        raise SpaceError(f"{path}: {err}") from None


def space_from_dict(data: Any) -> SearchSpace:
    if not isinstance(data, Mapping):
        raise SpaceError("a search space must be a mapping")
    unknown = sorted(set(map(str, data)) - set(SPACE_KEYS))
    if unknown:
        raise SpaceError(f"unknown key(s) {unknown}; valid keys are {list(SPACE_KEYS)}")
    if not isinstance(data.get("cell"), Mapping):
        raise SpaceError("cell: missing (the fixed genotype fields: levels, repeats, width, ...)")
    kwargs = {k: data[k] for k in ("choose", "nodes", "inputs", "combines", "ops", "raw_inputs", "outputs") if k in data}
    return SearchSpace(cell=data["cell"], name=str(data.get("name", "")), **kwargs)
