"""The review's annotation file ("sidecar"): saved on every edit, restored on reopening.

The file sits next to the slide as ``<slide file name>.mitosis.json``; when
that folder cannot be written (a read-only share, a CD) it goes to a
fallback folder (``$NAPARI_MITOSIS_ANNOTATIONS``, default
``~/.napari-mitosis/annotations``) under a name that includes the slide's
fingerprint, so two slides called ``slide1.svs`` in different places do not
collide.

Safety:

- every save is atomic (temporary file, flush, rename): a crash leaves the
  previous save or the new one, never half a file; the previous save is kept
  as ``.bak``;
- the file records the slide's identity (name, size in pixels, pixel size and
  a fingerprint of the file's first MiB); an annotation file of another slide
  is refused;
- a corrupt file is never overwritten: it is moved aside to
  ``.corrupt-<time>`` and the ``.bak`` copy (the save before) is used.

Examples
--------
>>> import tempfile, pathlib, pandas as pd
>>> from napari_mitosis.core.review import ReviewState
>>> ident = {"name": "s.svs", "width": 100, "height": 80, "mpp": 0.25, "fingerprint": "abc"}
>>> s = ReviewState(); _ = s.add_model(pd.DataFrame({"x": [5.0], "y": [6.0], "class": ["mitotic_figure"], "score": [0.8]}))
>>> path = pathlib.Path(tempfile.mkdtemp()) / "s.svs.mitosis.json"
>>> _ = save_review(path, s, ident)
>>> back, note = load_review(path, ident)
>>> back.df[["x", "y", "class", "status"]].values.tolist(), note
([[5.0, 6.0, 'mitotic_figure', 'model']], '')
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import NapariMitosisError
from .detections import atomic_write_bytes, atomic_write_text

FORMAT = "napari-mitosis-review"
VERSION = 1
SUFFIX = ".mitosis.json"
FALLBACK_ENV = "NAPARI_MITOSIS_ANNOTATIONS"


class SidecarError(NapariMitosisError, ValueError):
    """An annotation file that cannot be used; the message says what is wrong and what to do."""


# -------------------------------------------------------------------- identity
def fingerprint(path) -> str:
    """A short fingerprint of a slide file: size and a hash of its first MiB (of the metadata for folders)."""
    path = Path(path)
    h = hashlib.sha256()
    if path.is_dir():  # OME-Zarr: its metadata files
        for name in ("zarr.json", ".zattrs", ".zgroup"):
            f = path / name
            if f.exists():
                h.update(f.read_bytes())
        size = 0
    else:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            h.update(fh.read(1 << 20))
    h.update(str(size).encode())
    return h.hexdigest()[:16]


def slide_identity(slide) -> dict:
    """What identifies a :class:`~napari_mitosis.io.Slide`: name, size, pixel size, fingerprint."""
    w, h = slide.dimensions
    path = Path(slide.path)
    return {"name": path.name, "width": int(w), "height": int(h), "mpp": slide.mpp,
            "fingerprint": fingerprint(path) if path.exists() else ""}


def same_slide(a: dict, b: dict) -> tuple[bool, str]:
    """Whether two identities are the same slide, and if not why.

    The fingerprint decides when both have one (a renamed or moved slide is
    still itself); otherwise the size in pixels must agree.
    """
    if (int(a.get("width", -1)), int(a.get("height", -1))) != (int(b.get("width", -2)), int(b.get("height", -2))):
        return False, (f"it belongs to {a.get('name')!r} ({a.get('width')} x {a.get('height')} px), "
                       f"not to {b.get('name')!r} ({b.get('width')} x {b.get('height')} px)")
    fa, fb = a.get("fingerprint"), b.get("fingerprint")
    if fa and fb and fa != fb:
        return False, f"it belongs to another file ({a.get('name')!r}, same size but different content)"
    return True, ""


# ----------------------------------------------------------------------- paths
def fallback_folder() -> Path:
    return Path(os.environ.get(FALLBACK_ENV) or Path.home() / ".napari-mitosis" / "annotations")


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".napari-mitosis-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        return True
    except OSError:
        return False


def sidecar_path(slide_path, identity: dict | None = None, folder=None) -> Path:
    """Where the review of ``slide_path`` is saved.

    ``folder`` (chosen by the user) wins; else next to the slide when that
    folder is writable; else the fallback folder (name + fingerprint).
    """
    slide_path = Path(slide_path)
    name = slide_path.name + SUFFIX
    if folder is not None:
        return Path(folder) / name
    if _writable(slide_path.parent):
        return slide_path.parent / name
    fp = (identity or {}).get("fingerprint") or "nofp"
    return fallback_folder() / f"{slide_path.name}.{fp}{SUFFIX}"


def _belongs(path: Path, identity: dict | None) -> bool:
    """Whether an annotation file (or its backup) may be the slide's: it says so, or it cannot be
    read (then :func:`load_review` deals with it: moved aside, backup used)."""
    if identity is None:
        return True
    for p in (path, path.with_name(path.name + ".bak")):
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError, RecursionError):
            continue
        if isinstance(doc, dict):
            return same_slide(doc.get("slide") if isinstance(doc.get("slide"), dict) else {}, identity)[0]
    return True


def _mtime(path: Path) -> float:
    times = [p.stat().st_mtime for p in (path, path.with_name(path.name + ".bak")) if p.exists()]
    return max(times) if times else float("-inf")


def find_sidecar(slide_path, identity: dict | None = None, folder=None) -> Path | None:
    """The newest existing annotation file of the slide, or None.

    Looked for in the chosen folder, beside the slide (plain and fingerprinted name: the name used
    when another slide's file sits there) and in the fallback folder (where edits go when the slide
    folder is read-only); files of another slide are passed over.
    """
    slide_path = Path(slide_path)
    fp = (identity or {}).get("fingerprint") or "nofp"
    candidates = []
    if folder is not None:
        candidates.append(Path(folder) / (slide_path.name + SUFFIX))
    candidates += [slide_path.parent / (slide_path.name + SUFFIX), slide_path.parent / f"{slide_path.name}.{fp}{SUFFIX}",
                   fallback_folder() / f"{slide_path.name}.{fp}{SUFFIX}"]
    found = [c for c in dict.fromkeys(candidates)
             if (c.exists() or c.with_name(c.name + ".bak").exists()) and _belongs(c, identity)]
    if not found:
        return None
    return max(found, key=_mtime)


# ------------------------------------------------------------------ read/write
def json_records(df: pd.DataFrame) -> list[dict]:
    out = []
    for r in df.to_dict("records"):
        clean = {}
        for k, v in r.items():
            if isinstance(v, (np.generic,)):
                v = v.item()
            if isinstance(v, float) and np.isnan(v):
                v = None
            clean[k] = v
        out.append(clean)
    return out


def records_json(df: pd.DataFrame, chunk: int = 50_000) -> str:
    """A table as a JSON list of records (missing values as null), written by pandas in chunks: a
    million detections take about a second instead of half a minute, and a thread doing it lets the
    GUI thread run between chunks.

    >>> records_json(pd.DataFrame({"id": [1, 2], "x": [1.5, 2.0], "m": ["a", None], "s": [np.nan, 0.5]}))
    '[{"id":1,"x":1.5,"m":"a","s":null},{"id":2,"x":2.0,"m":null,"s":0.5}]'
    """
    if not len(df):
        return "[]"
    parts = [df.iloc[i : i + chunk].to_json(orient="records", double_precision=15)[1:-1]
             for i in range(0, len(df), chunk)]
    return "[" + ",".join(parts) + "]"


def review_document(state, identity: dict, extra: dict | None = None) -> dict:
    return {
        "format": FORMAT,
        "version": VERSION,
        "saved": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "slide": identity,
        "coordinates": "level-0 pixels",
        "detections": json_records(state.df),
        "rejected": json_records(state.rejected),
        "thresholds": state.thresholds,
        **(extra or {}),
    }


def review_text(df: pd.DataFrame, rejected: pd.DataFrame, thresholds: dict, identity: dict,
                extra: dict | None = None) -> str:
    """The review file's text (the document of :func:`review_document`, its tables written by
    :func:`records_json`). Only reads its arguments: a thread can write a snapshot of a review."""
    marks = {"detections": '"@@detections@@"', "rejected": '"@@rejected@@"'}
    doc = {"format": FORMAT, "version": VERSION, "saved": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
           "slide": identity, "coordinates": "level-0 pixels", "detections": "@@detections@@",
           "rejected": "@@rejected@@", "thresholds": thresholds, **(extra or {})}
    head = json.dumps(doc, indent=0, allow_nan=False)
    for key, table in (("detections", df), ("rejected", rejected)):
        head = head.replace(marks[key], records_json(table), 1)
    return head


#: Files this process wrote or read whole and well: path -> (size, mtime_ns). Backing such a file up
#: needs no new parse (a million detections take seconds to parse, holding the GIL all along).
_KNOWN_GOOD: dict = {}


def _stamp(path: Path):
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _known_good(path: Path) -> bool:
    try:
        return _KNOWN_GOOD.get(str(path)) == _stamp(path)
    except OSError:
        return False


def save_review(path, state, identity: dict, extra: dict | None = None) -> Path:
    """Write the review atomically; the previous save becomes ``.bak``."""
    return save_review_tables(path, state.df, state.rejected, state.thresholds, identity, extra)


def save_review_tables(path, df, rejected, thresholds, identity: dict, extra: dict | None = None) -> Path:
    """:func:`save_review` of a snapshot (the tables and thresholds of a review state)."""
    path = Path(path)
    text = review_text(df, rejected, dict(thresholds), identity, extra)
    if path.exists():
        try:
            old = path.read_bytes()
            if not _known_good(path):
                json.loads(old.decode("utf-8"))
        except (OSError, ValueError, RecursionError):
            pass  # a corrupt current file was already moved aside by load_review; do not back it up over a good .bak
        else:
            atomic_write_bytes(path.with_name(path.name + ".bak"), old)  # atomic too: a crash leaves a whole .bak
    out = atomic_write_text(path, text)
    try:
        _KNOWN_GOOD[str(path)] = _stamp(path)
    except OSError:
        pass
    return out


#: Temporary files of an atomic write older than this (s) are left over from a crash.
ORPHAN_AGE_S = 600


def clean_orphans(path, older_than_s: float = ORPHAN_AGE_S) -> list[Path]:
    """Remove the temporary ``.<name>.*.part`` files an interrupted save of ``path`` left behind
    (only old ones: a save in progress elsewhere is not touched). Returns what was removed."""
    import time

    path = Path(path)
    gone = []
    now = time.time()
    for part in path.parent.glob(f".{path.name}.*.part"):
        try:
            if now - part.stat().st_mtime > older_than_s:
                part.unlink()
                gone.append(part)
        except OSError:
            pass
    return gone


def _frame(records) -> pd.DataFrame:
    from ..core.review import REVIEW_COLUMNS, empty_review_table

    if not records:
        return empty_review_table()
    df = pd.DataFrame.from_records(records)
    for c in REVIEW_COLUMNS:
        if c not in df:
            df[c] = None
    df["id"] = df["id"].astype(np.int64)
    df[["x", "y"]] = df[["x", "y"]].astype(float)
    df["score"] = pd.to_numeric(df["score"], errors="coerce").astype(float)
    return df[REVIEW_COLUMNS + [c for c in df.columns if c not in REVIEW_COLUMNS]]


def _parse(path: Path) -> dict:
    """The document of a review file, checked (ValueError saying what is wrong). Its tables are
    built here too (``doc['_tables']``), so that a file that passes can be used."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise ValueError("it is nested too deeply to be a review file") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError("not a napari-mitosis review file")
    for key in ("detections", "rejected"):
        rows = doc.get(key, [] if key == "rejected" else None)
        if rows is None:
            rows = []
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ValueError(f"its {key} are not a list of records")
    if not isinstance(doc.get("detections"), list):
        raise ValueError("its detections are missing")
    if not isinstance(doc.get("slide", {}), dict) or not isinstance(doc.get("thresholds") or {}, dict):
        raise ValueError("its slide or thresholds are not records")
    try:
        doc["_tables"] = (_frame(doc["detections"]), _frame(doc.get("rejected") or []))
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"its detections do not fit the schema ({type(exc).__name__}: {exc})") from None
    for t in doc["_tables"]:
        if len(t) and not np.isfinite(t[["x", "y"]].to_numpy(float)).all():
            raise ValueError("a detection's x/y is not a finite number")
    return doc


