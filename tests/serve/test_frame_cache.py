"""The fan-out's framing caches: shared frames are built once, bytes stay bounded."""

from gateway.serve.fanout import FrameCache


def test_a_frame_is_found_again_until_two_rotations_pass() -> None:
    cache = FrameCache(limit=1000)
    first = b"a" * 100
    cache.put(first, b"A")
    assert cache.get(first) == b"A"
    frames = [bytes([i]) * 100 for i in range(40)]  # 4 KB through a 1 KB cache
    for f in frames:
        cache.put(f, b"x")
        assert cache.bytes <= 1000 // 2 + 101
    assert cache.get(first) is None  # rotated out
    assert cache.get(frames[-1]) == b"x"


def test_an_entry_is_never_confused_with_another_frame_of_the_same_id() -> None:
    cache = FrameCache(limit=1 << 20)
    frame = bytes(bytearray(b"tick frame"))
    cache.put(frame, b"framed")
    other = bytes(bytearray(b"tick frame"))  # equal bytes, another object
    assert cache.get(other) is None
    assert cache.get(frame) == b"framed"


def test_a_frame_in_use_stays_while_others_rotate() -> None:
    cache = FrameCache(limit=1000)
    hot = b"h" * 50
    cache.put(hot, b"H")
    for i in range(100):
        cache.put(bytes([i]) * 100, b"x")
        assert cache.get(hot) == b"H"  # each use keeps it in the young generation
