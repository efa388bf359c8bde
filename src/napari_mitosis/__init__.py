"""napari-mitosis: review H&E whole-slide images in napari.

Importing the package is cheap: it pulls in neither torch nor Qt. The public
entry points live in the sub-packages:

- :mod:`napari_mitosis.io` -- ``open_slide`` and the pyramid writers,
- :mod:`napari_mitosis.core` -- pure numpy algorithms (tissue detection,
  stain model, synthetic H&E),
- :mod:`napari_mitosis.pipeline` -- long tasks as generators with progress,
- :mod:`napari_mitosis.cli` -- the ``napari-mitosis`` command.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("napari-mitosis")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "open_slide"]


def __getattr__(name):
    # ``napari_mitosis.open_slide`` without importing io (and dask) at package import
    if name == "open_slide":
        from .io import open_slide

        return open_slide
    raise AttributeError(f"module 'napari_mitosis' has no attribute {name!r}")