def encode_mask(mask) -> dict:
    """A boolean mask as JSON: its shape and its packed bits in base64.

    >>> m = np.array([[1, 0, 1], [0, 1, 1]], bool)
    >>> bool((decode_mask(encode_mask(m)) == m).all())
    True
    """
    import base64

    mask = np.asarray(mask, bool)
    return {"shape": [int(n) for n in mask.shape], "bits": base64.b64encode(np.packbits(mask.ravel())).decode("ascii")}


def decode_mask(doc: dict) -> np.ndarray:
    """The mask written by :func:`encode_mask` (ValueError when it does not fit its shape)."""
    import base64

    shape = tuple(int(n) for n in doc["shape"])
    if len(shape) != 2 or min(shape) < 0:
        raise ValueError(f"bad mask shape {shape}")
    bits = np.unpackbits(np.frombuffer(base64.b64decode(doc["bits"], validate=True), np.uint8))
    n = shape[0] * shape[1]
    if len(bits) < n:
        raise ValueError("the mask is shorter than its shape")
    return bits[:n].reshape(shape).astype(bool)


def load_review(path, identity: dict | None = None):
    """Read a review saved by :func:`save_review`: ``(ReviewState, note)`` (see :func:`load_review_document`)."""
    state, note, _doc = load_review_document(path, identity)
    return state, note


