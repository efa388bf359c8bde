"""Seeded procedural H&E tissue with ground truth.

The generator describes a whole slide as a function of position, so any tile
of an arbitrarily large slide renders on its own, in bounded memory, and
seamlessly matches its neighbours. Tissue is rendered as hematoxylin and eosin
concentration maps through the Beer-Lambert model of :mod:`.stain`, with
adjustable stain vectors so tests can vary the stain.

What is drawn, in physical units (um), at any pixel size:

- tissue islands on white background (or tissue everywhere), with lumina;
- stroma: eosinophilic wavy fibres with spindle fibroblasts and lymphocytes;
- tumour nests: pale cytoplasm, large nuclei of varied size, shape and
  chromatin texture, with nucleoli;
- mitotic figures: condensed, very dark chromatin with ragged edges as a
  metaphase plate, a prometaphase clump or two anaphase plates, in a rounded cell of dusky
  cytoplasm with a visible outline (no nuclear membrane);
- eosinophilic granulocytes: a bilobed nucleus in bright, granular
  eosinophilic cytoplasm.

Ground truth (instance labels, cell type and class, centroids) comes with it.

Examples
--------
>>> synth = SyntheticHE(shape=(256, 256), seed=1, tissue="full")
>>> rgb, labels = synth.render(0, 0, 256, 256)
>>> rgb.shape, rgb.dtype, labels.dtype
((256, 256, 3), dtype('uint8'), dtype('int32'))
>>> cells = synth.cells()
>>> set(cells["class"]) <= {"mitotic_figure", "granulocyte", "other"}
True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from .noise import fbm, hash_uniform, value_noise, value_noise_1d
from .stain import BACKGROUND, HEMATOXYLIN, unit

#: Eosin vector typical of real slides (Macenko et al.'s reference), pinker than Ruifrok's.
EOSIN_TYPICAL = (0.2159, 0.8012, 0.5581)

#: Cell types drawn by the generator.
CELL_TYPES = ("tumour", "lymphocyte", "fibroblast", "mitotic_figure", "granulocyte")
#: Shapes of mitotic figures.
FIGURE_SHAPES = ("plate", "clump", "anaphase")
#: Classifier class of each cell type.
CLASS_OF_TYPE = {
    "tumour": "other",
    "lymphocyte": "other",
    "fibroblast": "other",
    "mitotic_figure": "mitotic_figure",
    "granulocyte": "granulocyte",
}

_SPACING_UM = 8.0  # jittered lattice: one candidate cell site per 8 x 8 um
_JITTER_UM = 3.5  # nearly uniform positions; conflicting neighbours are dropped
_REACH_UM = 8.0  # the farthest any cell paints from its centre
_GAP_UM = 0.3  # minimum distance between the extents of two cells
_HALO_PX = 4  # rendered beyond the tile so blur matches across seams


@dataclass(frozen=True)
class SyntheticHE:
    """A procedural H&E slide.

    Parameters
    ----------
    shape : (int, int)
        Slide size in level-0 pixels (rows, columns).
    mpp : float
        Pixel size in micrometres per pixel.
    seed : int
        Everything drawn is a function of the seed and position.
    hematoxylin, eosin : length-3 vectors
        Optical-density vectors of the two stains (normalised to unit length).
    mitosis_fraction : float
        Fraction of tumour cells that are mitotic figures.
    granulocyte_fraction : float
        Fraction of stromal cells that are eosinophilic granulocytes.
    tissue : {"auto", "full"}
        ``"auto"`` draws tissue islands on white glass; ``"full"`` fills the
        slide with tissue (handy for small test tiles).
    stain_strength : float
        Multiplies all concentrations (lighter or darker staining).
    """

    shape: tuple[int, int] = (2048, 2048)
    mpp: float = 0.25
    seed: int = 0
    hematoxylin: tuple[float, float, float] = tuple(HEMATOXYLIN)
    eosin: tuple[float, float, float] = EOSIN_TYPICAL
    mitosis_fraction: float = 0.01
    granulocyte_fraction: float = 0.08
    tissue: str = "auto"
    stain_strength: float = 1.0

    def __post_init__(self):
        h, w = (int(s) for s in self.shape)
        if h < 1 or w < 1:
            raise ValueError(f"shape must be positive, got {self.shape!r}")
        if not self.mpp > 0:
            raise ValueError(f"mpp must be positive, got {self.mpp!r}")
        if self.tissue not in ("auto", "full"):
            raise ValueError(f"tissue must be 'auto' or 'full', got {self.tissue!r}")
        unit(self.hematoxylin), unit(self.eosin)  # validates
        object.__setattr__(self, "shape", (h, w))

    # ------------------------------------------------------------------ fields
    @property
    def _size_um(self):
        return self.shape[0] * self.mpp, self.shape[1] * self.mpp

    def _fields(self, yu, xu):
        """Tissue (0..1), lumen (bool) and tumour (0..1) maps on a um grid."""
        s = self.seed
        if self.tissue == "full":
            tissue = np.ones((len(yu), len(xu)), np.float32)
        else:
            hu, wu = self._size_um
            scale = min(max(min(hu, wu) / 2.5, 150.0), 4000.0)
            n = fbm(yu, xu, scale, octaves=3, seed=s, salt=1)
            ry = ((yu - hu / 2) / (hu / 2))[:, None]
            rx = ((xu - wu / 2) / (wu / 2))[None, :]
            r2 = ry**2 + rx**2
            t = n - 0.55 * r2**2 + 0.12
            tissue = (t > 0.35).astype(np.float32)
        lumen = fbm(yu, xu, 70.0, octaves=2, seed=s, salt=2) > 0.74
        tumour = np.clip((fbm(yu, xu, 260.0, octaves=3, seed=s, salt=3) - 0.47) / 0.03, 0, 1)
        return tissue, lumen, tumour.astype(np.float32)

    def tissue_truth(self, downsample: float = 32.0) -> np.ndarray:
        """The true tissue mask (tissue minus lumina), sampled every ``downsample`` px."""
        h, w = self.shape
        ys = (np.arange(int(np.ceil(h / downsample))) + 0.5) * downsample * self.mpp
        xs = (np.arange(int(np.ceil(w / downsample))) + 0.5) * downsample * self.mpp
        tissue, lumen, _ = self._fields(ys, xs)
        return (tissue > 0.5) & ~lumen

    # ------------------------------------------------------------------- cells
    def _sites(self, i0, i1, j0, j1):
        """Attributes of the occupied lattice sites ``[i0, i1) x [j0, j1)``.

        A site is dropped when it would overlap an occupied neighbour of higher
        priority; the rule looks only at neighbours' own hashes, so every tile
        agrees on which cells exist.
        """
        pad = 2  # extents reach at most 2 sites away (2 * 7 um < 2 * 8 um)
        a = self._site_attributes(i0 - pad, i1 + pad, j0 - pad, j1 + pad)
        if a is None:
            return _empty_sites()
        keep = a["occupied"].copy()
        ni, nj = keep.shape
        for di in range(-pad, pad + 1):
            for dj in range(-pad, pad + 1):
                if di == 0 and dj == 0:
                    continue
                src = (slice(max(di, 0), ni + min(di, 0)), slice(max(dj, 0), nj + min(dj, 0)))
                dst = (slice(max(-di, 0), ni + min(-di, 0)), slice(max(-dj, 0), nj + min(-dj, 0)))
                dist = np.hypot(a["cy"][dst] - a["cy"][src], a["cx"][dst] - a["cx"][src])
                clash = (
                    a["occupied"][src]
                    & (dist < a["extent"][dst] + a["extent"][src] + _GAP_UM)
                    & (a["priority"][src] > a["priority"][dst])
                )
                keep[dst] &= ~clash
        inner = (slice(pad, ni - pad), slice(pad, nj - pad))
        keep = keep[inner]
        return {k: a[k][inner][keep] for k in _SITE_KEYS}

    def _site_attributes(self, i0, i1, j0, j1):
        s = self.seed
        ii, jj = np.meshgrid(np.arange(i0, i1), np.arange(j0, j1), indexing="ij")
        if ii.size == 0:
            return None
        u = [hash_uniform(ii, jj, seed=s, salt=100 + k) for k in range(13)]
        cy = (ii + 0.5) * _SPACING_UM + (u[0] - 0.5) * 2 * _JITTER_UM
        cx = (jj + 0.5) * _SPACING_UM + (u[1] - 0.5) * 2 * _JITTER_UM
        yc = (np.arange(i0, i1) + 0.5) * _SPACING_UM
        xc = (np.arange(j0, j1) + 0.5) * _SPACING_UM
        tissue, lumen, tumour = self._fields(yc, xc)
        in_tumour = tumour > 0.5
        p_occupied = np.where(in_tumour, 0.95, 0.12) * (tissue > 0.5) * ~lumen
        occupied = u[2] < p_occupied
        hu, wu = self._size_um
        occupied &= (cy >= 0) & (cy < hu) & (cx >= 0) & (cx < wu) & (ii >= 0) & (jj >= 0)

        kind = np.full(ii.shape, "tumour", dtype=object)
        r = u[3]
        pm, pg = self.mitosis_fraction, self.granulocyte_fraction
        kind[in_tumour & (r < pm)] = "mitotic_figure"
        kind[in_tumour & (r >= pm) & (r < pm + 0.05)] = "lymphocyte"
        stroma = ~in_tumour
        kind[stroma & (r < pg)] = "granulocyte"
        kind[stroma & (r >= pg) & (r < pg + 0.35)] = "lymphocyte"
        kind[stroma & (r >= pg + 0.35)] = "fibroblast"
        shape = np.full(ii.shape, "", dtype=object)
        fig = kind == "mitotic_figure"
        shape[fig] = np.array(FIGURE_SHAPES, dtype=object)[np.minimum((u[4][fig] * 3).astype(int), 2)]
        size = u[6]
        extent = np.select(
            [kind == "tumour", kind == "lymphocyte", kind == "fibroblast"],
            [_TUMOUR_A0 + _TUMOUR_A1 * size, 2.4 + 0.8 * size, 1.8],
            default=6.0 + 1.0 * size,  # mitoses and granulocytes: their cytoplasm
        )
        ncols = int(np.ceil(wu / _SPACING_UM)) + 2
        return {
            "id": (ii * ncols + jj + 1).astype(np.int64),
            "cy": cy,
            "cx": cx,
            "type": kind,
            "shape": shape,
            "angle": u[5] * np.pi,
            "size": size,
            "aspect": u[7],
            "tone": u[8],
            "u9": u[9],
            "u10": u[10],
            "u11": u[11],
            "priority": u[12] + 2.0 * ((kind == "mitotic_figure") | (kind == "granulocyte")),
            "extent": extent,
            "occupied": occupied,
        }

    def _site_range(self, y0u, y1u, x0u, x1u):
        nrows = int(np.ceil(self._size_um[0] / _SPACING_UM)) + 1
        ncols = int(np.ceil(self._size_um[1] / _SPACING_UM)) + 1
        i0 = max(int(np.floor((y0u - _REACH_UM) / _SPACING_UM)), 0)
        i1 = min(int(np.ceil((y1u + _REACH_UM) / _SPACING_UM)) + 1, nrows)
        j0 = max(int(np.floor((x0u - _REACH_UM) / _SPACING_UM)), 0)
        j1 = min(int(np.ceil((x1u + _REACH_UM) / _SPACING_UM)) + 1, ncols)
        return i0, max(i1, i0), j0, max(j1, j0)

    def cells(self, y0: int = 0, x0: int = 0, h: int | None = None, w: int | None = None) -> pd.DataFrame:
        """Ground-truth cells whose centre lies in a level-0 pixel region.

        Returns
        -------
        pandas.DataFrame
            Columns ``id`` (the cell's value in the label image), ``x``, ``y``
            (centroid, level-0 pixels), ``type`` (one of :data:`CELL_TYPES`),
            ``class`` (``mitotic_figure``, ``granulocyte`` or ``other``) and
            ``shape`` (mitotic figure shape, else empty).
        """
        h = self.shape[0] - y0 if h is None else h
        w = self.shape[1] - x0 if w is None else w
        m = self.mpp
        rng = self._site_range(y0 * m, (y0 + h) * m, x0 * m, (x0 + w) * m)
        sites = self._sites(*rng)
        x = sites["cx"] / m - 0.5
        y = sites["cy"] / m - 0.5
        keep = (y >= y0 - 0.5) & (y < y0 + h - 0.5) & (x >= x0 - 0.5) & (x < x0 + w - 0.5)
        df = pd.DataFrame(
            {
                "id": sites["id"][keep],
                "x": x[keep],
                "y": y[keep],
                "type": sites["type"][keep].astype(str),
                "shape": sites["shape"][keep].astype(str),
            }
        )
        df.insert(4, "class", df["type"].map(CLASS_OF_TYPE))
        return df.sort_values("id", ignore_index=True)

    # --------------------------------------------------------------- rendering
    def render(self, y0: int, x0: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        """Render a level-0 region.

        Returns
        -------
        rgb : (h, w, 3) uint8
        labels : (h, w) int32
            Nucleus instance labels; the value is the cell's ``id`` in
            :meth:`cells` (0 is background).
        """
        m = self.mpp
        hp = _HALO_PX
        ys = y0 - hp + np.arange(h + 2 * hp)
        xs = x0 - hp + np.arange(w + 2 * hp)
        yu, xu = (ys + 0.5) * m, (xs + 0.5) * m
        tissue, lumen, tumour = self._fields(yu, xu)
        tissue = tissue * ~lumen
        s = self.seed

        # stroma: wavy collagen fibres, bundles running along a slowly turning direction
        wav = fbm(yu, xu, 25.0, octaves=2, seed=s, salt=5)
        bend = fbm(yu, xu, 150.0, octaves=2, seed=s, salt=4)
        angle = np.full(wav.shape, hash_uniform(0, seed=s, salt=10) * np.pi, np.float32)
        fibres = _fibres(yu, xu, float(angle[0, 0]), 12.0 * wav + 60.0 * bend, s)
        grain = value_noise(yu, xu, 1.5, seed=s, salt=6)
        eos_stroma = 0.3 + 0.55 * fibres + 0.1 * grain
        eos_tumour = 0.32 + 0.12 * grain + 0.08 * wav
        E = tissue * (eos_stroma * (1 - tumour) + eos_tumour * tumour)
        H = tissue * (0.05 + 0.04 * grain + 0.08 * tumour * wav)  # tumour cytoplasm: a little basophilic
        labels = np.zeros(E.shape, np.int32)

        rng = self._site_range(yu[0], yu[-1], xu[0], xu[-1])
        sites = self._sites(*rng)
        chromatin = value_noise(yu, xu, 0.7, seed=s, salt=7)
        granules = value_noise(yu, xu, 0.45, seed=s, salt=8)
        order = range(len(sites["id"]))
        for k in order:  # cytoplasm first, nuclei on top
            _paint_cytoplasm(E, H, yu, xu, sites, k, granules)
        for k in order:
            _paint_nucleus(E, H, labels, yu, xu, sites, k, chromatin, angle)

        strength = self.stain_strength
        blur = max(0.6, 0.3 / m)  # the scanner's optics: about 0.3 um
        H = ndi.gaussian_filter(H, blur) * strength
        E = ndi.gaussian_filter(E, blur) * strength
        od = H[..., None] * unit(self.hematoxylin).astype(np.float32) + E[..., None] * unit(
            self.eosin
        ).astype(np.float32)
        intensity = BACKGROUND * np.exp(-od)
        grain_px = hash_uniform(ys[:, None], xs[None, :], seed=s, salt=9).astype(np.float32)
        intensity += (grain_px[..., None] - 0.5) * 4.0
        rgb = np.clip(np.rint(intensity), 0, 255).astype(np.uint8)
        return rgb[hp:-hp, hp:-hp], labels[hp:-hp, hp:-hp]


_SITE_KEYS = ("id", "cy", "cx", "type", "shape", "angle", "size", "aspect", "tone", "u9", "u10", "u11")
_TUMOUR_A0, _TUMOUR_A1 = 2.8, 2.4  # tumour nucleus semi-major axis: 2.8 to 5.2 um


def _empty_sites():
    return {k: np.zeros(0, dtype=object if k in ("type", "shape") else float) for k in _SITE_KEYS}


def _fibres(yu, xu, angle, warp, seed):
    """Thin bright fibres: ridged noise stretched along ``angle``, bent by ``warp`` (um)."""
    c, sn = np.cos(angle), np.sin(angle)
    along = xu[None, :] * c + yu[:, None] * sn
    across = -xu[None, :] * sn + yu[:, None] * c + warp
    # sample a 1-D ridged profile across fibres, modulated along them
    band = value_noise_1d(across, 1.6, seed=seed, salt=11)
    ridge = 1.0 - np.abs(2.0 * band - 1.0)
    gaps = value_noise_1d(along + 3.0 * across, 30.0, seed=seed, salt=12)
    return ridge**3 * (0.5 + 0.5 * gaps)


def _window(yu, xu, cy, cx, radius):
    """Index slices of the grid within ``radius`` um of a centre, and local coords."""
    step = yu[1] - yu[0] if len(yu) > 1 else 1.0
    i0 = max(int(np.floor((cy - radius - yu[0]) / step)), 0)
    i1 = min(int(np.ceil((cy + radius - yu[0]) / step)) + 1, len(yu))
    j0 = max(int(np.floor((cx - radius - xu[0]) / step)), 0)
    j1 = min(int(np.ceil((cx + radius - xu[0]) / step)) + 1, len(xu))
    if i1 <= i0 or j1 <= j0:
        return None
    dy = (yu[i0:i1] - cy)[:, None]
    dx = (xu[j0:j1] - cx)[None, :]
    return (slice(i0, i1), slice(j0, j1)), dy, dx


def _rotate(dy, dx, angle):
    c, s = np.cos(angle), np.sin(angle)
    return dx * c + dy * s, -dx * s + dy * c  # (along, across)


def _paint_cytoplasm(E, H, yu, xu, sites, k, granules):
    kind = sites["type"][k]
    if kind not in ("mitotic_figure", "granulocyte"):
        return
    radius = 6.0 + 1.0 * sites["size"][k]
    win = _window(yu, xu, sites["cy"][k], sites["cx"][k], radius + 1)
    if win is None:
        return
    sl, dy, dx = win
    r = np.sqrt(dy**2 + dx**2)
    inside = np.clip(radius - r, 0, 1)  # 1 um soft edge
    if kind == "mitotic_figure":  # a rounded cell body of dusky, slightly basophilic cytoplasm
        soft = np.clip((radius - r) / 1.5, 0, 1)  # (no nuclear membrane: the chromatin lies in it)
        g = granules[sl]
        ang = np.arctan2(dy, dx) + sites["u9"][k] * 2 * np.pi
        r_edge = (radius - 0.6) * (1 + 0.05 * np.sin(2 * ang) + 0.03 * np.sin(5 * ang))  # a rounded, not round, cell
        rim = np.exp(-(((r - r_edge) / 0.5) ** 2))  # its outline: what tells a dividing cell from a dark nucleus
        E[sl] = E[sl] * (1 - soft) + (0.3 + 0.1 * g) * soft + 0.35 * rim
        H[sl] = H[sl] * (1 - soft) + (0.2 + 0.08 * g) * soft + 0.12 * rim
    else:  # bright eosinophilic granular cytoplasm
        g = granules[sl]
        cyto = 1.0 + 0.9 * (g > 0.55) * (g - 0.55) * 4 + 0.25 * g
        E[sl] = E[sl] * (1 - inside) + cyto * inside
        H[sl] = H[sl] * (1 - inside) + 0.04 * inside


def _paint_nucleus(E, H, labels, yu, xu, sites, k, chromatin, angle_field):
    kind = sites["type"][k]
    cy, cx = sites["cy"][k], sites["cx"][k]
    size, aspect, tone = sites["size"][k], sites["aspect"][k], sites["tone"][k]
    theta = sites["angle"][k]
    win = _window(yu, xu, cy, cx, 7.5)
    if win is None:
        return
    sl, dy, dx = win
    tex = chromatin[sl]
    if kind == "tumour":
        a = _TUMOUR_A0 + _TUMOUR_A1 * size
        b = a * (0.62 + 0.38 * aspect)
        along, across = _rotate(dy, dx, theta)
        phase = sites["u9"][k] * 2 * np.pi
        ang = np.arctan2(across, along)
        wobble = 1 + 0.07 * np.sin(3 * ang + phase) + 0.04 * np.sin(5 * ang + 2 * phase)
        rho = np.sqrt((along / a) ** 2 + (across / b) ** 2) / wobble
        mask = rho < 1
        dens = 0.6 + 0.35 * tone + 0.5 * (tex - 0.5) + 0.35 * (rho > 0.82)
        ny, nx = 0.35 * a * (sites["u10"][k] - 0.5), 0.35 * b * (sites["u11"][k] - 0.5)
        nucleolus = (along - ny) ** 2 + (across - nx) ** 2 < (0.45 + 0.3 * size) ** 2
        dens = dens + 0.55 * nucleolus
    elif kind == "lymphocyte":
        rad = 2.4 + 0.8 * size
        mask = dy**2 + dx**2 < rad**2
        dens = 1.0 + 0.2 * tone + 0.15 * (tex - 0.5)
    elif kind == "fibroblast":
        i = min(int((cy - yu[0]) / max(yu[1] - yu[0], 1e-9)), angle_field.shape[0] - 1)
        j = min(int((cx - xu[0]) / max(xu[1] - xu[0], 1e-9)), angle_field.shape[1] - 1)
        fib_angle = angle_field[max(i, 0), max(j, 0)] + 0.3 * (theta - np.pi / 2)
        along, across = _rotate(dy, dx, fib_angle)
        a, b = 4.5 + 2.5 * size, 1.1 + 0.6 * aspect
        mask = (along / a) ** 2 + (across / b) ** 2 < 1
        dens = 0.75 + 0.2 * tone + 0.15 * (tex - 0.5)
    elif kind == "granulocyte":
        along, across = _rotate(dy, dx, theta)
        rad = 1.8 + 0.5 * size
        sep = 1.1 + 0.5 * aspect
        lobe1 = (along - sep) ** 2 + across**2 < rad**2
        lobe2 = (along + sep) ** 2 + (across - 0.4 * (tone - 0.5)) ** 2 < rad**2
        mask = lobe1 | lobe2
        dens = 0.95 + 0.2 * tone + 0.2 * (tex - 0.5)
    else:  # mitotic figure: condensed chromatin, clumped, with ragged, hairy edges (chromosome arms)
        along, across = _rotate(dy, dx, theta)
        ang = np.arctan2(across, along)
        phase = sites["u9"][k] * 2 * np.pi
        rag = 1.2 * (tex - 0.5) - 0.25 * np.maximum(np.sin(3 * ang + phase) * np.sin(5 * ang - phase), 0)
        shape = sites["shape"][k]
        length = 3.0 + 1.6 * size  # half-length of a metaphase plate: 6-9 um long
        width = 1.2 + 0.7 * aspect  # half-width: a thick band, not a line
        if shape == "plate":
            dist = np.maximum(np.abs(across) - width, (np.abs(along) - length) * 1.5)
        elif shape == "clump":  # prometaphase: an irregular dark mass
            r0 = 2.3 + 0.9 * size
            dist = np.sqrt(dy**2 + dx**2) * (1 + 0.12 * np.sin(3 * ang + phase) + 0.08 * np.sin(5 * ang)) - r0
        else:  # anaphase: two parallel plates moving apart
            gap = 1.9 + 1.4 * aspect
            dist = np.maximum(np.abs(np.abs(across) - gap) - 0.75 * width, (np.abs(along) - length * 0.9) * 1.5)
        mask = dist + rag < 0
        dens = 2.7 + 0.4 * tone + 0.6 * (tex - 0.5)
    if not mask.any():
        return
    H[sl] = np.where(mask, dens, H[sl])
    E[sl] = np.where(mask, E[sl] * 0.5 + (0.5 if kind == "mitotic_figure" else 0.0), E[sl])
    labels[sl][mask] = sites["id"][k]


def synthetic_he(
    shape: tuple[int, int] = (512, 512), seed: int = 0, **kwargs
) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Render a whole small synthetic H&E image with its ground truth.

    Parameters
    ----------
    shape : (int, int)
        Image size in pixels.
    seed : int
        Random seed; the same seed gives the same image.
    **kwargs
        Passed to :class:`SyntheticHE` (``mpp``, stain vectors, fractions,
        ``tissue``).

    Returns
    -------
    rgb : (H, W, 3) uint8
    labels : (H, W) int32 nucleus instance labels
    cells : DataFrame of ground-truth cells (see :meth:`SyntheticHE.cells`)

    Examples
    --------
    >>> rgb, labels, cells = synthetic_he((128, 128), seed=3, tissue="full")
    >>> inside = cells[(cells.x > 8) & (cells.x < 120) & (cells.y > 8) & (cells.y < 120)]
    >>> bool(np.isin(inside["id"], labels).all())  # every cell is drawn
    True
    """
    synth = SyntheticHE(shape=shape, seed=seed, **kwargs)
    rgb, labels = synth.render(0, 0, *synth.shape)
    return rgb, labels, synth.cells()
