import random

import pytest
import yaml

from nasfpn import Genotype, Node, load_genotype
from nasfpn.space import SearchSpace, SpaceError, load_space, space_from_dict, space_names
from test_genotype import nasfpn_blocks

REFERENCES = ["fpn", "panet", "bifpn", "nasfpn"]


def test_shipped_spaces():
    assert space_names() == ["nasfpn", "wide"]
    paper = load_space("nasfpn")
    assert (paper.min_nodes, paper.max_nodes, paper.inputs, paper.outputs) == (7, 7, (2,), "last")
    assert paper.combines == ("sum", "global_attention")
    # NAS-FPN's 4 decisions per merging cell: input 1, input 2, level, combine.
    assert paper.decision_kinds[:4] == ("input", "input", "level", "combine") and len(paper.decisions) == 28


@pytest.mark.parametrize("name", REFERENCES)
def test_wide_space_contains_every_reference(name):
    wide = load_space("wide")
    genotype = load_genotype(name)
    assert wide.contains(genotype)
    decoded = wide.decode(wide.encode(genotype))
    assert decoded.hash() == genotype.replace(repeats=wide.template.repeats, width=wide.template.width).hash()


def test_paper_space_contains_the_paper_cell():
    paper = load_space("nasfpn")
    assert paper.contains(nasfpn_blocks())
    # Its explicit 9-node spelling uses op "none" and is outside the paper's space, inside the wide one.
    assert not paper.contains(load_genotype("nasfpn"))
    assert not paper.contains(load_genotype("fpn"))


def test_paper_space_reorders_outputs_last():
    """An output block written before an independent non-output one is another spelling of the
    same cell: the paper's space (outputs last) takes it and encodes it as the canonical order."""
    paper = load_space("nasfpn")
    data = nasfpn_blocks().to_dict()
    nodes = [dict(n) for n in data["nodes"]]
    nodes[2]["inputs"] = ["P3", "n0"]           # the P3 output no longer reads n1 ...
    in_order = Genotype.from_dict({**data, "nodes": nodes})
    assert paper.contains(in_order)
    # ... so it may be written before n1: swap n1 and n2 and rename every reference.
    rename = {"n1": "n2", "n2": "n1"}
    swapped = [nodes[0], nodes[2], nodes[1]] + nodes[3:]
    swapped = [{**n, "inputs": [rename.get(x, x) for x in n["inputs"]]} for n in swapped]
    outputs = {level: rename.get(name, name) for level, name in data["outputs"].items()}
    reordered = Genotype.from_dict({**data, "nodes": swapped, "outputs": outputs})
    assert reordered.nodes != in_order.nodes and reordered.outputs != in_order.outputs
    assert reordered.hash() == in_order.hash()
    assert paper.contains(reordered)
    assert paper.encode(reordered) == paper.encode(in_order)


@pytest.mark.parametrize("name", ["nasfpn", "wide"])
def test_random_decodes_validate_and_round_trip(name):
    space = load_space(name)
    rng = random.Random(0)
    for _ in range(200):
        decisions = space.sample(rng)
        assert len(decisions) == len(space.decision_sizes)
        assert all(0 <= d < size for d, size in zip(decisions, space.decision_sizes))
        genotype = space.decode(decisions)
        genotype.validate()
        assert space.encode(genotype) == decisions
        assert space.contains(genotype)


@pytest.mark.parametrize("name", ["nasfpn", "wide"])
def test_mutate_changes_one_choice_and_stays_valid(name):
    space = load_space(name)
    rng = random.Random(1)
    for _ in range(100):
        parent = space.sample(rng)
        child = space.mutate(parent, rng)
        assert child != parent
        space.decode(child).validate()


def test_valid_choices_mask():
    paper = load_space("nasfpn")
    assert paper.valid_choices([]) == [0, 1, 2, 3, 4]          # P3..P7
    assert paper.valid_choices([1]) == [0, 2, 3, 4]             # distinct second input
    prefix = [1, 3, 1, 1]                                        # n0 = GP(P4, P6) at P4
    assert paper.valid_choices(prefix) == [0, 1, 2, 3, 4, 5]    # n0 joins the pool
    # The last five nodes are the outputs: their levels are a permutation.
    decisions = paper.encode(nasfpn_blocks())
    levels_of_outputs = [decisions[4 * i + 2] for i in range(2, 7)]
    assert sorted(levels_of_outputs) == [0, 1, 2, 3, 4]


