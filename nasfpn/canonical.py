"""The canonical form of a genotype, one spelling per graph, and the hash of a topology.

Two genotypes that compute the same thing the same way (nodes renumbered, dead nodes added,
independent nodes listed in another order, inputs of a sum swapped, the ``unused: sum`` rule
or its explicit nodes, a recursion's ASPP branches in another order) have the same canonical
form. The order is fixed by a structural signature of each node (a Merkle hash over its
inputs), then a topological sort that always takes the ready node of smallest signature.
Whether the order of a node's inputs counts is the combine's to say
(:attr:`nasfpn.vocabulary.Combine.input_order`).

This module only computes: the rules it applies (the spelled-out form, live nodes) are the
genotype's, reached through the genotype it is given, so it imports nothing of the genotype.
"""
from __future__ import annotations

import dataclasses
import hashlib
import heapq
import json
from typing import TYPE_CHECKING, Any, Mapping

from .vocabulary import COMBINES, OPS

if TYPE_CHECKING:  # annotations only: the genotype imports this module
    from .genotype import Genotype, Node


def canonical_form(genotype: Genotype) -> Genotype:
    """See :meth:`Genotype.canonical`."""
    genotype = genotype.spelled_out()
    live = genotype.live_nodes()
    # Inputs sign with their names (raw inputs, C3.., too: a genotype that reads none hashes as before).
    signature: dict[str, str] = {name: name for name in genotype.cell_inputs + genotype.raw_inputs}
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
    rename: dict[str, str] = {name: name for name in genotype.cell_inputs + genotype.raw_inputs}
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
        nodes.append(dataclasses.replace(node, inputs=tuple(rename[n] for n in inputs)))
    canonical = genotype.replace(nodes=tuple(nodes), outputs=tuple(rename[n] for n in genotype.outputs))
    # Fields that change nothing in this graph are reset, so that they do not change the hash.
    if not canonical.has_downsampling_edge():
        canonical = canonical.replace(downsample="pool")
    if not any(OPS[node.op].reads_activation for node in canonical.nodes):
        canonical = canonical.replace(activation="relu")
    if canonical.recursion is not None:  # absent: nothing is added, so hashes without one are unchanged
        canonical = canonical.replace(recursion=canonical.recursion.canonical())
    return canonical


def canonical_hash(genotype: Genotype) -> str:
    """See :meth:`Genotype.hash`."""
    data = canonical_form(genotype).to_dict()
    data.pop("name", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _ordered_inputs(genotype: Genotype, node: Node, signature: Mapping[str, str]) -> tuple[str, ...]:
    """Inputs in canonical order: sorted by signature unless their order changes what the merge
    computes (attention between inputs of one level), then as listed."""
    if COMBINES[node.combine].order_matters([genotype.level_of(n) for n in node.inputs]):
        return node.inputs
    return tuple(sorted(node.inputs, key=lambda n: signature[n]))


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()[:16]
