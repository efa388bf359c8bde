"""Long tasks as generators: they yield :class:`Progress`, then return the result.

The same generator drives a napari thread worker (yielded values update the
progress bar, the return value reaches ``worker.returned``; closing the
generator between two yields cancels it) and the CLI (:func:`run`).

Examples
--------
>>> def task():
...     for i in range(3):
...         yield Progress(i, 3, "working")
...     return "result"
>>> seen = []
>>> run(task(), on_progress=seen.append)
'result'
>>> [p.done for p in seen]
[0, 1, 2]
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Progress:
    """One step of a long task: ``done`` of ``total`` units, and what is going on.

    ``partial`` optionally carries a piece of the result that is ready now
    (e.g. the detections of the tile just finished) so a viewer can show
    results as they stream in; the task's return value is still the whole.
    """

    done: int
    total: int
    message: str = ""
    partial: object = field(default=None, compare=False, repr=False)

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


Task = Generator[Progress, None, object]


def run(task: Task, on_progress: Callable[[Progress], None] | None = None):
    """Drive a task generator to its end and return its result."""
    while True:
        try:
            p = next(task)
        except StopIteration as stop:
            return stop.value
        if on_progress is not None:
            on_progress(p)


def as_step(task: Task, start: int, total: int):
    """Re-yield a sub-task's progress as one step of an outer task."""
    while True:
        try:
            p = next(task)
        except StopIteration as stop:
            return stop.value
        yield Progress(start, total + 1, p.message)
