"""An advisory lock beside a review file: two viewers on one slide must not overwrite each other silently.

When a review is opened for editing, ``<review file>.lock`` (JSON: host, pid, user, the time it
was taken and last refreshed, and a token of the review object holding it) is written next to
it, atomically. Every save refreshes its time; closing the review removes it.

A lock found there is *held* (by another viewer) when

- it is of this host, its process is alive and it is not this review object's own (another
  viewer in this very process counts as another owner: its token is still registered here), or
- it is of another host and was refreshed in the last :data:`STALE_AFTER_S` seconds.

Otherwise it is *stale* (a crashed viewer, a dead process, an old file) and taken over
silently. A held lock is not taken: the review goes on (it is advisory) and the caller is told
who holds it, to warn the user. A lock file that cannot be written (read-only folder) is no lock
at all: nothing is refused because of it.

Examples
--------
>>> import tempfile, pathlib
>>> review = pathlib.Path(tempfile.mkdtemp()) / "s.svs.mitosis.json"
>>> a, b = ReviewLock(review), ReviewLock(review)
>>> a.acquire() is None, a.owned
(True, True)
>>> held = b.acquire(); held["pid"] == os.getpid(), b.owned
(True, False)
>>> a.release(); b.acquire() is None, b.owned
(True, True)
>>> b.release(); review.with_name(review.name + ".lock").exists()
False
"""

from __future__ import annotations

import atexit
import datetime as _dt
import getpass
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from .detections import atomic_write_text

SUFFIX = ".lock"
#: A lock of another host not refreshed for this long is stale (its viewer is gone or idle).
STALE_AFTER_S = 10 * 60

_live: dict[str, "ReviewLock"] = {}  # token -> lock owned by a review object of this process
_guard = threading.Lock()


def lock_path(review_path) -> Path:
    review_path = Path(review_path)
    return review_path.with_name(review_path.name + SUFFIX)


def _host() -> str:
    try:
        return socket.gethostname()
    except OSError:  # pragma: no cover
        return "unknown-host"


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 -- no user name (a container without one): not a reason to fail
        return "unknown"


def pid_alive(pid) -> bool:
    """Whether a process with this id runs on this host (psutil; os.kill(pid, 0) where psutil is missing)."""
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        import psutil

        return psutil.pid_exists(pid)
    except ImportError:  # pragma: no cover
        if os.name == "nt":
            return True  # cannot tell safely: assume alive (os.kill would kill it on Windows)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def read_lock(path) -> dict | None:
    """The lock file's content, or None when there is none or it cannot be read (then it is stale)."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


def is_held(doc: dict | None, now: float | None = None) -> bool:
    """Whether a lock's content says another live owner holds it (see the module's doc)."""
    if not doc:
        return False
    now = time.time() if now is None else now
    if doc.get("host") == _host():
        if doc.get("pid") == os.getpid():
            return doc.get("token") in _live  # another review object of this process, still open
        return pid_alive(doc.get("pid"))
    try:
        return now - float(doc.get("time")) < STALE_AFTER_S
    except (TypeError, ValueError):
        return False


def describe(doc: dict) -> tuple[str, str]:
    """``("user@host, pid N", "HH:MM")``: who holds a lock and since when (local time), for a message."""
    try:
        since = _dt.datetime.fromtimestamp(float(doc.get("since", doc.get("time")))).strftime("%H:%M")
    except (TypeError, ValueError, OverflowError, OSError):
        since = "?"
    return f"{doc.get('user', '?')}@{doc.get('host', '?')}, pid {doc.get('pid', '?')}", since


class ReviewLock:
    """The lock of one review object on one review file (see the module's doc)."""

    def __init__(self, review_path):
        self.path = lock_path(review_path)
        self.token = uuid.uuid4().hex
        self.owned = False
        self.since: float | None = None
        self.holder: dict | None = None  # who holds it when this review could not take it

    def _doc(self) -> dict:
        now = time.time()
        return {"format": "napari-mitosis-review-lock", "host": _host(), "pid": os.getpid(), "user": _user(),
                "since": self.since or now, "time": now,
                "time_iso": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "token": self.token}

    def _write(self) -> bool:
        try:
            atomic_write_text(self.path, json.dumps(self._doc(), indent=1))
        except OSError:
            return False  # a folder that cannot be written: no lock, nothing refused
        mine = (read_lock(self.path) or {}).get("token") == self.token  # another taking it at the same time wins
        return mine

    def acquire(self) -> dict | None:
        """Take the lock unless another live owner holds it; returns that owner's lock content (or None)."""
        with _guard:
            doc = read_lock(self.path)
            if doc is not None and doc.get("token") != self.token and is_held(doc):
                self.owned, self.holder = False, doc
                return doc
            self.since = self.since or time.time()
            self.owned = self._write()
            self.holder = None
            if self.owned:
                _live[self.token] = self
            else:
                other = read_lock(self.path)
                if other is not None and other.get("token") != self.token and is_held(other):
                    self.holder = other
            return self.holder

    def refresh(self) -> dict | None:
        """After a save: refresh the time of our lock, or take it over if its holder has gone (then
        the warning is over). Returns who holds it when it is still not ours."""
        if self.owned:
            doc = read_lock(self.path)
            if doc is None or doc.get("token") == self.token or not is_held(doc):
                with _guard:
                    self.owned = self._write()
                return None
            self.owned = False  # taken by another while ours was stale (idle for long): tell
            _live.pop(self.token, None)
        return self.acquire()

    def release(self):
        """Remove the lock file if it is still ours."""
        with _guard:
            _live.pop(self.token, None)
            if self.owned and (read_lock(self.path) or {}).get("token") == self.token:
                try:
                    self.path.unlink()
                except OSError:
                    pass
            self.owned = False


@atexit.register
def _release_all():
    for lock in list(_live.values()):
        lock.release()
