"""Neural stain transfer: re-colour the grayscale image in a learned stain style.

The network follows the paper's colourisation design (after Iizuka et al.):

- a low-level **encoder** of eight 3x3 convolutions that down-samples with
  stride-2 convolutions instead of pooling (to 1/8 of the input),
- a **global feature** branch of four stride-2 convolutions and fully
  connected layers giving a 256-d image descriptor, with an **auxiliary
  classification head** (the classification loss sends semantic gradient
  into the encoder),
- **fusion** of the descriptor with every encoder position (1x1 convolution),
- a **decoder** of convolutions and up-sampling back to the input size,

with batch norm and ReLU throughout. Input: the L channel of CIE Lab
(luminance, the stain-independent structure); output: the a and b chroma
channels of the target style. The prediction runs at the model's working
resolution and the chroma is up-sampled onto the full-resolution luminance,
so fine structure is never blurred.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..core import stain_norm as classical
from ..core.stain_norm import StainNormalizer, StainNormError, check_rgb, tissue_weight
from .tensors import rgb_to_tensor

AB_SCALE = 110.0


def _conv(cin, cout, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class StainTransferNet(nn.Module):
    """Grayscale (L) -> chroma (a, b) colourisation network with a global branch.

    Parameters
    ----------
    width : int
        Channels of the first layer (64 in Iizuka et al.; 16 keeps it fast on a
        CPU and the weights at about 4 MB).
    n_classes : int
        Classes of the auxiliary classification head.
    """

    def __init__(self, width: int = 16, n_classes: int = 3):
        super().__init__()
        w = width
        self.encoder = nn.Sequential(  # 8 convolutions, 3 of them stride 2 -> 1/8
            _conv(1, w, 2), _conv(w, 2 * w), _conv(2 * w, 2 * w, 2), _conv(2 * w, 4 * w),
            _conv(4 * w, 4 * w, 2), _conv(4 * w, 8 * w), _conv(8 * w, 8 * w), _conv(8 * w, 8 * w),
        )  # fmt: skip
        self.global_convs = nn.Sequential(  # 4 convolutions with stride 2
            _conv(8 * w, 8 * w, 2), _conv(8 * w, 8 * w), _conv(8 * w, 8 * w, 2), _conv(8 * w, 8 * w),
        )  # fmt: skip
        self.global_fc = nn.Sequential(nn.Linear(8 * w, 512), nn.ReLU(inplace=True), nn.Linear(512, 256), nn.ReLU(inplace=True))
        self.classifier = nn.Sequential(nn.Linear(256, 128), nn.ReLU(inplace=True), nn.Linear(128, n_classes))
        self.fusion = nn.Sequential(nn.Conv2d(8 * w + 256, 4 * w, 1, bias=False), nn.BatchNorm2d(4 * w), nn.ReLU(inplace=True))
        self.decoder = nn.Sequential(
            _conv(4 * w, 2 * w), nn.Upsample(scale_factor=2, mode="nearest"),
            _conv(2 * w, w), _conv(w, w), nn.Upsample(scale_factor=2, mode="nearest"),
            _conv(w, w // 2), nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(w // 2, 2, 3, 1, 1), nn.Tanh(),
        )  # fmt: skip

    def global_features(self, lum: torch.Tensor) -> torch.Tensor:
        """The 256-d descriptor of an image (or of a slide overview)."""
        g = self.global_convs(self.encoder(lum))
        return self.global_fc(F.adaptive_avg_pool2d(g, 1).flatten(1))

    def forward(self, lum: torch.Tensor, global_features: torch.Tensor | None = None):
        """``lum``: (B, 1, H, W) in [0, 1], H and W multiples of 8.

        Returns chroma (B, 2, H, W) in [-1, 1] (times :data:`AB_SCALE` gives a, b)
        and the auxiliary class logits (B, n_classes).
        """
        feats = self.encoder(lum)
        if global_features is None:
            g = self.global_fc(F.adaptive_avg_pool2d(self.global_convs(feats), 1).flatten(1))
        else:
            g = global_features.expand(lum.shape[0], -1)
        fused = self.fusion(torch.cat([feats, g[:, :, None, None].expand(-1, -1, *feats.shape[2:])], 1))
        return self.decoder(fused), self.classifier(g)


# ----------------------------------------------------------------- colour space
_RGB2XYZ = torch.tensor([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]])
_WHITE = torch.tensor([0.950456, 1.0, 1.088754])


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> CIE Lab (D65), as skimage.color.rgb2lab."""
    lin = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = torch.einsum("ij,bjhw->bihw", _RGB2XYZ.to(rgb), lin) / _WHITE.to(rgb)[None, :, None, None]
    f = torch.where(xyz > 0.008856, xyz.clamp_min(1e-12) ** (1 / 3), 7.787 * xyz + 16 / 116)
    L = 116 * f[:, 1] - 16
    a = 500 * (f[:, 0] - f[:, 1])
    b = 200 * (f[:, 1] - f[:, 2])
    return torch.stack([L, a, b], 1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_lab`, clipped to [0, 1]."""
    fy = (lab[:, 0] + 16) / 116
    fx = fy + lab[:, 1] / 500
    fz = fy - lab[:, 2] / 200
    f = torch.stack([fx, fy, fz], 1)
    xyz = torch.where(f > 0.206893, f**3, (f - 16 / 116) / 7.787) * _WHITE.to(lab)[None, :, None, None]
    lin = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(_RGB2XYZ).to(lab), xyz).clamp(0, 1)
    rgb = torch.where(lin > 0.0031308, 1.055 * lin.clamp_min(1e-12) ** (1 / 2.4) - 0.055, 12.92 * lin)
    return rgb.clamp(0, 1)


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """(rows, cols, 3) uint8 -> (1, 3, rows, cols) float tensor in 0..1."""
    return rgb_to_tensor(rgb, scale=255.0, channels_last=True)


# ------------------------------------------------------------------ normaliser
class NeuralStainNormalizer(StainNormalizer):
    """Neural stain transfer as a fit/transform normaliser.

    Without :meth:`fit` it uses the shipped style (``model``); ``fit(reference)``
    fine-tunes the network on the reference image for ``fit_steps`` steps, so
    any region of any slide can be a style.

    Parameters
    ----------
    model : str
        Registry name of the shipped weights.
    device : str
        ``auto``, ``cpu`` or ``cuda``.
    match_lightness : bool or "quantiles"
        Also match the tissue lightness (mean and spread of CIE L) to the
        style's before re-colouring: the network only predicts chroma, and a
        darker or paler lab stays darker or paler without it. ``"quantiles"``
        matches the whole distribution (percentiles) instead: measured, it
        barely moves the style metrics and costs structure (docs/stain.md).
    keep_hue : bool
        Render the network's output with the style's own stain vectors
        (:func:`render_with_stains`): each pixel's optical density (how dark
        the network made it) is kept, but split between the style's
        hematoxylin and eosin vectors in the proportion the *source* image's
        own stain separation gives (Macenko vectors of the source, computed
        once per slide by :meth:`source_stats`). Nuclei thus take the style's
        hematoxylin hue instead of the magenta-maroon the grayscale network
        guesses for dark pixels. Off: the paper's chroma as predicted.
    """

    method = "neural"
    halo = 32  # pixels of context around each tile, so tiles stitch without seams

    def __init__(
        self,
        model: str = "stain-mitos-atypia14",
        device: str = "auto",
        fit_steps: int = 150,
        batch: int = 8,
        folder=None,
        match_lightness: bool = True,
        keep_hue: bool = True,
    ):
        super().__init__()
        from .registry import WEIGHTS_DIR, load_model

        self.model = model
        self.net, self.spec = load_model(model, device=device, folder=folder or WEIGHTS_DIR)
        self.device = next(self.net.parameters()).device
        self.fit_steps, self.batch = fit_steps, batch
        self.match_lightness = match_lightness
        self.keep_hue = keep_hue
        lightness = self.spec.training.get("style_lightness")
        stains = self.spec.training.get("style_stains")
        quantiles = self.spec.training.get("style_lightness_quantiles")
        self.target = {"model": model, "finetuned": False, "lightness": lightness, "lightness_q": quantiles, "stains": stains}

    @property
    def mpp(self) -> float:
        return self.spec.mpp

    def fit(self, reference, mpp: float | None = None, seed: int = 0):
        """Fine-tune on an RGB reference (rescaled from ``mpp`` to the working resolution)."""
        from .stain_finetune import finetune

        reference = check_rgb(reference, "reference")
        if (tissue_weight(reference) >= 1).sum() < 200:
            raise StainNormError("the reference has no tissue; pick a region with stained tissue, not blank glass")
        ref = _rescale(reference, (mpp or self.mpp) / self.mpp)
        finetune(self.net, ref, steps=self.fit_steps, batch=self.batch, seed=seed)
        self.net.eval()
        self.target = {"model": self.model, "finetuned": True, "lightness": _lightness(ref),
                       "lightness_q": _lightness_quantiles(ref), "stains": _stains(ref)}
        return self

    def source_stats(self, image, what: str = "image", mpp: float | None = None) -> dict:
        """Global descriptor of an image (a slide overview), shared by all its tiles."""
        image = check_rgb(image, what)
        small = _rescale(image, (mpp or self.mpp) / self.mpp)
        stats = {"lightness": _lightness(small), "lightness_q": _lightness_quantiles(small), "stains": _stains(small)}
        with torch.no_grad():
            g = self.net.global_features(self._luminance(small, stats["lightness"]))
        return {**stats, "global": g.cpu()}

    def transform(self, image, source: dict | None = None, mpp: float | None = None) -> np.ndarray:
        """Recolour an RGB image at pixel size ``mpp`` (defaults to the working one)."""
        image = check_rgb(image, "image")
        return self.transform_batch([image], source, mpp)[0]

    def transform_batch(self, images, source: dict | None = None, mpp: float | None = None) -> list[np.ndarray]:
        """Recolour equally sized RGB tiles in one forward pass (GPU-friendly)."""
        images = [np.asarray(im)[..., :3] for im in images]
        if len({im.shape for im in images}) != 1:
            raise StainNormError("transform_batch needs tiles of one size")
        g = None if source is None else source["global"].to(self.device)
        factor = (mpp or self.mpp) / self.mpp
        smalls = [_rescale(im, factor) for im in images]
        if source is not None:
            lights = [(source.get("lightness"), source.get("lightness_q"))] * len(images)
            stains = [source.get("stains")] * len(images)
        else:  # each image's own statistics (tissue-less images are left alone below)
            lights = [(_lightness(sm), _lightness_quantiles(sm)) if (tissue_weight(sm) >= 1).sum() > 50 else (None, None) for sm in smalls]
            stains = [_stains(sm) if self.keep_hue else None for sm in smalls]
        with torch.no_grad():
            lum_small = torch.cat([self._luminance(sm, li) for sm, li in zip(smalls, lights, strict=True)])
            h, w = lum_small.shape[2:]
            padded = F.pad(lum_small, (0, (-w) % 8, 0, (-h) % 8), mode="replicate")
            chroma, _ = self.net(padded, g)
            chroma = F.interpolate(chroma[:, :, :h, :w], size=images[0].shape[:2], mode="bilinear", align_corners=False)
            lum_full = torch.cat([self._match(rgb_to_lab(to_tensor(im).to(self.device))[:, :1], li) for im, li in zip(images, lights, strict=True)])
            lab = torch.cat([lum_full, chroma * AB_SCALE], 1)
            outs = (lab_to_rgb(lab).permute(0, 2, 3, 1).cpu().numpy() * 255.0)
        result = []
        for im, out, st in zip(images, outs, stains, strict=True):
            if self.keep_hue and st is not None and self.target.get("stains") is not None:
                out = render_with_stains(im, out, st, self.target["stains"])
            w8 = tissue_weight(im)[..., None]
            result.append(np.clip(np.rint(w8 * out + (1 - w8) * im), 0, 255).astype(np.uint8))
        return result

    def _luminance(self, rgb: np.ndarray, lightness=(None, None)) -> torch.Tensor:
        """Network input: CIE L / 100, lightness-matched to the style when asked."""
        return self._match(rgb_to_lab(to_tensor(rgb).to(self.device))[:, :1], lightness) / 100.0

    def _match(self, L: torch.Tensor, source_lightness) -> torch.Tensor:
        """Map the tissue lightness onto the style's: mean and spread, or its whole distribution
        (percentiles) with ``match_lightness="quantiles"`` when both are known."""
        if not isinstance(source_lightness, tuple):  # (mean, std) alone
            source_lightness = (source_lightness, None)
        moments, quantiles = source_lightness
        if not self.match_lightness:
            return L
        tq = self.target.get("lightness_q")
        if quantiles is not None and tq is not None and self.match_lightness == "quantiles":
            xp = np.concatenate([[0.0], np.maximum.accumulate(np.asarray(quantiles, float)), [100.0]])
            fp = np.concatenate([[0.0], np.asarray(tq, float), [100.0]])
            xp = xp + np.arange(len(xp)) * 1e-6  # strictly increasing
            mapped = np.interp(L.detach().cpu().numpy().ravel(), xp, fp).reshape(L.shape)
            return torch.from_numpy(mapped).to(L)
        target = self.target.get("lightness")
        if moments is None or target is None:
            return L
        (ms, ss), (mt, st) = moments, target
        return ((L - ms) / max(ss, 1e-3) * st + mt).clamp(0, 100)

    def to_dict(self) -> dict:
        return {
            "method": "neural",
            "model": self.model,
            "finetuned": bool(self.target.get("finetuned")),
            "lightness": self.target.get("lightness"),
            "lightness_q": self.target.get("lightness_q"),
            "match_lightness": self.match_lightness,
            "keep_hue": self.keep_hue,
            "stains": _plain(self.target.get("stains")),
        }

    @classmethod
    def from_dict(cls, data: dict, state: dict | None = None) -> NeuralStainNormalizer:
        # a style saved before keep_hue existed keeps the colours it was saved with
        norm = cls(model=data.get("model", "stain-mitos-atypia14"), match_lightness=data.get("match_lightness", True),
                   keep_hue=data.get("keep_hue", False))
        if state is not None:
            norm.net.load_state_dict(state)
            norm.net.eval()
        norm.target = {"model": norm.model, "finetuned": state is not None, "lightness": data.get("lightness", norm.target["lightness"]),
                       "lightness_q": data.get("lightness_q"), "stains": data.get("stains") or norm.target["stains"]}
        return norm


def _plain(stains):
    if stains is None:
        return None
    return {k: np.asarray(v, dtype=float).tolist() for k, v in stains.items()}


def _stains(rgb: np.ndarray):
    """Macenko stain vectors (hematoxylin, eosin) and 99th-percentile concentrations, or None."""
    try:
        st = classical.MacenkoNormalizer().source_stats(rgb)
    except StainNormError:
        return None
    return {"stains": st["stains"].tolist(), "max_conc": st["max_conc"].tolist()}


def render_with_stains(
    source: np.ndarray, network_rgb: np.ndarray, source_stains: dict, style_stains: dict, keep_lightness: bool = True
) -> np.ndarray:
    """Give the network's output the style's stain hues (optical-density space).

    Each pixel's total optical density (summed over RGB) is the network's
    (so its lightness and the matched contrast stay); its hematoxylin share
    is the source pixel's, from the source's own stain vectors, with
    concentrations expressed in the style's units (divided by the source's
    and multiplied by the style's 99th percentile, as Macenko does). The
    output density is that total split between the style's hematoxylin and
    eosin vectors, so a nucleus has the style's hematoxylin hue and stroma
    its eosin hue whatever colour the grayscale network guessed. With
    ``keep_lightness`` the result's CIE L is then set back to the network
    output's (the matched lightness), so only the colour (a, b) comes from
    the stain rendering.

    Parameters
    ----------
    source : (rows, cols, 3) uint8, the image being normalised
    network_rgb : (rows, cols, 3) float in 0..255, the network's colourisation
    source_stains, style_stains : dict with ``stains`` (2, 3) and ``max_conc`` (2,)
    keep_lightness : bool
        Keep the network output's lightness (measured: better histograms, same hue).

    Returns
    -------
    (rows, cols, 3) float in 0..255
    """
    from ..core.stain import rgb_to_od

    src_v = np.asarray(source_stains["stains"], dtype=np.float64)
    tgt_v = np.asarray(style_stains["stains"], dtype=np.float64)
    scale = np.asarray(style_stains["max_conc"], dtype=np.float64) / np.asarray(source_stains["max_conc"], dtype=np.float64)
    od = rgb_to_od(source, background=classical.BACKGROUND).reshape(-1, 3).astype(np.float64)
    conc = np.clip(od @ np.linalg.pinv(src_v), 0, None) * scale  # (n, 2) in the style's units
    share = (conc[:, 0] + 0.02) / (conc.sum(axis=1) + 0.04)  # 1/2 where there is (almost) no stain
    unit = tgt_v / tgt_v.sum(axis=1, keepdims=True)  # OD per unit of summed OD
    total = -np.log(np.clip(np.asarray(network_rgb, dtype=np.float64), 1.0, 255.0) / 255.0).reshape(-1, 3).sum(axis=1)
    out_od = total[:, None] * (share[:, None] * unit[0] + (1 - share[:, None]) * unit[1])
    rendered = (255.0 * np.exp(-out_od)).reshape(source.shape)
    if not keep_lightness:
        return rendered
    to_t = lambda x: torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]  # noqa: E731
    lab = rgb_to_lab(to_t(rendered))
    lab[:, 0] = rgb_to_lab(to_t(np.asarray(network_rgb)))[:, 0]
    return lab_to_rgb(lab)[0].permute(1, 2, 0).numpy().astype(np.float64) * 255.0


#: Percentiles of tissue lightness matched by ``match_lightness`` (every 2 %).
LIGHTNESS_PERCENTILES = np.linspace(0, 100, 51)


def _lightness_quantiles(rgb: np.ndarray):
    """Percentiles (:data:`LIGHTNESS_PERCENTILES`) of CIE L over tissue pixels, or None without tissue."""
    from skimage import color

    mask = tissue_weight(rgb) >= 1
    if mask.sum() < 50:
        return None
    return np.percentile(color.rgb2lab(rgb)[..., 0][mask], LIGHTNESS_PERCENTILES).round(3).tolist()


def _lightness(rgb: np.ndarray):
    """(mean, std) of CIE L over tissue pixels, or None without tissue."""
    from skimage import color

    mask = tissue_weight(rgb) >= 1
    if mask.sum() < 50:
        return None
    values = color.rgb2lab(rgb)[..., 0][mask]
    return [float(values.mean()), float(values.std())]


def _rescale(image: np.ndarray, factor: float) -> np.ndarray:
    """Shrink (factor > 1) or enlarge an RGB image by ``1/factor``."""
    if abs(factor - 1) < 1e-3:
        return image
    from skimage.transform import rescale

    out = rescale(image, 1 / factor, channel_axis=2, anti_aliasing=factor > 1, preserve_range=True)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def normalizer_from_dict(data: dict) -> StainNormalizer:
    """Rebuild a fitted normaliser of any method (classical or neural) from its ``to_dict()``."""
    if data.get("method") == "neural":
        return NeuralStainNormalizer.from_dict(data)
    return classical.normalizer_from_dict(data)


def load_normalizer(path) -> StainNormalizer:
    """Read a normaliser of any method written by :func:`napari_mitosis.core.stain_norm.save_normalizer`
    (a fine-tuned network's weights from the ``.pt`` beside it)."""
    from pathlib import Path

    path = Path(path)
    data = classical.read_normalizer_dict(path)
    if data.get("method") == "neural" and data.get("weights"):
        state = torch.load(path.parent / data["weights"], map_location="cpu", weights_only=True)
        return NeuralStainNormalizer.from_dict(data, state)
    return normalizer_from_dict(data)
