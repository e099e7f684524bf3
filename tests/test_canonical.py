"""The hash of a topology does not move: ledgers, feature caches and exported files are keyed by
it, so a hash that changes orphans every experiment written before the change.

The hashes below (but FAMILY's) are the hashes before the vocabulary refactor (main at 1b21372, before
nasfpn/vocabulary.py), computed by that code. If one fails, the change altered the canonical
form; that needs a migration of existing ledgers, not a new number here.
"""
from __future__ import annotations

import dataclasses

import pytest

from nasfpn import Genotype, load_genotype

REFERENCE_HASHES = {
    "fpn": "eb60dee7b84b91938870675a1226112653e356d2b55ed455948ba07f0277b835",
    "panet": "7e99eea65bff5235bb32865968289eb1c4665c9da7a380396b1ac528548a9c4d",
    "bifpn": "71967b9210787b4e45b4568e0312e8b3953e0b5f4d4320119dce18f326eaf84f",
    "nasfpn": "0f8c16c13903bb1e5049424b6252e59fb7bae1b480552197c81568dab2cc9b8c",
}

# Sampled from the shipped spaces (wide seeds 0, 1, 5; nasfpn seed 0), written out so that a change
# of the sampler does not change the cases; and one by hand where attention reads two inputs of
# one level (the only place the listed order of inputs counts).
SAMPLED = {
    "wide seed 0": ("4eddfd2ae3a0d0f0477cb4d4cd8a619be18e84811a49a625e7c94bbafdbada69", """
levels: [3, 4, 5, 6, 7]
lateral: conv_bn
extra: {source: lateral, ops: [pool, pool]}
downsample: pool
activation: swish
unused: sum
repeats: 2
width: 64
nodes:
- {inputs: [P6, P5], level: 7, combine: weighted, op: relu_conv_bn}
- {inputs: [P3], level: 5, combine: sum, op: none}
- {inputs: [P5, P7, n1], level: 3, combine: weighted, op: sepconv_bn}
- {inputs: [P6, n0], level: 6, combine: global_attention, op: none}
- {inputs: [P3, P5, n2], level: 6, combine: sum, op: sepconv_bn}
- {inputs: [P6, n1], level: 4, combine: weighted, op: conv3x3}
- {inputs: [n3], level: 3, combine: weighted, op: sepconv_bn}
- {inputs: [P7], level: 7, combine: weighted, op: conv3x3}
outputs: {3: P3, 4: P4, 5: P5, 6: P6, 7: P7}
"""),
    "wide seed 1": ("fec809a9c53f9b518dd33b4791ac046a62076db2250e3ba35a3a5aec9fbb945e", """
levels: [3, 4, 5, 6, 7]
lateral: conv
extra: {source: output, ops: [conv, relu_conv]}
downsample: conv
activation: relu
unused: sum
repeats: 2
width: 64
nodes:
- {inputs: [P5, P4], level: 3, combine: global_attention_avg, op: none}
- {inputs: [n0, P5], level: 5, combine: global_attention_avg, op: relu_conv_bn}
- {inputs: [P4, P3, n0], level: 3, combine: sum, op: none}
- {inputs: [n1, P3, n2], level: 5, combine: sum, op: sepconv_bn}
- {inputs: [P3, n2, P5], level: 4, combine: weighted, op: conv3x3}
- {inputs: [n0, n3], level: 4, combine: global_attention, op: none}
- {inputs: [n5, P4], level: 5, combine: global_attention, op: none}
- {inputs: [n2, n6, n4], level: 5, combine: sum, op: relu_conv_bn}
- {inputs: [n6, n4], level: 5, combine: sum, op: sepconv_bn}
outputs: {3: n0, 4: n5, 5: n7}
"""),
    "wide seed 5": ("688362125240ce8f74e3670af877b1913f4608b20e4daeb194c17053ec67289d", """
levels: [3, 4, 5, 6, 7]
lateral: edge_conv_bn
extra: {source: backbone, ops: [proj_pool, pool]}
downsample: conv
activation: relu
unused: sum
repeats: 2
width: 64
nodes:
- {inputs: [P3, P5, P4], level: 5, combine: weighted, op: conv3x3}
- {inputs: [P7, P3], level: 3, combine: weighted, op: sepconv_bn}
- {inputs: [P4, P7], level: 3, combine: weighted, op: sepconv_bn}
- {inputs: [P5], level: 4, combine: sum, op: conv3x3}
- {inputs: [P7], level: 7, combine: sum, op: conv3x3}
outputs: {3: P3, 4: P4, 5: P5, 6: P6, 7: P7}
"""),
    "nasfpn seed 0": ("5db93d6c3535d420415f07e2a59d2ff45215cd033a485c3c7ab4fc25442615b9", """
levels: [3, 4, 5, 6, 7]
lateral: conv_bn
extra: {source: lateral, ops: [proj_pool, proj_pool]}
unused: sum
repeats: 3
nodes:
- {inputs: [P6, P7], level: 3, combine: global_attention, op: relu_conv_bn}
- {inputs: [P7, P6], level: 6, combine: global_attention, op: relu_conv_bn}
- {inputs: [P6, P5], level: 7, combine: sum, op: relu_conv_bn}
- {inputs: [P5, P6], level: 4, combine: sum, op: relu_conv_bn}
- {inputs: [P7, P5], level: 5, combine: sum, op: relu_conv_bn}
- {inputs: [P4, n1], level: 6, combine: sum, op: relu_conv_bn}
- {inputs: [n0, n2], level: 3, combine: sum, op: relu_conv_bn}
outputs: {3: n6, 4: n3, 5: n4, 6: n5, 7: n2}
"""),
    "attention on a level tie": ("443b870c54103cbc35e1b2f4d984d71bfb4e2b42756a5fcba75fcb1ba2bb063a", """
levels: [3, 4, 5, 6, 7]
lateral: conv
extra: {source: output, ops: [conv, relu_conv]}
nodes:
- {inputs: [P4, P5], level: 4, combine: sum, op: none}
- {inputs: [n0, P4], level: 4, combine: global_attention, op: relu_conv_bn}
- {inputs: [P3, n1], level: 3, combine: global_attention_avg, op: sepconv_bn}
outputs: {3: n2, 4: n1, 5: P5}
"""),
}
# The same tie with n1's inputs listed the other way round: another graph, another hash.
TIE_SWAPPED_HASH = "14b73acbfed1dd1599e45254b2d02500198937ee8025a430d60affc207c64e61"


