"""The NAS-Bench-201 space: encoding round trips, variation, isomorphism, sub-spaces."""

import numpy as np
import pytest

from raynas.spaces import NB201Arch, get_space
from raynas.spaces.nb201 import NUM_ARCHS, OP_NAMES

EXAMPLE = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"


@pytest.fixture(scope="module")
def space():
    return get_space("nb201")


@pytest.fixture(scope="module")
def all_archs(space):
    return list(space.enumerate())


def test_every_arch_round_trips_through_string_and_index(space, all_archs):
    assert len(all_archs) == NUM_ARCHS == 15625 == len(space)
    assert [a.index for a in all_archs] == list(range(NUM_ARCHS))
    assert len(set(all_archs)) == NUM_ARCHS
    for arch in all_archs:
        assert NB201Arch.from_string(str(arch)) == arch
        assert NB201Arch.from_index(arch.index) == arch
        assert space.parse(str(arch)) == space.parse(arch.index) == space.parse(arch.ops) == arch


def test_string_form_and_index_order_are_the_documented_ones():
    arch = NB201Arch.from_string(EXAMPLE)
    assert arch.ops == (3, 3, 3, 1, 3, 3)
    assert str(arch) == EXAMPLE
    assert arch.index == ((((3 * 5 + 3) * 5 + 3) * 5 + 1) * 5 + 3) * 5 + 3
    assert str(NB201Arch.from_index(0)) == "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
    assert NB201Arch.from_index(NUM_ARCHS - 1).ops == (4,) * 6
    assert OP_NAMES == ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "|nor_conv_3x3~0|",
        "|nor_conv_3x3~0|+|nor_conv_3x3~0|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|",
        "|conv_5x5~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|",
        "|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|",
        "nor_conv_3x3~0+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|",
    ],
)
def test_bad_strings_give_one_line_errors_naming_the_input(bad):
    with pytest.raises(ValueError) as info:
        NB201Arch.from_string(bad)
    message = str(info.value)
    assert "\n" not in message and repr(bad) in message


@pytest.mark.parametrize("bad", [-1, NUM_ARCHS, 2.5, True])
def test_bad_indices_are_refused(bad):
    with pytest.raises(ValueError, match="0..15624"):
        NB201Arch.from_index(bad)


@pytest.mark.parametrize("bad", [(0, 1, 2), (0, 1, 2, 3, 4, 5), [0] * 6, (0, 0, 0, 0, 0, 0.0)])
def test_bad_op_tuples_are_refused(bad):
    with pytest.raises(ValueError, match="expected a tuple of 6 ints"):
        NB201Arch(bad)


def test_unknown_space_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown space 'darts'; expected one of: nb201"):
        get_space("darts")


def test_isomorphism_count_matches_the_benchmark(space, all_archs):
    # The benchmark reports 6,466 unique archs; its rule (kept literally) reproduces the figure.
    assert len({space.canonical_key(a) for a in all_archs}) == 6466
    # The exact algebraic key merges more (multi-hop zeros, flattened skip sums): see docs.
    algebraic = {space.canonical_key(a, rule="algebraic") for a in all_archs}
    assert len(algebraic) == 4930
    # Sanity: two classic isomorphic pairs land together, a real difference does not.
    a = NB201Arch.from_string("|none~0|+|nor_conv_3x3~0|none~1|+|none~0|skip_connect~1|nor_conv_1x1~2|")
    b = NB201Arch.from_string("|avg_pool_3x3~0|+|nor_conv_3x3~0|none~1|+|none~0|none~1|nor_conv_1x1~2|")
    assert space.canonical_key(a) == space.canonical_key(b)
    c = NB201Arch.from_string("|avg_pool_3x3~0|+|nor_conv_3x3~0|none~1|+|none~0|none~1|nor_conv_3x3~2|")
    assert space.canonical_key(a) != space.canonical_key(c)
    # Every benchmark class is contained in one algebraic class (the algebraic key is coarser).
    classes = {}
    for arch in all_archs:
        classes.setdefault(space.canonical_key(arch), set()).add(space.canonical_key(arch, rule="algebraic"))
    assert all(len(v) == 1 for v in classes.values())


