"""plugin/layers.py: the napari layer data of the tasks' results (its examples are the tests; the
package's doctests run only for core, io and pipeline)."""

import doctest

import pandas as pd
import pytest

from napari_mitosis.pipeline.nucleus_types import TypingError
from napari_mitosis.plugin import layers


def test_the_examples_of_plugin_layers_hold():
    result = doctest.testmod(layers)
    assert result.attempted >= 2 and result.failed == 0


def test_a_typed_table_without_ids_cannot_colour_labels():
    with pytest.raises(TypingError, match="no 'id' column"):
        layers.labels_colormap(pd.DataFrame({"type": [0]}))
