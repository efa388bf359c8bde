"""Autosave off the GUI thread: one writer thread at a time, requests coalesced.

An edit asks for a save and returns at once; the snapshot of the review (its
tables are never changed in place, so taking one is free) is written by a
thread. Edits made while a save is being written are saved together by the
next one, so however fast the pathologist works there is at most one save
running and one waiting. A run's tiles ask for a save ``later``
(:data:`RUN_SAVE_DELAY_MS`): tiles that finish meanwhile share it.
"""

from __future__ import annotations

import threading

from qtpy.QtCore import QObject, QTimer, Signal

#: How long a run's tile waits for its save (the tiles finishing meanwhile share it), in ms.
RUN_SAVE_DELAY_MS = 5000


class BackgroundSaver(QObject):
    """Coalescing saves in a thread.

    Parameters
    ----------
    snapshot : callable, called on the GUI thread when a save starts; returns what ``write`` needs
    write : callable(snapshot) -> result, run in the writer thread (must not touch Qt or the layers)
    done : callable(result, error), called on the GUI thread after each save (error: the exception or None)
    """

    _finished = Signal()

    def __init__(self, snapshot, write, done):
        super().__init__()
        self._snapshot, self._write, self._done = snapshot, write, done
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._start)
        self._finished.connect(self._collect)
        self._thread: threading.Thread | None = None
        self._result = None
        self.pending = False
        self.saves = 0  # how many were written (for tests and the curious)

    @property
    def busy(self) -> bool:
        return self.pending or self._thread is not None

    def request(self, delay_ms: int = 0):
        """Save soon: after ``delay_ms`` at most, or when the save being written is done."""
        self.pending = True
        if self._thread is not None:
            return  # _collect starts the next one
        if not self._timer.isActive() or self._timer.remainingTime() > delay_ms:
            self._timer.start(max(int(delay_ms), 0))

    def _start(self):
        if self._thread is not None or not self.pending:
            return
        self.pending = False
        snap = self._snapshot()
        self._thread = threading.Thread(target=self._run, args=(snap,), name="napari-mitosis autosave")
        self._thread.start()

    def _run(self, snap):
        try:
            self._result = (self._write(snap), None)
        except Exception as exc:  # noqa: BLE001 -- handed to the GUI thread, which shows it
            self._result = (None, exc)
        try:
            self._finished.emit()
        except RuntimeError:  # the Qt object is gone (napari closed): flush() collects
            pass

    def _collect(self):
        """The GUI thread takes the result of a finished save (once), and starts the next one if asked."""
        t = self._thread
        if t is None or self._result is None:  # nothing running, or not done yet (or collected already)
            return
        t.join()  # it has set its result: only the signal is left to it
        self._thread = None
        result, error = self._result
        self._result = None
        self.saves += error is None
        self._done(result, error)
        if self.pending and not self._timer.isActive():
            self._timer.start(0)

    def flush(self):
        """Wait for the save being written, then write what is still waiting (now, on this thread)."""
        if self._thread is not None:
            self._thread.join()
            self._collect()
        if self.pending:
            self._timer.stop()
            self._start()
            self._thread.join()
            self._collect()
