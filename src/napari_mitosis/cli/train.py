"""``napari-mitosis train MODEL ...``: one parent command; each model adds its own.

A command module calls :func:`add_trainer` from its ``register(sub)``; this
module's :func:`register` runs last (it is last in ``COMMAND_MODULES``) and
builds ``train`` with every trainer collected::

    from . import train

    def register(sub):
        train.add_trainer("nuclei", "train the nucleus U-Net", configure, run)
"""

from __future__ import annotations

from collections.abc import Callable

_TRAINERS: dict[str, tuple[str, Callable, Callable]] = {}


def add_trainer(name: str, help: str, configure: Callable, func: Callable) -> None:
    """Register ``napari-mitosis train NAME``: ``configure(parser)`` adds its options,
    ``func(args) -> int`` runs it."""
    _TRAINERS[name] = (help, configure, func)


def register(sub) -> None:
    """Add ``train`` with one sub-command per registered trainer."""
    if not _TRAINERS:
        return
    p = sub.add_parser("train", help="train a model on your data and ship its weights")
    tsub = p.add_subparsers(dest="model", required=True, metavar="MODEL")
    for name, (help_text, configure, func) in sorted(_TRAINERS.items()):
        tp = tsub.add_parser(name, help=help_text)
        configure(tp)
        tp.set_defaults(func=func)
