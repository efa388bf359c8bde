"""The one base class of the package's errors.

Every error the package raises on purpose derives from :class:`NapariMitosisError`
(and from the built-in class it always derived from, ``ValueError`` or
``RuntimeError``), so callers can catch them all at once, and the CLI turns them
into a one-line message instead of a traceback::

    try:
        ...
    except NapariMitosisError as exc:
        print(exc)  # says what is wrong and what to do

The classes themselves stay in the modules that raise them (``SlideError`` in
:mod:`napari_mitosis.io.slide`, ``DetectError`` in :mod:`napari_mitosis.pipeline.detect`, ...).

This module imports nothing of the package: every layer may import it.
"""

from __future__ import annotations


class NapariMitosisError(Exception):
    """Base of the package's own errors: the message says what is wrong and what to do."""


__all__ = ["NapariMitosisError"]
