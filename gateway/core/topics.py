"""Topic names, topic filters and the subscription index.

Rules (MQTT 3.1.1 section 4.7 / MQTT 5 section 4.7, which devices and operators
already know):

* A topic name is a non-empty UTF-8 string of at most ``max_bytes`` bytes, with no
  NUL and no wildcard character. Levels are separated by ``/``; empty levels are
  allowed (``a//b`` has three levels).
* A filter is a topic name in which a whole level may be ``+`` (exactly one level)
  and the last level may be ``#`` (that level's parent and everything below it:
  ``a/#`` matches ``a``, ``a/b`` and ``a/b/c``). ``a+`` or ``a/#/b`` are invalid.
* A filter whose first level is a wildcard never matches a topic whose first
  character is ``$`` (``$SYS/...``-style system topics must be named explicitly).

Every function raises :class:`TopicError` for invalid input and nothing else.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator
from typing import Generic, TypeVar

__all__ = [
    "MAX_TOPIC_BYTES",
    "RuleTable",
    "SubscriptionIndex",
    "TopicTree",
    "TopicError",
    "filter_covers",
    "filters_overlap",
    "matches",
    "validate_filter",
    "validate_topic",
]

#: The MQTT limit; the gateway's configuration may lower it.
MAX_TOPIC_BYTES = 65535


class TopicError(ValueError):
    """An invalid topic name or filter; ``str(err)`` says which rule it broke."""


def _check_text(value: object, what: str, max_bytes: int) -> str:
    if not isinstance(value, str):
        raise TopicError(f"{what} must be a string, not {type(value).__name__}")
    if not value:
        raise TopicError(f"{what} must not be empty")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise TopicError(f"{what} is not valid UTF-8 (lone surrogate)") from None
    if size > max_bytes:
        raise TopicError(f"{what} is {size} bytes long; the limit is {max_bytes}")
    if "\x00" in value:
        raise TopicError(f"{what} must not contain NUL")
    return value


def validate_topic(topic: object, max_bytes: int = MAX_TOPIC_BYTES) -> str:
    """Return ``topic`` if it is a valid topic name, else raise :class:`TopicError`."""
    name = _check_text(topic, "topic", max_bytes)
    if "+" in name or "#" in name:
        raise TopicError(f"topic {name!r} must not contain the wildcards '+' or '#'")
    return name


def validate_filter(topic_filter: object, max_bytes: int = MAX_TOPIC_BYTES) -> str:
    """Return ``topic_filter`` if it is a valid filter, else raise :class:`TopicError`."""
    text = _check_text(topic_filter, "filter", max_bytes)
    levels = text.split("/")
    last = len(levels) - 1
    for i, level in enumerate(levels):
        if level == "#":
            if i != last:
                raise TopicError(f"filter {text!r}: '#' is only allowed as the last level")
        elif level != "+" and ("+" in level or "#" in level):
            raise TopicError(f"filter {text!r}: a wildcard must take a whole level")
    return text


def matches(topic_filter: str, topic: str) -> bool:
    """True if the (valid) ``topic_filter`` matches the (valid) ``topic``."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    for i, f in enumerate(f_levels):
        if f == "#":
            return True
        if i >= len(t_levels):
            return False
        if f != "+" and f != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)


def filter_covers(outer: str, inner: str) -> bool:
    """True if every topic matched by filter ``inner`` is matched by filter ``outer``.

    Used to decide whether a subscription lies entirely inside a grant.
    """
    if inner[:1] == "$" and outer[:1] in ("+", "#"):
        return False
    if outer[:1] == "$" and inner[:1] in ("+", "#"):
        # inner reaches non-$ topics, which a $-filter never covers
        return False
    o_levels = outer.split("/")
    i_levels = inner.split("/")
    for k, o in enumerate(o_levels):
        if o == "#":
            return True
        if k >= len(i_levels):
            return False
        i = i_levels[k]
        if i == "#":
            return False  # inner reaches deeper/shallower topics than outer allows
        if o == "+":
            continue
        if i == "+" or i != o:
            return False
    return len(o_levels) == len(i_levels)


def filters_overlap(a: str, b: str) -> bool:
    """True if some topic name is matched by both filters."""
    a_levels = a.split("/")
    b_levels = b.split("/")
    # A topic starting with '$' is only reachable by a filter naming its first level.
    a_wild_first = a_levels[0] in ("+", "#")
    b_wild_first = b_levels[0] in ("+", "#")
    if (a_wild_first and b_levels[0].startswith("$")) or (
        b_wild_first and a_levels[0].startswith("$")
    ):
        return False
    for k in range(max(len(a_levels), len(b_levels))):
        x = a_levels[k] if k < len(a_levels) else None
        y = b_levels[k] if k < len(b_levels) else None
        if x == "#" or y == "#":
            return True
        if x is None or y is None:
            return False  # different depths and neither continues with '#'
        if x != "+" and y != "+" and x != y:
            return False
    return True


