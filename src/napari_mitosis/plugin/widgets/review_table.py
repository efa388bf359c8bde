"""The detection table of the review (as QuPath's measurement table): class, score, status; click to go.

A Qt model over the review's table, in the queue's order (most likely first, or
uncertain first); it only reads the rows on the screen, so a million
detections cost an ordering, not a million table cells.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QAbstractTableModel, QModelIndex, Qt
from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QTableView

from .review_panels import STATUS_LABELS

HEADERS = ("Class", "Score", "Status")
#: The class names of the table (short: the dock is narrow; the current-cell line says "Other (look-alike)").
TABLE_CLASSES = {"mitotic_figure": "Mitosis", "granulocyte": "Granulocyte", "other": "Other"}


class DetectionTableModel(QAbstractTableModel):
    """Rows: the review's cells in queue order; columns: place, class, score, status (in words)."""

    def __init__(self):
        super().__init__()
        self._ids = np.zeros(0, np.int64)
        self._cls = self._score = self._status = np.zeros(0)

    def set_cells(self, df, order_ids):
        """Show the cells of ``df`` (id, class, score, status) in the order of ``order_ids``."""
        self.beginResetModel()
        if df is None or not len(df):
            self._ids = np.zeros(0, np.int64)
            self._cls = self._score = self._status = np.zeros(0)
        else:
            ids = df["id"].to_numpy(np.int64)
            where = np.zeros(int(ids.max()) + 1, np.int64)  # id -> row: ids are small non-negative integers
            where[ids] = np.arange(len(ids))
            rows = where[np.asarray(order_ids, np.int64)]
            self._ids = np.asarray(order_ids, np.int64)
            self._cls = df["class"].astype(object).to_numpy()[rows]
            self._score = df["score"].to_numpy(float)[rows]
            self._status = df["status"].astype(object).to_numpy()[rows]
        self.endResetModel()

    def rowCount(self, parent=QModelIndex()):  # noqa: N802 -- Qt's name
        return 0 if parent.isValid() else len(self._ids)

    def columnCount(self, parent=QModelIndex()):  # noqa: N802
        return 0 if parent.isValid() else len(HEADERS)

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid() or role not in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.ToolTipRole):
            return None
        r, c = index.row(), index.column()
        if role == Qt.ItemDataRole.ToolTipRole:
            from .review_panels import CLASS_LABELS

            return f"{CLASS_LABELS.get(self._cls[r], self._cls[r])}; click to go to it"
        if c == 0:
            return TABLE_CLASSES.get(self._cls[r], str(self._cls[r]))
        if c == 1:
            s = self._score[r]
            return "-" if not np.isfinite(s) else f"{s:.2f}"
        return STATUS_LABELS.get(self._status[r], str(self._status[r]))

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):  # noqa: N802
        if role == Qt.ItemDataRole.DisplayRole:
            return HEADERS[section] if orientation == Qt.Orientation.Horizontal else f"{section + 1:,}"
        return None

    def id_at(self, row: int) -> int | None:
        return int(self._ids[row]) if 0 <= row < len(self._ids) else None

    def row_of(self, pid) -> int | None:
        hit = np.nonzero(self._ids == pid)[0]
        return int(hit[0]) if len(hit) else None


class DetectionTable(QTableView):
    """The table view: fits the dock (no horizontal scroll), one row selected at a time."""

    def __init__(self):
        super().__init__()
        self.cells = DetectionTableModel()
        self.setModel(self.cells)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        font = self.font()  # a measurement table's small print: three columns fit the dock's width
        font.setPointSizeF(font.pointSizeF() * 0.9)
        self.setFont(font)
        self.verticalHeader().setVisible(False)  # the place in the queue is in the "Current" line
        self.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 4)
        head = self.horizontalHeader()
        for col, mode in enumerate((QHeaderView.ResizeMode.Stretch, QHeaderView.ResizeMode.ResizeToContents,
                                    QHeaderView.ResizeMode.Stretch)):
            head.setSectionResizeMode(col, mode)
        head.setMinimumSectionSize(20)
        self.setMinimumHeight(8 * (self.fontMetrics().height() + 4))
        self.setToolTip("The detections in the queue's order; click one to go to it")

    def show_current(self, pid):
        """Select the row of cell ``pid`` (without going anywhere)."""
        row = None if pid is None else self.cells.row_of(pid)
        if row is None:
            self.clearSelection()
            return
        self.blockSignals(True)
        try:
            self.selectRow(row)
            self.scrollTo(self.cells.index(row, 0))
        finally:
            self.blockSignals(False)
