"""The canonical form of a genotype: one spelling per graph, so one hash per topology.

Two genotypes that compute the same thing the same way (nodes renumbered, dead nodes added,
independent nodes listed in another order, inputs of a sum swapped, the ``unused: sum`` rule
or its explicit nodes) have the same canonical form. The order is fixed by a structural
signature of each node (a Merkle hash over its inputs), then a topological sort that always
takes the ready node of smallest signature.
"""
from __future__ import annotations

import dataclasses
import hashlib
import heapq
import json
from typing import Any, Mapping

from .genotype import MAX_INPUTS, TWO_INPUT_COMBINES, Genotype, GenotypeError, Node, _name_order


def canonical_form(genotype: Genotype) -> Genotype:
    """See :meth:`Genotype.canonical`."""
    genotype = genotype.spelled_out()
    live = genotype.live_nodes()
    signature: dict[str, str] = {name: name for name in genotype.cell_inputs}
    for i in sorted(live):
        node = genotype.nodes[i]
        inputs = _ordered_inputs(genotype, node, signature)
        signature[f"n{i}"] = _digest([node.level, node.combine, node.op, [signature[n] for n in inputs]])
    # Kahn's algorithm, always taking the ready node of smallest signature.
    readers: dict[int, list[int]] = {i: [] for i in live}
    waiting = {}
    for i in live:
        node_deps = {int(n[1:]) for n in genotype.nodes[i].inputs if n.startswith("n")}
        waiting[i] = len(node_deps)
        for d in node_deps:
            readers[d].append(i)
    ready = [(signature[f"n{i}"], i) for i in live if waiting[i] == 0]
    heapq.heapify(ready)
    rename: dict[str, str] = {name: name for name in genotype.cell_inputs}
    order: list[int] = []
    while ready:
        _, i = heapq.heappop(ready)
        rename[f"n{i}"] = f"n{len(order)}"
        order.append(i)
        for r in readers[i]:
            waiting[r] -= 1
            if waiting[r] == 0:
                heapq.heappush(ready, (signature[f"n{r}"], r))
    nodes = []
    for i in order:
        node = genotype.nodes[i]
        inputs = _ordered_inputs(genotype, node, signature)
        nodes.append(Node(tuple(rename[n] for n in inputs), node.level, node.combine, node.op))
    canonical = genotype.replace(nodes=tuple(nodes), outputs=tuple(rename[n] for n in genotype.outputs))
    if not canonical.has_downsampling_edge():
        canonical = canonical.replace(downsample="pool")
    if not any(node.op == "sepconv_bn" for node in canonical.nodes):
        canonical = canonical.replace(activation="relu")
    return canonical


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
    for k, (level, out) in enumerate(zip(genotype.cell_levels, genotype.outputs)):
        before = _name_order(out) if out.startswith("n") else (2, 0)
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
            take, extra = extra[: MAX_INPUTS - 1], extra[MAX_INPUTS - 1:]
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
    """Reorder nodes so each comes after its inputs (names are renumbered to match)."""
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
    rename = {f"n{old}": f"n{new}" for new, old in enumerate(order)}
    nodes = tuple(dataclasses.replace(genotype.nodes[i], inputs=tuple(rename.get(n, n) for n in genotype.nodes[i].inputs))
                  for i in order)
    return genotype.replace(nodes=nodes, outputs=tuple(rename.get(n, n) for n in genotype.outputs))


def _ordered_inputs(genotype: Genotype, node: Node, signature: Mapping[str, str]) -> tuple[str, ...]:
    """Inputs in canonical order: sorted where order does not change the result (sums, weighted
    fusion, attention between different levels, whose orientation follows the levels)."""
    if node.combine in TWO_INPUT_COMBINES and genotype.level_of(node.inputs[0]) == genotype.level_of(node.inputs[1]):
        return node.inputs
    return tuple(sorted(node.inputs, key=lambda n: signature[n]))


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()[:16]
