"""The genotype: a neck topology as plain data.

A genotype is the only picture of a topology in this project: the search spaces, the
controllers, the builder (:func:`nasfpn.build_neck`), the exporter and the drawings all read
it, and none keeps a private rule of its own. The rules of the language are all here, in words
below and in code in this module (:meth:`Genotype.validate`, :func:`spell_out_unused`,
:func:`topological`); the words themselves (ops, combines, laterals, extra-level ops,
downsampling) are records of :mod:`nasfpn.vocabulary`.

* ``levels``: the pyramid levels the neck returns, ascending and consecutive, e.g. ``(3..7)``.
* The backbone provides the lowest ``len(levels) - len(extra.ops)`` of them (C3..C5).
* ``lateral``: how backbone features become ``width`` channels.
  ``conv``: a 1x1 conv with bias (torchvision's FPN); ``conv_bn``: a 1x1 conv without bias + BN
  (NAS-FPN); ``edge_conv_bn``: no shared lateral: in the first cell every edge that reads a
  backbone feature whose channels differ from ``width`` has its own 1x1 conv + BN (EfficientDet).
* ``extra``: how the levels the backbone lacks are made, each from the one below it.
  ``source`` is where the first comes from: ``backbone`` (the raw top feature, C5),
  ``lateral`` (the top cell input, P5; not with ``edge_conv_bn``, which has no shared lateral)
  or ``output`` (the neck's top output, after the last cell, as torchvision's RetinaNet does).
  ``ops``, one per missing level: ``conv`` (3x3 stride-2 conv), ``relu_conv`` (ReLU then that
  conv), ``pool`` (2x2 max-pool), ``proj_pool`` (1x1 conv + BN, then 2x2 max-pool).
* Cell inputs are named ``P{level}``: every level, or only the backbone's when
  ``extra.source`` is ``output``; those are the *cell levels*. Node ``i`` is named ``n{i}``.
* Raw inputs are the backbone's own features, ``C{level}`` for each backbone level, at the
  backbone's channels and the same in every cell. A node may read them like any name (an op at
  the width reads one of another width through its own 1x1 conv + BN); an op that reads a raw
  feature itself (``rfa``) reads exactly one, at its own level. No output names one, and the
  ``unused`` rule never adds one (see :class:`nasfpn.vocabulary.Op`).
* A node reads 1 to 3 distinct, earlier names (``inputs``), resamples each to its ``level``
  (nearest upsampling to the exact size going finer; going coarser a max-pool, or with
  ``downsample: conv`` a stride-2 3x3 conv per edge), merges them with ``combine`` and applies
  ``op``. ``global_attention`` (and ``global_attention_avg``) merge exactly two inputs, the
  coarser as ``hi`` (on a tie, the first listed).
* ``outputs``: one name per cell level, giving that level's output.
* ``unused``: what happens to a node or cell input that no node reads and no output names.
  ``drop``: it is not computed. ``sum`` (NAS-FPN's rule): it is added to the output of its level
  before that output's op, if it is listed before that output node (cell inputs always are;
  an output that is itself a cell input takes every unread node of its level); otherwise it is
  dropped. Nodes reading that output see the sum. :meth:`Genotype.spelled_out` writes the rule
  out as explicit nodes, and the builder, exporter and drawings work from that.
* ``repeats``: the cell is stacked this many times, without sharing weights; cell ``k+1`` reads
  cell ``k``'s outputs as its inputs.
* ``activation``: the activation before ``sepconv_bn`` (``relu`` or ``swish``).
* ``recursion`` (optional): DetectoRS' recursive feature pyramid, the outputs fed back into the
  backbone and the same neck run again; its rules are in :mod:`nasfpn.recursion`.
* ``name``: free text for reports; not part of a genotype's identity or hash.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Mapping, Sequence

import yaml

from .canonical import canonical_form, canonical_hash
from .recursion import Recursion
from .shipped import REFERENCE_DIR, file_or_shipped, yaml_problem, yaml_stems
from .vocabulary import COMBINES, DOWNSAMPLES, EXTRA_OPS, LATERALS, MAX_INPUTS, OPS

# The fields that are choices of the language rather than words of its vocabulary.
EXTRA_SOURCES = ("backbone", "lateral", "output")
ACTIVATIONS = ("relu", "swish")
UNUSED_RULES = ("drop", "sum")


class GenotypeError(ValueError):
    """A genotype that breaks a rule of the language; the message names the node and field."""


@dataclass(frozen=True)
class Node:
    inputs: tuple[str, ...]
    level: int
    combine: str = "sum"
    op: str = "none"


@dataclass(frozen=True)
class ExtraLevels:
    source: str = "output"
    ops: tuple[str, ...] = ()


@dataclass(frozen=True)
class Genotype:
    levels: tuple[int, ...]
    nodes: tuple[Node, ...]
    outputs: tuple[str, ...]
    extra: ExtraLevels = ExtraLevels()
    lateral: str = "conv"
    downsample: str = "pool"
    activation: str = "relu"
    unused: str = "drop"
    repeats: int = 1
    width: int = 256
    recursion: Recursion | None = None
    name: str = field(default="", compare=False)

    # --- derived facts -------------------------------------------------------------------
    @property
    def backbone_levels(self) -> tuple[int, ...]:
        return self.levels[: len(self.levels) - len(self.extra.ops)]

    @property
    def extra_levels(self) -> tuple[int, ...]:
        return self.levels[len(self.levels) - len(self.extra.ops):]

    @property
    def cell_levels(self) -> tuple[int, ...]:
        return self.backbone_levels if self.extra.source == "output" else self.levels

    @property
    def cell_inputs(self) -> tuple[str, ...]:
        return tuple(f"P{level}" for level in self.cell_levels)

    @property
    def raw_inputs(self) -> tuple[str, ...]:
        return tuple(f"C{level}" for level in self.backbone_levels)

    def level_of(self, name: str) -> int:
        """The level of a cell input (``P4``), raw input (``C5``) or node (``n2``)."""
        if name.startswith(("P", "C")):
            return int(name[1:])
        return self.nodes[int(name[1:])].level

    def output_of(self, level: int) -> str:
        return self.outputs[self.cell_levels.index(level)]

    def replace(self, **changes: Any) -> "Genotype":
        return dataclasses.replace(self, **changes)

    # --- validation ----------------------------------------------------------------------
    def validate(self) -> "Genotype":
        """Check every rule of the language; return ``self``.

        Raises:
            GenotypeError: naming the node (``n3``) or field (``extra.ops``) that is wrong.
        """
        self._check_fields()
        if not self.nodes:
            raise GenotypeError("nodes: the node list is empty")
        known = {name: level for name, level in zip(self.cell_inputs, self.cell_levels)}
        raw = dict(zip(self.raw_inputs, self.backbone_levels))
        for i, node in enumerate(self.nodes):
            where = f"node n{i}"
            if not _is_int(node.level) or node.level not in self.cell_levels:
                raise GenotypeError(f"{where}: level {node.level!r} is not one of the cell levels "
                                    f"{list(self.cell_levels)}")
            _check_choice(node.combine, COMBINES, f"{where}: combine")
            _check_choice(node.op, OPS, f"{where}: op")
            if not isinstance(node.inputs, tuple) or not 1 <= len(node.inputs) <= MAX_INPUTS:
                raise GenotypeError(f"{where}: inputs must list 1 to {MAX_INPUTS} names, got {node.inputs!r}")
            for name in node.inputs:
                if not isinstance(name, str):
                    raise GenotypeError(f"{where}: inputs: {name!r} is not a name")
                if name not in known and name not in raw:
                    later = name.startswith("n") and name[1:].isdigit() and int(name[1:]) < len(self.nodes)
                    why = "is this node or a later one (a cycle)" if later else "does not exist"
                    if name.startswith("C"):
                        why = f"is not a feature the backbone gives ({list(raw)})"
                    raise GenotypeError(f"{where}: input {name!r} {why}; it may read "
                                        f"{sorted([*known, *raw], key=_name_order)}")
            if len(set(node.inputs)) != len(node.inputs):
                raise GenotypeError(f"{where}: inputs {list(node.inputs)} name the same input twice")
            if len(node.inputs) not in COMBINES[node.combine].arity:
                raise GenotypeError(f"{where}: combine {node.combine!r} merges "
                                    f"{COMBINES[node.combine].arity_text()} inputs, got {len(node.inputs)}")
            problem = OPS[node.op].input_problem(node.inputs, raw, node.level)
            if problem:
                raise GenotypeError(f"{where}: op: {problem}")
            known[f"n{i}"] = node.level
        if len(self.outputs) != len(self.cell_levels):
            raise GenotypeError(f"outputs: one output per cell level {list(self.cell_levels)} is needed, "
                                f"got {len(self.outputs)}")
        for level, name in zip(self.cell_levels, self.outputs):
            if name not in known:
                why = "a raw backbone feature, not a cell input or node" if name in raw else "which does not exist"
                raise GenotypeError(f"outputs: level {level} names {name!r}, {why}")
            if known[name] != level:
                raise GenotypeError(f"outputs: level {level} names {name!r}, which is at level {known[name]}")
        return self

    def _check_fields(self) -> None:
        """The fields other than nodes and outputs (checked first: the rest depends on them)."""
        _check_choice(self.lateral, LATERALS, "lateral")
        _check_choice(self.downsample, DOWNSAMPLES, "downsample")
        _check_choice(self.activation, ACTIVATIONS, "activation")
        _check_choice(self.unused, UNUSED_RULES, "unused")
        _check_choice(self.extra.source, EXTRA_SOURCES, "extra.source")
        for i, op in enumerate(self.extra.ops):
            _check_choice(op, EXTRA_OPS, f"extra.ops[{i}]")
        for key in ("repeats", "width"):
            value = getattr(self, key)
            if not _is_int(value) or value < 1:
                raise GenotypeError(f"{key}: must be a positive integer, got {value!r}")
        levels = self.levels
        if not levels or not all(_is_int(lv) and lv >= 1 for lv in levels):
            raise GenotypeError(f"levels: must be a non-empty list of positive integers, got {list(levels)!r}")
        if list(levels) != list(range(levels[0], levels[0] + len(levels))):
            raise GenotypeError(f"levels: must be ascending and consecutive, got {list(levels)!r}")
        if self.extra.source == "lateral" and not LATERALS[self.lateral].shared:
            raise GenotypeError(f"extra.source: 'lateral' needs a shared lateral to start from, and "
                                f"lateral {self.lateral!r} has none; use 'backbone' (EfficientDet's way)")
        if len(self.extra.ops) >= len(levels):
            raise GenotypeError(
                f"extra.ops: {len(self.extra.ops)} extra levels leave no backbone level in {list(levels)}")
        problem = "" if self.recursion is None else self.recursion.problem(self.backbone_levels)
        if problem:
            raise GenotypeError(problem)

    # --- derived forms ----------------------------------------------------------------------
    def spelled_out(self) -> "Genotype":
        """This genotype with the ``unused: sum`` rule written as explicit nodes (the builder,
        exporter and drawings work from this; node order is otherwise kept)."""
        return spell_out_unused(self.validate())

    def renumbered(self, order: Sequence[int]) -> "Genotype":
        """The same graph with its nodes listed in ``order`` (old indices), names renumbered."""
        rename = {f"n{old}": f"n{new}" for new, old in enumerate(order)}
        nodes = tuple(dataclasses.replace(self.nodes[i], inputs=tuple(rename.get(n, n) for n in self.nodes[i].inputs))
                      for i in order)
        return self.replace(nodes=nodes, outputs=tuple(rename.get(n, n) for n in self.outputs))

    def canonical(self) -> "Genotype":
        """The same graph in one spelling: the ``unused`` rule spelled out as nodes, dead nodes
        dropped, independent nodes ordered by structure, and fields with no effect reset.
        (A cell whose outputs are all cell inputs has no live node: its canonical form has an
        empty node list, which identifies it but is not itself a valid genotype.)"""
        return canonical_form(self)

    def hash(self) -> str:
        """A stable hex digest of the canonical form (the name is not part of it)."""
        return canonical_hash(self)

    def live_nodes(self) -> set[int]:
        """Indices of the nodes an output depends on (with ``unused: sum``, every node)."""
        if self.unused == "sum":
            return set(range(len(self.nodes)))
        live: set[int] = set()
        stack = [n for n in self.outputs if n.startswith("n")]
        while stack:
            i = int(stack.pop()[1:])
            if i not in live:
                live.add(i)
                stack.extend(n for n in self.nodes[i].inputs if n.startswith("n"))
        return live

    def has_downsampling_edge(self) -> bool:
        return any(self.level_of(n) < node.level for node in self.nodes for n in node.inputs)

    # --- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if self.name:
            data["name"] = self.name
        data.update(
            levels=list(self.levels),
            lateral=self.lateral,
            extra={"source": self.extra.source, "ops": list(self.extra.ops)},
            downsample=self.downsample,
            activation=self.activation,
            unused=self.unused,
            repeats=self.repeats,
            width=self.width,
            **({} if self.recursion is None else {"recursion": self.recursion.to_dict()}),
            nodes=[{"inputs": list(n.inputs), "level": n.level, "combine": n.combine, "op": n.op}
                   for n in self.nodes],
            outputs={level: name for level, name in zip(self.cell_levels, self.outputs)},
        )
        return data

    @classmethod
    def from_dict(cls, data: Any) -> "Genotype":
        """Build and validate a genotype from plain data (as loaded from YAML).

        Raises:
            GenotypeError: for unknown keys, wrong types, or any broken rule.
        """
        if not isinstance(data, Mapping):
            raise GenotypeError(f"a genotype must be a mapping, got {type(data).__name__}")
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(map(str, data)) - allowed)
        if unknown:
            raise GenotypeError(f"unknown field(s) {unknown}; valid fields are {sorted(allowed)}")
        for key in ("levels", "nodes", "outputs"):
            if key not in data:
                raise GenotypeError(f"{key}: missing")
        levels = tuple(_list(data["levels"], "levels"))
        extra_data = data.get("extra", {}) or {}
        if not isinstance(extra_data, Mapping) or set(extra_data) - {"source", "ops"}:
            raise GenotypeError(f"extra: must be a mapping with 'source' and 'ops', got {extra_data!r}")
        extra = ExtraLevels(source=_str(extra_data.get("source", "output"), "extra.source"),
                            ops=tuple(_str(op, f"extra.ops[{i}]")
                                      for i, op in enumerate(_list(extra_data.get("ops", []), "extra.ops"))))
        nodes = []
        for i, raw in enumerate(_list(data["nodes"], "nodes")):
            if not isinstance(raw, Mapping):
                raise GenotypeError(f"node n{i}: must be a mapping, got {raw!r}")
            bad = sorted(set(map(str, raw)) - {"inputs", "level", "combine", "op"})
            if bad:
                raise GenotypeError(f"node n{i}: unknown field(s) {bad}; valid: combine, inputs, level, op")
            if "inputs" not in raw or "level" not in raw:
                raise GenotypeError(f"node n{i}: needs 'inputs' and 'level'")
            inputs = raw["inputs"]
            inputs = (inputs,) if isinstance(inputs, str) else tuple(_list(inputs, f"node n{i}: inputs"))
            level = raw["level"]
            if not _is_int(level):
                raise GenotypeError(f"node n{i}: level must be an integer, got {level!r}")
            nodes.append(Node(inputs=inputs, level=level,
                              combine=_str(raw.get("combine", "sum"), f"node n{i}: combine"),
                              op=_str(raw.get("op", "none"), f"node n{i}: op")))
        if not nodes:
            raise GenotypeError("nodes: the node list is empty")
        genotype = cls(
            levels=levels, nodes=tuple(nodes), outputs=(), extra=extra,
            lateral=_str(data.get("lateral", "conv"), "lateral"),
            downsample=_str(data.get("downsample", "pool"), "downsample"),
            activation=_str(data.get("activation", "relu"), "activation"),
            unused=_str(data.get("unused", "drop"), "unused"),
            repeats=data.get("repeats", 1), width=data.get("width", 256), recursion=_recursion(data.get("recursion")),
            name=_str(data.get("name", ""), "name"),
        )
        outputs = data["outputs"]
        if not isinstance(outputs, Mapping):
            raise GenotypeError(f"outputs: must map each level to a name, e.g. {{3: n4}}, got {outputs!r}")
        by_level = {}
        for key, name in outputs.items():
            level = _parse_level(key)
            if level is None:
                raise GenotypeError(f"outputs: key {key!r} is not a level (3 or P3)")
            by_level[level] = _str(name, f"outputs: level {level}")
        genotype._check_fields()
        cell_levels = genotype.cell_levels
        missing = [lv for lv in cell_levels if lv not in by_level]
        if missing:
            raise GenotypeError(f"outputs: no output for level(s) {missing}")
        extra_keys = sorted(set(by_level) - set(cell_levels))
        if extra_keys:
            raise GenotypeError(f"outputs: level(s) {extra_keys} are not cell levels {list(cell_levels)}")
        genotype = genotype.replace(outputs=tuple(by_level[lv] for lv in cell_levels))
        return genotype.validate()

    def to_yaml(self) -> str:
        """YAML with one line per node, the way the shipped references are written."""
        data = self.to_dict()
        data["extra"] = _Flow(data["extra"])
        data["nodes"] = [_Flow(node) for node in data["nodes"]]
        data["outputs"] = _Flow(data["outputs"])
        return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=None, width=120)

    @classmethod
    def from_yaml(cls, text: str, source: str = "<string>") -> "Genotype":
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise GenotypeError(f"{source}: not valid YAML: {yaml_problem(err)}") from None
        try:
            return cls.from_dict(data)
        except GenotypeError as err:
            raise GenotypeError(f"{source}: {err}") from None


# --- the unused rule and the node order --------------------------------------------------------
def spell_out_unused(genotype: Genotype) -> Genotype:
    """Rewrite ``unused: sum`` as explicit nodes: the output node's merge keeps its inputs with
    op ``none``, and a ``sum`` node with the output's op adds the unread features of its level.

    As in Google's NAS-FPN, an output node absorbs the unread features listed before it (cell
    inputs always are); nodes that read the output then read the sum, which carries its op. An
    output that is a cell input absorbs every unread node of its level and stays a plain input
    for its other readers. Ordering by the list keeps this acyclic.
    """
    if genotype.unused != "sum":
        return genotype
    read = {n for node in genotype.nodes for n in node.inputs}
    names = list(genotype.cell_inputs) + [f"n{i}" for i in range(len(genotype.nodes))]
    unread = [n for n in names if n not in read and n not in genotype.outputs]
    nodes = list(genotype.nodes)
    rename: dict[str, str] = {}
    outputs = list(genotype.outputs)
    most = max(COMBINES["sum"].arity)
    for k, (level, out) in enumerate(zip(genotype.cell_levels, genotype.outputs)):
        before = _name_order(out) if out.startswith("n") else (3, 0)
        extra = [n for n in unread if genotype.level_of(n) == level and _name_order(n) < before]
        if not extra:
            continue
        op = "none"
        if out.startswith("n"):
            i = int(out[1:])
            op = nodes[i].op
            nodes[i] = dataclasses.replace(nodes[i], op="none")
        current = out
        while extra:
            take, extra = extra[: most - 1], extra[most - 1:]
            nodes.append(Node((current, *take), level, "sum", "none" if extra else op))
            current = f"n{len(nodes) - 1}"
        if out.startswith("n"):
            rename[out] = current
        outputs[k] = current
    # Readers of a rewritten output node read the sum that now carries its op; the sums are at
    # the end of the list, so the readers move after them by a topological re-sort.
    original = len(genotype.nodes)
    fixed = [dataclasses.replace(node, inputs=tuple(rename.get(n, n) for n in node.inputs)) if j < original else node
             for j, node in enumerate(nodes)]
    return topological(genotype.replace(nodes=tuple(fixed), outputs=tuple(outputs), unused="drop"))


def topological(genotype: Genotype) -> Genotype:
    """Reorder nodes so each comes after its inputs, keeping the listed order where it can
    (names are renumbered to match).

    Raises:
        GenotypeError: the nodes read each other in a cycle.
    """
    deps = {i: {int(n[1:]) for n in node.inputs if n.startswith("n")} for i, node in enumerate(genotype.nodes)}
    order: list[int] = []
    placed: set[int] = set()
    while len(order) < len(deps):
        progress = False
        for i in range(len(deps)):
            if i not in placed and deps[i] <= placed:
                order.append(i)
                placed.add(i)
                progress = True
        if not progress:
            raise GenotypeError("nodes: the graph has a cycle")
    return genotype.renumbered(order)


# --- files -------------------------------------------------------------------------------------
def reference_names() -> list[str]:
    """Names of the genotypes shipped under ``search_spaces/`` (loadable by name)."""
    return sorted(name for name in yaml_stems(REFERENCE_DIR) if not name.endswith("_space"))


def load_genotype(path_or_name: str | Path) -> Genotype:
    """Load a genotype from a YAML file, or a shipped reference by name (``fpn``, ``bifpn``...).

    Raises:
        GenotypeError: the file is missing, not YAML, or breaks a rule (message names the field).
    """
    try:  # the folder also holds the spaces (*_space.yaml): only references are names here
        path = file_or_shipped(path_or_name, REFERENCE_DIR, "reference neck", reference_names)
    except ValueError as err:
        raise GenotypeError(str(err)) from None
    return Genotype.from_yaml(path.read_text(), source=str(path))


def save_genotype(genotype: Genotype, path: str | Path) -> None:
    Path(path).write_text(genotype.to_yaml())


# --- helpers ---------------------------------------------------------------------------------
class _Flow(dict):
    """A mapping written on one line."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Flow, lambda dumper, data: dumper.represent_mapping(
    "tag:yaml.org,2002:map", data.items(), flow_style=True))


def _name_order(name: str) -> tuple[int, int]:
    return ("PCn".index(name[0]), int(name[1:]))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_choice(value: Any, choices: Collection[str], where: str) -> None:
    if not isinstance(value, str) or value not in choices:
        raise GenotypeError(f"{where}: unknown value {value!r}; choose one of {list(choices)}")


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise GenotypeError(f"{where}: must be a string, got {value!r}")
    return value


def _list(value: Any, where: str) -> list:
    if not isinstance(value, (list, tuple)):
        raise GenotypeError(f"{where}: must be a list, got {value!r}")
    return list(value)


def _recursion(value: Any) -> Recursion | None:
    try:
        return None if value is None else Recursion.from_dict(value)
    except (ValueError, TypeError) as err:
        raise GenotypeError(str(err)) from None


def _parse_level(key: Any) -> int | None:
    if _is_int(key):
        return key
    if isinstance(key, str) and key[:1] in "Pp" and key[1:].isdigit():
        return int(key[1:])
    if isinstance(key, str) and key.isdigit():  # a level key after a JSON round trip
        return int(key)
    return None