def test_sampling_is_seeded_and_uniform(space):
    first = space.sample(np.random.default_rng(3), 2000)
    again = space.sample(np.random.default_rng(3), 2000)
    assert first == again
    assert space.sample(np.random.default_rng(4), 50) != first[:50]
    counts = np.zeros((6, 5))
    for arch in first:
        counts[np.arange(6), arch.ops] += 1
    # each op on each edge ~ 400 of 2000; a 5-sigma band
    assert np.all(np.abs(counts - 400) < 5 * np.sqrt(2000 * 0.2 * 0.8))
    assert isinstance(space.sample(np.random.default_rng(0)), NB201Arch)


def test_mutate_changes_exactly_one_edge_and_reaches_every_neighbour(space):
    rng = np.random.default_rng(0)
    arch = NB201Arch.from_string(EXAMPLE)
    neighbours = set(space.neighbours(arch))
    assert len(neighbours) == 24 and arch not in neighbours
    seen = set()
    for _ in range(3000):
        child = space.mutate(arch, rng)
        assert sum(x != y for x, y in zip(child.ops, arch.ops)) == 1
        seen.add(child)
    assert seen == neighbours


def test_crossover_takes_each_edge_from_a_parent(space):
    rng = np.random.default_rng(1)
    a, b = NB201Arch((0,) * 6), NB201Arch((3,) * 6)
    from_a = np.zeros(6)
    for _ in range(2000):
        child = space.crossover(a, b, rng)
        assert set(child.ops) <= {0, 3}
        from_a += np.array(child.ops) == 0
    assert np.all(np.abs(from_a / 2000 - 0.5) < 0.05)


def test_restriction_is_a_sub_space(space):
    sub = space.restrict({"1<-0": ["nor_conv_3x3"]})
    assert len(sub) == 3125 and not sub.is_full
    archs = list(sub.enumerate())
    assert len(archs) == 3125 and all(a.ops[0] == 3 and a in sub for a in archs)
    rng = np.random.default_rng(0)
    assert all(a.ops[0] == 3 for a in sub.sample(rng, 200))
    assert all(sub.mutate(archs[7], rng).ops[0] == 3 for _ in range(200))
    assert all(n.ops[0] == 3 for n in sub.neighbours(archs[0]))
    with pytest.raises(ValueError, match="outside this sub-space"):
        sub.arch_from_string(EXAMPLE.replace("|nor_conv_3x3~0|+", "|none~0|+", 1))
    two = space.restrict({0: [0], 5: [1, 2]})
    assert len(two) == 5**4 * 2
    with pytest.raises(ValueError, match="edge"):
        space.restrict({9: [0]})


def test_encode_decode(space):
    arch = NB201Arch.from_string(EXAMPLE)
    onehot = space.encode(arch)
    assert onehot.shape == (6, 5) and onehot.sum() == 6
    assert space.decode(onehot) == arch
    sub = space.restrict({0: [1, 2]})
    assert sub.decode(onehot).ops[0] in (1, 2)  # argmax over allowed ops only


def test_split_into_regions_for_few_shot(space):
    regions = space.split([0])
    assert len(regions) == 5 and all(len(r) == 3125 for r in regions)
    assert [r.allowed_ops[0] for r in regions] == [(0,), (1,), (2,), (3,), (4,)]
    two = space.split(space.parse_edges("1<-0,3<-2"))
    assert len(two) == 25 and sum(len(r) for r in two) == 15625
    rng = np.random.default_rng(0)
    for arch in space.sample(rng, 300):
        k = space.region_of(arch, [0, 5])
        assert arch in two[k] and sum(arch in r for r in two) == 1
    assert space.parse_edges("0, 5") == [0, 5] == space.parse_edges([0, "3<-2"])
    for bad in ("7", "1<-1", "0,0"):
        with pytest.raises(ValueError, match="edge"):
            space.parse_edges(bad)
