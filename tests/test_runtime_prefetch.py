"""prefetch: order, errors at the right place, early close stops the thread."""
from __future__ import annotations

import threading
import time

import pytest

from rvos_edge.runtime.video import DecodeError, prefetch


def test_items_in_order():
    assert list(prefetch(range(100), depth=3)) == list(range(100))


def test_producer_error_arrives_after_the_items_before_it():
    def source():
        yield from range(5)
        raise DecodeError("stopped at frame 5")

    got = []
    with pytest.raises(DecodeError, match="frame 5"):
        for x in prefetch(source(), depth=2):
            got.append(x)
    assert got == [0, 1, 2, 3, 4]


def test_early_close_stops_the_producer():
    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    it = prefetch(endless(), depth=4)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    it.close()
    time.sleep(0.2)
    assert len(produced) <= 3 + 4 + 2                  # at most the queue's depth read ahead
    assert not any(t.name == "rvos-edge-prefetch" for t in threading.enumerate())


def test_reads_ahead_while_the_consumer_works():
    produced = []

    def source():
        for i in range(20):
            produced.append(i)
            yield i

    it = prefetch(source(), depth=4)
    assert next(it) == 0
    deadline = time.monotonic() + 5
    while len(produced) < 6 and time.monotonic() < deadline:   # the consumer is "busy": no next() call
        time.sleep(0.01)
    assert len(produced) >= 6                                   # 1 handed out, up to 4 queued, 1 waiting to be
    assert list(it) == list(range(1, 20))
