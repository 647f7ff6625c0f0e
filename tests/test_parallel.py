import threading
import time

import pytest

from nbutils import parallel


def test_thread_map_keeps_the_order_of_the_items_whatever_finishes_first():
    seen = set()

    def slow_first(i):
        seen.add(threading.get_ident())
        time.sleep(0.05 if i == 0 else 0.0)  # item 0 finishes last
        return i * i

    assert parallel.thread_map(slow_first, range(6), progress=False) == [i * i for i in range(6)]
    # item 0 holds one thread while the others run: a second thread where there is a second core
    assert (len(seen) > 1) if parallel.cores() > 1 else (len(seen) == 1)
    assert parallel.thread_map(slow_first, [], progress=False) == []


def test_an_error_stops_the_items_not_started_yet():
    done = []

    def fail_first(i):
        if i == 0:
            raise ValueError("item 0")
        time.sleep(0.01)
        done.append(i)

    with pytest.raises(ValueError, match="item 0"):
        parallel.thread_map(fail_first, range(200), progress=False)
    assert len(done) < 199


def test_one_core_runs_in_the_calling_thread(monkeypatch):
    monkeypatch.setattr(parallel, "cores", lambda: 1)
    assert parallel.thread_map(lambda i: threading.get_ident(), range(4), progress=False) == [threading.get_ident()] * 4