def sampled(case: str) -> Genotype:
    return Genotype.from_yaml(SAMPLED[case][1], source=case)


@pytest.mark.parametrize("name", sorted(REFERENCE_HASHES))
def test_the_reference_hashes_are_those_before_the_refactor(name):
    assert load_genotype(name).hash() == REFERENCE_HASHES[name]


@pytest.mark.parametrize("case", sorted(SAMPLED))
def test_sampled_hashes_are_those_before_the_refactor(case):
    assert sampled(case).hash() == SAMPLED[case][0]


def test_the_listed_order_counts_only_on_a_level_tie():
    tie = sampled("attention on a level tie")
    def swapped(i: int) -> Genotype:
        nodes = list(tie.nodes)
        nodes[i] = dataclasses.replace(nodes[i], inputs=nodes[i].inputs[::-1])
        return tie.replace(nodes=tuple(nodes)).validate()

    assert swapped(1).hash() == TIE_SWAPPED_HASH != tie.hash()  # n1: attention between two level-4 inputs
    assert swapped(2).hash() == tie.hash()  # n2: levels 3 and 4, which say which input is which


# Genotypes of the rest of the neck family: raw backbone inputs (C3..C5), RFA and SAC. Their
# hashes are pinned from when they were added, as the ones above.
FAMILY = {
    "raw inputs, rfa and sac": ("9359136cf2ace9eeca67a402dd6c9c7c4a0d41c0362bb2f70360081d263fd632", """
levels: [3, 4, 5, 6, 7]
lateral: conv
extra: {source: output, ops: [conv, relu_conv]}
repeats: 2
nodes:
- {inputs: [C5], level: 5, combine: sum, op: rfa}
- {inputs: [P5, n0], level: 5, combine: sum, op: sac}
- {inputs: [P4, n1, C4], level: 4, combine: weighted, op: sac}
- {inputs: [P3, n2, C3], level: 3, combine: sum, op: conv3x3}
outputs: {3: n3, 4: n2, 5: n1}
"""),
}


def family(case: str) -> Genotype:
    return Genotype.from_yaml(FAMILY[case][1], source=case)


@pytest.mark.parametrize("case", sorted(FAMILY))
def test_family_hashes_are_pinned(case):
    assert family(case).hash() == FAMILY[case][0]


def test_raw_inputs_hash_by_name_and_ignore_spelling():
    genotype = family("raw inputs, rfa and sac")
    nodes = list(genotype.nodes)
    nodes[2] = dataclasses.replace(nodes[2], inputs=("C4", "P4", "n1"))       # a weighted merge: order is free
    assert genotype.replace(nodes=tuple(nodes)).validate().hash() == genotype.hash()
    nodes[2] = dataclasses.replace(nodes[2], inputs=("P4", "n1"))             # reads C4 no more
    assert genotype.replace(nodes=tuple(nodes)).validate().hash() != genotype.hash()
    nodes = list(genotype.nodes)
    nodes[3] = dataclasses.replace(nodes[3], inputs=("P3", "n2", "P4"))       # P4 where it read C4's level...
    other = genotype.replace(nodes=tuple(nodes)).validate()
    nodes[3] = dataclasses.replace(nodes[3], inputs=("P3", "n2", "C4"))       # ... and the raw C4 there
    assert len({other.hash(), genotype.replace(nodes=tuple(nodes)).validate().hash(), genotype.hash()}) == 3
    assert Genotype.from_yaml(genotype.to_yaml()) == genotype and genotype.canonical().hash() == genotype.hash()


def test_augfpn_hash_is_pinned():
    # Pinned when search_spaces/augfpn.yaml was added.
    assert load_genotype("augfpn").hash() == "73a0afd97f8c570b1229fe6e9bd78767b8213ab1ae86e6cccffa2cc07af08882"
