"""The review state: edits, undo/redo, the review queue."""

import numpy as np
import pandas as pd
import pytest

from napari_mitosis.core.review import ReviewState


def _state():
    s = ReviewState(thresholds={"mitotic_figure": 0.6})
    s.add_model(pd.DataFrame({"x": [10.0, 20, 30, 40], "y": [1.0, 2, 3, 4],
                              "class": ["mitotic_figure"] * 3 + ["granulocyte"], "score": [0.95, 0.62, 0.8, 0.7]}))
    return s


def test_class_keys_set_status_by_what_the_model_said():
    s = _state()
    s.set_class([0], "mitotic_figure")  # what the model said: confirmed
    s.set_class([1], "other")  # a look-alike: corrected
    i = s.add(5, 5, "granulocyte")
    s.set_class([i], "mitotic_figure")  # hand-added stays added
    st = dict(zip(s.df["id"], s.df["status"]))
    assert st[0] == "confirmed" and st[1] == "corrected" and st[i] == "added"
    with pytest.raises(ValueError, match="unknown class"):
        s.set_class([0], "tumour")


def test_removed_model_calls_are_kept_as_negatives_and_undo_restores_them():
    s = _state()
    s.remove([2])
    assert 2 not in set(s.df["id"]) and list(s.rejected["id"]) == [2]
    assert s.undo()
    assert 2 in set(s.df["id"]) and s.rejected.empty
    assert s.redo() and 2 not in set(s.df["id"])
    i = s.add(1, 1, "other")
    s.remove([i])  # a hand-added cell removed is simply gone
    assert i not in set(s.rejected["id"])


def test_undo_walks_back_every_edit():
    s = _state()
    before = s.df.copy()
    s.confirm([0])
    s.move([1], [[99.0, 98.0]])
    s.add(3, 3, "mitotic_figure")
    while s.undo():
        pass
    assert len(s.df) == 0  # back to before the model's detections arrived
    s.redo()
    pd.testing.assert_frame_equal(s.df, before)


def test_queue_by_score_and_uncertain_first():
    s = _state()
    assert list(s.queue("score")) == [0, 2, 3, 1]
    assert s.queue("uncertain")[0] == 1  # 0.62 is closest to the 0.6 threshold
    assert s.next_unreviewed() == 0
    assert s.next_unreviewed(after=0) == 2
    s.confirm([2])  # reviewed while shown: the next one continues from there
    assert s.next_unreviewed(after=2) == 3
    assert s.next_unreviewed(after=3, step=-1) == 0
    for i in list(s.queue()):
        s.confirm([i])
    assert s.next_unreviewed() is None
    assert s.progress() == (4, 4)


def test_rerunning_a_region_replaces_only_unreviewed_model_calls():
    s = _state()
    s.confirm([0])
    n = s.drop_unreviewed((0, 0, 25, 10))  # x < 25: ids 0 (confirmed) and 1 (unreviewed)
    assert n == 1 and set(s.df["id"]) == {0, 2, 3}
    assert s.rejected.empty  # not the pathologist's rejection


def test_ids_stay_unique_after_removals():
    s = _state()
    s.remove([3])
    new = s.add_model(pd.DataFrame({"x": [1.0], "y": [1.0], "class": ["granulocyte"], "score": [0.5]}))
    assert new == [4] and np.unique(s.df["id"]).size == len(s.df)


def test_undo_history_is_bounded_by_rows_not_only_steps(monkeypatch):
    """A million detections: each edit keeps a whole table for undo; the history keeps as many as fit."""
    from napari_mitosis.core import review

    monkeypatch.setattr(review, "UNDO_ROWS", 1000)
    s = review.ReviewState()
    s.add_model(pd.DataFrame({"x": np.arange(300.0), "y": np.arange(300.0), "class": "mitotic_figure", "score": 0.5}))
    for i in range(10):
        s.confirm([i])
    kept = sum(len(d) + len(r) for d, r in s._undo)
    assert kept <= 1000 and len(s._undo) >= 3
    assert s.undo() and s.df["status"].tolist().count("confirmed") == 9
