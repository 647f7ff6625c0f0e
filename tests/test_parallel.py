import threading
import time

from nbutils import parallel


def test_thread_map_keeps_the_order_of_the_items_whatever_finishes_first():
    seen = set()

    def slow_first(i):
        seen.add(threading.get_ident())
        time.sleep(0.05 if i == 0 else 0.0)  # item 0 finishes last
        return i * i

    assert parallel.thread_map(slow_first, range(6), progress=False) == [i * i for i in range(6)]
    assert len(seen) == min(parallel.cores(), 6)  # more than one thread where there are cores
    assert parallel.thread_map(slow_first, [], progress=False) == []


def test_one_core_runs_in_the_calling_thread(monkeypatch):
    monkeypatch.setattr(parallel, "cores", lambda: 1)
    assert parallel.thread_map(lambda i: threading.get_ident(), range(4), progress=False) == [threading.get_ident()] * 4