def load_review_document(path, identity: dict | None = None):
    """Read a review saved by :func:`save_review`.

    Returns ``(ReviewState, note, document)``; ``note`` is empty, or says
    that the file was corrupt, where it was moved, and that the backup was
    used; ``document`` is the file that was read (the backup when it was
    used), for what else the review keeps (regions, tissue mask, ...).

    Raises
    ------
    SidecarError
        When the file belongs to another slide, or it is corrupt and there is
        no usable backup (the corrupt file is kept aside either way).
    """
    from ..core.review import ReviewState

    path = Path(path)
    note = ""
    clean_orphans(path)
    try:
        doc = _parse(path)
        try:
            _KNOWN_GOOD[str(path)] = _stamp(path)
        except OSError:
            pass
    except FileNotFoundError:
        doc = None
        bak = path.with_name(path.name + ".bak")
        if not bak.exists():
            raise SidecarError(f"{path}: no such annotation file") from None
        try:
            doc = _parse(bak)
        except (OSError, ValueError) as exc:
            raise SidecarError(f"{path.name} is missing and its backup {bak.name} cannot be used ({exc}); "
                               "the review starts empty") from None
        note = f"{path.name} was missing; restored the backup {bak.name}"
    except (ValueError, UnicodeDecodeError) as exc:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        aside = path.with_name(f"{path.name}.corrupt-{stamp}")
        k = 1
        while aside.exists():  # two corruptions in one second: the first copy is kept
            aside = path.with_name(f"{path.name}.corrupt-{stamp}-{k}")
            k += 1
        os.replace(path, aside)
        bak = path.with_name(path.name + ".bak")
        try:
            doc = _parse(bak)
        except (OSError, ValueError) as exc2:
            raise SidecarError(
                f"{path.name} is corrupt ({exc}) and has no usable backup ({type(exc2).__name__}); it was kept as "
                f"{aside.name} -- nothing was overwritten; the review starts empty"
            ) from None
        note = f"{path.name} was corrupt ({exc}); kept it as {aside.name} and restored the backup {bak.name}"
    if identity is not None:
        ok, why = same_slide(doc.get("slide") or {}, identity)
        if not ok:
            raise SidecarError(f"{path.name}: {why}; refusing to load it onto this slide")
    det, rej = doc.pop("_tables")
    state = ReviewState(det, rej, doc.get("thresholds") or {})
    return state, note, doc
