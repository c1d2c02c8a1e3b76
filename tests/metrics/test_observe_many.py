"""observe_many: the same histogram as observing each value, bucket by bucket."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from gateway.metrics import LATENCY_BUCKETS, observe_many


def _samples(hist: Histogram) -> dict[str, float]:
    out: dict[str, float] = {}
    for metric in hist.collect():
        for s in metric.samples:
            if not s.name.endswith("_created"):
                out[s.name + str(sorted(s.labels.items()))] = s.value
    return out


@given(
    st.lists(
        st.one_of(
            st.floats(0, 100, allow_nan=False),
            st.sampled_from([0.0, *LATENCY_BUCKETS[:-1], math.nan]),  # on the bounds
        ),
        max_size=300,
    )
)
def test_observe_many_equals_observing_each(values: list[float]) -> None:
    one = Histogram("one", "h", buckets=LATENCY_BUCKETS, registry=CollectorRegistry())
    many = Histogram("one", "h", buckets=LATENCY_BUCKETS, registry=CollectorRegistry())
    for v in values:
        one.observe(v)
    observe_many(many, values)
    a, b = _samples(one), _samples(many)
    assert a.keys() == b.keys()
    for key, value in a.items():
        if key.startswith("one_sum"):
            assert (
                value == b[key]
                or math.isclose(value, b[key], rel_tol=1e-9, abs_tol=1e-9)
                or (math.isnan(value) and math.isnan(b[key]))
            )
        else:
            assert value == b[key], key  # every bucket and the count, exactly