K = TypeVar("K", bound=Hashable)


class _Node(Generic[K]):
    __slots__ = ("children", "hash_keys", "keys")

    def __init__(self) -> None:
        self.children: dict[str, _Node[K]] = {}
        self.keys: set[K] = set()  # subscribers whose filter ends exactly here
        self.hash_keys: set[K] = set()  # subscribers whose filter is '<path>/#'


class SubscriptionIndex(Generic[K]):
    """Maps filters to subscriber keys; ``match(topic)`` never scans every filter.

    A trie over filter levels ('+' is a child like any other). Matching a topic
    walks at most two branches per level ('+' and the literal), so its cost grows
    with the topic's depth and the number of matching filters, not with the number
    of subscriptions.
    """

    __slots__ = ("_count", "_memo", "_results", "_root", "max_memo")

    def __init__(self, max_memo: int = 200_000) -> None:
        self._root: _Node[K] = _Node()
        self._count = 0
        #: topic -> its match, valid until the next add or remove that changes the
        #: index (the hub routes every changed topic every tick, and the filters
        #: change far less often); equal answers are one shared frozenset
        self._memo: dict[str, frozenset[K]] = {}
        self._results: dict[frozenset[K], frozenset[K]] = {}
        self.max_memo = max_memo

    def __len__(self) -> int:
        return self._count

    def _forget(self) -> None:
        self._memo.clear()
        self._results.clear()

    def add(self, topic_filter: str, key: K) -> None:
        node = self._root
        levels = topic_filter.split("/")
        for level in levels[:-1]:
            node = node.children.setdefault(level, _Node())
        last = levels[-1]
        if last == "#":
            bucket = node.hash_keys
        else:
            node = node.children.setdefault(last, _Node())
            bucket = node.keys
        if key not in bucket:
            bucket.add(key)
            self._count += 1
            self._forget()

    def remove(self, topic_filter: str, key: K) -> bool:
        """Remove one (filter, key) pair; prune empty branches. False if absent."""
        levels = topic_filter.split("/")
        path: list[tuple[_Node[K], str]] = []
        node = self._root
        hashed = levels[-1] == "#"
        walk = levels[:-1] if hashed else levels
        for level in walk:
            child = node.children.get(level)
            if child is None:
                return False
            path.append((node, level))
            node = child
        bucket = node.hash_keys if hashed else node.keys
        if key not in bucket:
            return False
        bucket.discard(key)
        self._count -= 1
        self._forget()
        for parent, level in reversed(path):
            child = parent.children[level]
            if child.children or child.keys or child.hash_keys:
                break
            del parent.children[level]
        return True

    def match(self, topic: str) -> frozenset[K]:
        """Every key whose filter matches ``topic`` (deduplicated)."""
        found = self._memo.get(topic)
        if found is not None:
            return found
        out: set[K] = set()
        levels = topic.split("/")
        dollar = topic.startswith("$")
        self._walk(self._root, levels, 0, out, dollar)
        frozen = frozenset(out)
        found = self._results.setdefault(frozen, frozen)
        if len(self._memo) >= self.max_memo:
            self._memo.clear()  # bounded; it refills from the topics that change
        self._memo[topic] = found
        return found

    def _walk(self, node: _Node[K], levels: list[str], i: int, out: set[K], dollar: bool) -> None:
        # '#' at this node matches the remainder, including zero more levels
        # ('a/#' matches 'a'), except a first-level '#' against a '$' topic.
        if node.hash_keys and not (i == 0 and dollar):
            out |= node.hash_keys
        if i == len(levels):
            out |= node.keys
            return
        child = node.children.get(levels[i])
        if child is not None:
            self._walk(child, levels, i + 1, out, dollar)
        if not (i == 0 and dollar):
            plus = node.children.get("+")
            if plus is not None:
                self._walk(plus, levels, i + 1, out, dollar)

    def filters(self) -> Iterator[tuple[str, K]]:
        """Every (filter, key) pair, for diagnostics and tests."""
        stack: list[tuple[_Node[K], tuple[str, ...]]] = [(self._root, ())]
        while stack:
            node, path = stack.pop()
            for key in node.keys:
                yield "/".join(path), key
            for key in node.hash_keys:
                yield "/".join((*path, "#")), key
            for level, child in node.children.items():
                stack.append((child, (*path, level)))


