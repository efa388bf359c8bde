"""The advisory lock beside a review file: acquire, refuse, stale takeover, release."""

import json
import os
import time

from napari_mitosis.io import reviewlock
from napari_mitosis.io.reviewlock import ReviewLock, lock_path, read_lock


def test_acquire_refuse_release(tmp_path):
    review = tmp_path / "s.svs.mitosis.json"
    a, b = ReviewLock(review), ReviewLock(review)
    assert a.acquire() is None and a.owned
    doc = read_lock(lock_path(review))
    assert doc["pid"] == os.getpid() and doc["host"] and doc["user"] and doc["token"] == a.token
    held = b.acquire()  # another review object (another viewer) of this process: refused, told who
    assert held is not None and held["token"] == a.token and not b.owned
    assert read_lock(lock_path(review))["token"] == a.token, "the holder's lock was overwritten"
    first = doc["time"]
    time.sleep(0.01)
    assert a.refresh() is None and read_lock(lock_path(review))["time"] > first  # a save refreshes it
    assert b.refresh() is not None and not b.owned  # still held
    a.release()
    assert not lock_path(review).exists()
    assert b.refresh() is None and b.owned  # the holder has gone: taken
    b.release()
    assert not lock_path(review).exists()


def test_release_leaves_another_owners_lock(tmp_path):
    review = tmp_path / "r.mitosis.json"
    a, b = ReviewLock(review), ReviewLock(review)
    a.acquire()
    b.acquire()
    b.release()  # b never held it
    assert read_lock(lock_path(review))["token"] == a.token
    a.release()


def _foreign(path, **kw):
    doc = {"host": reviewlock._host(), "pid": os.getpid(), "user": "someone", "since": time.time(),
           "time": time.time(), "token": "other"}
    doc.update(kw)
    path.write_text(json.dumps(doc))


def test_stale_locks_are_taken_over_and_live_ones_refused(tmp_path):
    review = tmp_path / "s.mitosis.json"
    lp = lock_path(review)
    dead = 2 ** 22 + 12345
    while reviewlock.pid_alive(dead):
        dead += 1
    cases = {
        "dead pid on this host": ({"pid": dead}, False),
        "own pid, token of no open review (closed without release)": ({}, False),
        "another host, old": ({"host": "elsewhere.invalid", "time": time.time() - reviewlock.STALE_AFTER_S - 5}, False),
        "unreadable": (None, False),
        "another host, fresh": ({"host": "elsewhere.invalid", "pid": 1}, True),
        "live pid on this host": ({"pid": os.getppid()}, True),
    }
    for name, (kw, held) in cases.items():
        if kw is None:
            lp.write_text("{not json")
        else:
            _foreign(lp, **kw)
        lock = ReviewLock(review)
        holder = lock.acquire()
        assert (holder is not None) == held, name
        assert lock.owned == (not held), name
        assert (read_lock(lp) or {}).get("token") == (lock.token if not held else "other"), name
        lock.release()
        lp.unlink(missing_ok=True)


def test_an_unwritable_folder_is_no_lock(tmp_path, monkeypatch):
    def fail(*a, **k):
        raise PermissionError(13, "read-only")

    monkeypatch.setattr(reviewlock, "atomic_write_text", fail)
    lock = ReviewLock(tmp_path / "x.mitosis.json")
    assert lock.acquire() is None and not lock.owned
    lock.release()
