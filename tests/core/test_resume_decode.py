"""A ``resume``'s topics are checked all at once when they are plain (a reconnect
storm decodes thousands of them), with the same verdict as checking them one by one:
the same message accepted, or the same error for the first bad entry."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.protocol import DecodeLimits, ProtocolError, Resume
from gateway.core.topics import TopicError, validate_topic

LIMITS = DecodeLimits(max_topic_bytes=24)


def one_by_one(obj: dict[str, Any]) -> tuple[str, str] | dict[str, int]:
    """The check as it was before the all-at-once path."""
    for topic, seq in obj["topics"].items():
        try:
            validate_topic(topic, LIMITS.max_topic_bytes)
        except TopicError as err:
            return ("bad_filter", str(err))
        if type(seq) is not int or seq < 0:
            return ("bad_message", "each topic's seq must be an integer >= 0")
    return dict(obj["topics"])


def verdict(obj: dict[str, Any]) -> tuple[str, str] | dict[str, int]:
    try:
        return dict(Resume.from_obj(obj, LIMITS).topics)
    except ProtocolError as err:
        return (err.code, err.message)


_TOPIC = st.one_of(
    st.sampled_from(["a/b", "site/line1/dev7", "", "a/+", "a/#", "a\x00b", "\ud800", "é" * 7]),
    st.text(max_size=30),
)
_SEQ = st.one_of(st.integers(min_value=-2, max_value=10**6), st.just(1.5), st.just("7"), st.none())


@settings(max_examples=500)
@given(st.dictionaries(_TOPIC, _SEQ, max_size=6))
def test_all_at_once_or_one_by_one_the_verdict_is_the_same(topics: dict[str, Any]) -> None:
    obj = {"type": "resume", "epoch": "e", "topics": topics}
    assert verdict(obj) == one_by_one(obj)


def test_a_storm_s_resume_is_accepted_and_a_bad_seq_refused() -> None:
    topics = {f"berlin/line1/dev{i:03d}": i + 1 for i in range(62)}
    assert verdict({"epoch": "e", "topics": topics}) == topics
    topics["berlin/line1/dev007"] = -1
    assert verdict({"epoch": "e", "topics": topics})[0] == "bad_message"
    long = {"x" * 25: 1}  # over max_topic_bytes: named as one by one would
    assert verdict({"epoch": "e", "topics": long}) == one_by_one({"topics": long})