V = TypeVar("V")


class RuleTable(Generic[V]):
    """Ordered (filter, value) rules; ``lookup(topic)`` gives the first match's value.

    Rules come from configuration (deadbands, stale intervals, ingest mappings), so
    the list is short but topics are many: results are cached per topic, and the
    cache is bounded (cleared whole when full; it refills from hot topics).
    """

    __slots__ = ("_cache", "_max_cache", "rules")

    def __init__(self, rules: Iterable[tuple[str, V]] = (), max_cache: int = 200_000) -> None:
        self.rules: tuple[tuple[str, V], ...] = tuple((validate_filter(f), v) for f, v in rules)
        self._cache: dict[str, V | None] = {}
        self._max_cache = max_cache

    def lookup(self, topic: str) -> V | None:
        try:
            return self._cache[topic]
        except KeyError:
            pass
        found: V | None = None
        for topic_filter, value in self.rules:
            if matches(topic_filter, topic):
                found = value
                break
        if len(self._cache) >= self._max_cache:
            self._cache.clear()
        self._cache[topic] = found
        return found


_END = "\x00"  # a topic ends at this node (no topic level can contain NUL)


class TopicTree:
    """The set of topic names as a trie over levels: ``matching(filter)`` enumerates
    the topics a filter matches without looking at the others.

    A node is a dict from level to child; a child that no longer topic extends is
    stored as the topic string itself (the leaf costs no dict), and a node where a
    topic ends while longer ones continue holds that topic under the key NUL.
    Topics are only ever added (the store never deletes one).
    """

    __slots__ = ("_count", "_root")

    def __init__(self) -> None:
        self._root: dict[str, object] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, topic: str) -> None:
        node = self._root
        levels = topic.split("/")
        last = len(levels) - 1
        for i, level in enumerate(levels):
            child = node.get(level)
            if i == last:
                if child is None:
                    node[level] = topic
                elif type(child) is dict:
                    if _END in child:
                        return
                    child[_END] = topic
                else:
                    return  # present already
                self._count += 1
                return
            if child is None:
                child = node[level] = {}
            elif type(child) is str:
                child = node[level] = {_END: child}
            node = child  # type: ignore[assignment]

    def matching(self, topic_filter: str) -> Iterator[str]:
        """Every topic the (valid) filter matches, each once.

        Safe against topics added while the iterator is suspended: each node's
        entries are copied when the walk reaches it, so a topic added meanwhile is
        either seen or not, never twice and never an error.
        """
        levels = topic_filter.split("/")
        return self._walk(self._root, levels, 0)

    def _walk(self, node: dict[str, object], levels: list[str], i: int) -> Iterator[str]:
        level = levels[i]
        last = i == len(levels) - 1
        if level == "#":
            # the parent level itself ('a/#' matches 'a'), then everything below
            if i > 0 and _END in node:
                yield node[_END]  # type: ignore[misc]
            yield from _everything(node, skip_dollar=i == 0)
            return
        if level == "+":
            children = [(k, c) for k, c in list(node.items()) if k != _END]
            if i == 0:
                children = [(k, c) for k, c in children if not k.startswith("$")]
        else:
            child = node.get(level)
            children = [] if child is None else [(level, child)]
        for _, child in children:
            if type(child) is str:
                if last:
                    yield child
                elif levels[i + 1] == "#" and i + 2 == len(levels):
                    yield child  # 'a/#' matches 'a'
                continue
            sub: dict[str, object] = child  # type: ignore[assignment]
            if last:
                if _END in sub:
                    yield sub[_END]  # type: ignore[misc]
            else:
                yield from self._walk(sub, levels, i + 1)


def _everything(node: dict[str, object], *, skip_dollar: bool) -> Iterator[str]:
    """Every topic below ``node`` (its own end marker excluded); ``skip_dollar``
    leaves out the ``$``-levels directly under it (a first-level wildcard)."""
    stack = [iter([(k, c) for k, c in list(node.items()) if not (skip_dollar and k[:1] == "$")])]
    while stack:
        for key, child in stack[-1]:
            if key == _END:
                continue
            if type(child) is str:
                yield child
                continue
            sub: dict[str, object] = child  # type: ignore[assignment]
            if _END in sub:
                yield sub[_END]  # type: ignore[misc]
            stack.append(iter(list(sub.items())))
            break
        else:
            stack.pop()
