"""Pure numpy algorithms: no Qt, no napari, no file formats.

Everything here works on in-memory arrays so it can be tested on tiny inputs
and reused by the GUI, the CLI and dask workers alike.
"""
