"""The napari plugin: everything napari.yaml points to.

- :mod:`.reader` -- the slide reader (``get_reader``) and the layer data of a slide,
- :mod:`.detections` -- the detections reader and the CSV / QuPath GeoJSON writers,
- :mod:`.sample` -- the synthetic sample slide,
- :mod:`.layers` -- napari layer data of the tasks' results (nuclei, heatmap, types),
- :mod:`.widgets` -- the Qt dock widgets (review, stain normalisation).

The top layer beside :mod:`napari_mitosis.cli` and :mod:`napari_mitosis.training`:
it builds on :mod:`napari_mitosis.pipeline` and nothing below imports it.
"""
