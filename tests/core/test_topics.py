import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.topics import (
    RuleTable,
    SubscriptionIndex,
    TopicError,
    filter_covers,
    filters_overlap,
    matches,
    validate_filter,
    validate_topic,
)


@pytest.mark.parametrize("topic", ["a", "a/b", "a//b", "/a", "a/", "$SYS/x", "ünï/ cödé"])
def test_valid_topics(topic: str) -> None:
    assert validate_topic(topic) == topic


@pytest.mark.parametrize(
    ("topic", "why"),
    [
        ("", "empty"),
        ("a/+/b", "wildcard"),
        ("a/#", "wildcard"),
        ("a\x00b", "NUL"),
        ("\ud800", "UTF-8"),
        ("x" * 11, "limit"),
        (7, "string"),
    ],
)
def test_invalid_topics(topic: object, why: str) -> None:
    with pytest.raises(TopicError, match=why):
        validate_topic(topic, max_bytes=10)


@pytest.mark.parametrize("f", ["#", "+", "a/#", "a/+/c", "+/+", "/#", "a//+", "$SYS/#"])
def test_valid_filters(f: str) -> None:
    assert validate_filter(f) == f


@pytest.mark.parametrize("f", ["a/#/b", "a#", "a+/b", "#/a", "a/b+", ""])
def test_invalid_filters(f: str) -> None:
    with pytest.raises(TopicError):
        validate_filter(f)


@pytest.mark.parametrize(
    ("f", "topic", "expected"),
    [
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("a/+", "a", False),
        ("+", "a", True),
        ("+", "/a", False),
        ("+/+", "/a", True),
        ("#", "$SYS/x", False),
        ("+/x", "$SYS/x", False),
        ("$SYS/#", "$SYS/x", True),
        ("$SYS/+", "$SYS/x", True),
        ("a/b", "a/b", True),
        ("a/b", "a/c", False),
        ("a//+", "a//b", True),
    ],
)
def test_matching(f: str, topic: str, expected: bool) -> None:
    assert matches(f, topic) is expected


levels = st.sampled_from(["a", "b", "", "$s"])
topics = st.lists(levels, min_size=1, max_size=4).map("/".join).filter(bool)
filter_levels = st.sampled_from(["a", "b", "", "+", "$s"])


@st.composite
def filters(draw: st.DrawFn) -> str:
    parts = draw(st.lists(filter_levels, min_size=1, max_size=4))
    if draw(st.booleans()):
        parts.append("#")
    return "/".join(parts) or "+"


def all_topics() -> list[str]:
    names = ["a", "b", "", "$s"]
    out = set()
    for n in range(1, 5):
        import itertools

        for combo in itertools.product(names, repeat=n):
            t = "/".join(combo)
            if t:
                out.add(t)
    return sorted(out)


UNIVERSE = all_topics()


@given(st.lists(filters(), min_size=1, max_size=12, unique=True), topics)
def test_index_agrees_with_brute_force(fs: list[str], topic: str) -> None:
    index: SubscriptionIndex[int] = SubscriptionIndex()
    for i, f in enumerate(fs):
        index.add(f, i)
    assert index.match(topic) == {i for i, f in enumerate(fs) if matches(f, topic)}
    # removing half leaves exactly the other half matching
    for i, f in enumerate(fs):
        if i % 2:
            assert index.remove(f, i)
    assert index.match(topic) == {i for i, f in enumerate(fs) if i % 2 == 0 and matches(f, topic)}
    assert len(index) == len([i for i in range(len(fs)) if i % 2 == 0])
    # an answer remembered for a topic does not outlive a change of the filters
    for i, f in enumerate(fs):
        if i % 2:
            index.add(f, i)
            held = {j for j in range(len(fs)) if j % 2 == 0 or j <= i}
            assert index.match(topic) == {j for j in held if matches(fs[j], topic)}


def test_index_memo_is_bounded() -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex(max_memo=3)
    index.add("a/+", "k")
    for n in range(10):
        assert index.match(f"a/{n}") == {"k"}
        assert len(index._memo) <= 3
    assert index.match("b/1") == set()


def test_index_prunes_and_reports_absent_removals() -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    index.add("a/b/c", "k")
    index.add("a/#", "k")
    assert not index.remove("a/b", "k")
    assert index.remove("a/b/c", "k")
    assert index.remove("a/#", "k")
    assert list(index.filters()) == []
    assert index.match("a/b/c") == set()


@given(filters(), filters())
def test_covers_and_overlap_agree_with_matching(outer: str, inner: str) -> None:
    m_outer = {t for t in UNIVERSE if matches(outer, t)}
    m_inner = {t for t in UNIVERSE if matches(inner, t)}
    if filter_covers(outer, inner):
        assert m_inner <= m_outer
    if m_outer & m_inner:
        assert filters_overlap(outer, inner)
    if not filters_overlap(outer, inner):
        assert not (m_outer & m_inner)


@pytest.mark.parametrize(
    ("outer", "inner", "covers"),
    [
        ("#", "a/+", True),
        ("a/#", "a/b/#", True),
        ("a/#", "a", True),
        ("a/+", "a/#", False),
        ("a/+", "a/b", True),
        ("#", "$SYS/#", False),
        ("+/#", "$x/y", False),
        ("$x/#", "#", False),
    ],
)
def test_covers_examples(outer: str, inner: str, covers: bool) -> None:
    assert filter_covers(outer, inner) is covers


def test_rule_table_first_match_wins_and_caches_bounded() -> None:
    table = RuleTable([("a/b", 1), ("a/+", 2), ("#", 3)], max_cache=2)
    assert [table.lookup(t) for t in ("a/b", "a/c", "z", "$q")] == [1, 2, 3, None]
    assert len(table._cache) <= 2
    with pytest.raises(TopicError):
        RuleTable([("a/#/b", 1)])
