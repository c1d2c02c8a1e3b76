"""The store's topic tree enumerates exactly the topics a filter matches (the same
rules as ``matches``), each once, also while topics are added mid-walk."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.state import StateStore
from gateway.core.topics import TopicTree, matches

level = st.sampled_from(["a", "b", "", "$s", "c1"])
topics = st.lists(level, min_size=1, max_size=4).map("/".join)
filter_level = st.sampled_from(["a", "b", "", "$s", "+"])
filters = st.tuples(st.lists(filter_level, min_size=0, max_size=4), st.booleans()).map(
    lambda t: "/".join([*t[0], "#"] if t[1] or not t[0] else t[0])
)


@settings(max_examples=500)
@given(names=st.lists(topics, max_size=40), topic_filter=filters)
def test_matching_enumerates_exactly_the_matching_topics(
    names: list[str], topic_filter: str
) -> None:
    tree = TopicTree()
    for name in names:
        tree.add(name)
    assert len(tree) == len(set(names))
    found = list(tree.matching(topic_filter))
    assert len(found) == len(set(found))  # each once
    assert set(found) == {n for n in names if matches(topic_filter, n)}


@settings(max_examples=300)
@given(
    before=st.lists(topics, max_size=30),
    during=st.lists(topics, max_size=30),
    topic_filter=filters,
    pause=st.integers(0, 30),
)
def test_topics_added_during_a_walk_are_seen_at_most_once_and_never_break_it(
    before: list[str], during: list[str], topic_filter: str, pause: int
) -> None:
    tree = TopicTree()
    for name in before:
        tree.add(name)
    walk = tree.matching(topic_filter)
    found = [t for _, t in zip(range(pause), walk, strict=False)]
    for name in during:
        tree.add(name)
    found += list(walk)
    assert len(found) == len(set(found))
    expected_before = {n for n in before if matches(topic_filter, n)}
    assert expected_before <= set(found)
    assert set(found) <= expected_before | {n for n in during if matches(topic_filter, n)}


def test_the_store_keeps_its_tree_in_step() -> None:
    store = StateStore("e")
    store.apply("site/a/d1", {"v": 1}, 0.0)
    store.set_presence("site/b/d2", True, 0.0)
    store.apply("$SYS/load", {"v": 1}, 0.0)
    assert sorted(store.tree.matching("#")) == ["site/a/d1", "site/b/d2"]
    assert list(store.tree.matching("site/+/d2")) == ["site/b/d2"]
    assert list(store.tree.matching("$SYS/#")) == ["$SYS/load"]
