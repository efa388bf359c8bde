"""Long tasks as generators: they yield :class:`Progress`, then return the result.

The same generator drives a napari thread worker (yielded values update the
progress bar, the return value reaches ``worker.returned``; quitting the
worker between two yields cancels it) and the CLI (:func:`run`). Each
analysis step lives in its own module.
"""

from .progress import Progress, Task, as_step, run
from .tissue import TISSUE_MPP, detect_tissue, tissue_task

__all__ = ["TISSUE_MPP", "Progress", "Task", "as_step", "detect_tissue", "run", "tissue_task"]
