"""Training: the trainers behind ``napari-mitosis train MODEL`` and their data.

Above :mod:`napari_mitosis.pipeline` (trainers may run its tasks, e.g. nucleus
segmentation for the typer's patches); nothing of the package below imports
it. The networks, the model registry and the weights are in
:mod:`napari_mitosis.models`; a trainer ships a model with
:func:`napari_mitosis.models.registry.save_model`.
"""