def test_decode_names_the_bad_decision():
    paper = load_space("nasfpn")
    decisions = paper.sample(0)
    decisions[1] = decisions[0]
    with pytest.raises(SpaceError, match=r"decision 1 \(input, slot 0\): .* is not a valid option"):
        paper.decode(decisions)
    with pytest.raises(SpaceError, match="expected 28 decisions"):
        paper.decode(decisions[:-1])


def test_not_contained_for_the_right_reason():
    wide = load_space("wide")
    fpn = load_genotype("fpn")
    many = fpn.replace(nodes=fpn.nodes + tuple(Node(("P3",), 3, "sum", "conv3x3") for _ in range(8))).validate()
    with pytest.raises(SpaceError, match="12 nodes; the space has 2 to 10"):
        wide.encode(many)
    paper = load_space("nasfpn")
    with pytest.raises(SpaceError, match="lateral 'conv' differs from the space's 'conv_bn'"):
        paper.encode(fpn)


def test_size_estimate():
    paper = load_space("nasfpn")
    # Each of 7 cells picks 2 distinct inputs from 5 + i, one of 5 levels (the last 5 as a
    # permutation) and 2 merges: the count is exact here and the estimator must agree.
    exact = 1
    for i in range(7):
        pool = 5 + i
        levels = 5 if i < 2 else 5 - (i - 2)
        exact *= pool * (pool - 1) * levels * 2
    import math
    assert paper.log10_size(samples=50) == pytest.approx(math.log10(exact), abs=1e-9)
    assert load_space("wide").log10_size(samples=200) > paper.log10_size(samples=50)


def test_space_file_errors(tmp_path):
    base = yaml.safe_load((load_space.__globals__["REFERENCE_DIR"] / "nasfpn_space.yaml").read_text())
    for change, message in [
        (lambda d: d.update(colour="red"), "unknown key(s) ['colour']"),
        (lambda d: d.update(combines=["sum", "concat"]), "combines: unknown ['concat']"),
        (lambda d: d.update(inputs=[1, 2], combines=["global_attention"]), "combines ['global_attention'] merge exactly 2"),
        (lambda d: d.update(nodes=[5, 3]), "nodes: must be a positive integer or [min, max]"),
        (lambda d: d.update(outputs="first"), "outputs: must be 'any' or 'last'"),
        (lambda d: d.update(nodes=4), "outputs 'last' needs at least 5 nodes"),
        (lambda d: d.update(choose={"lateral": ["conv", "fancy"]}), "choose: 'lateral' is also fixed under cell"),
        (lambda d: d.update(choose={"width": [1, 2]}), "choose: 'width' cannot be chosen"),
        (lambda d: d["cell"].update(lateral="fancy"), "cell: lateral: unknown value 'fancy'"),
    ]:
        data = yaml.safe_load(yaml.safe_dump(base))
        change(data)
        path = tmp_path / "space.yaml"
        path.write_text(yaml.safe_dump(data))
        with pytest.raises(SpaceError) as err:
            load_space(path)
        assert message in str(err.value) and "space.yaml" in str(err.value)
    path.write_text("cell: [1\n")
    with pytest.raises(SpaceError, match="not valid YAML"):
        load_space(path)


def test_space_in_python():
    space = SearchSpace(cell={"levels": [3, 4, 5], "width": 8}, nodes=(1, 3), inputs=(1, 2),
                        combines=("sum",), ops=("none", "conv3x3"), name="tiny")
    assert "num_nodes" in space.decision_kinds and "tiny" in repr(space)
    for seed in range(20):
        assert space.encode(space.decode(space.sample(seed))) == space.sample(seed)
    with pytest.raises(SpaceError, match="choose.extra: option"):
        space_from_dict({"cell": {"levels": [3, 4, 5, 6]}, "choose": {"extra": [{"source": "backbone", "ops": ["pool"]}]}})
