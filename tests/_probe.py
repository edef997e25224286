"""An input-sensitive probe network and an independent re-derivation of what the regression
engine must feed it (tests/test_probe_network.py).

Everything the engine computes between the image and the network -- person box -> crop box,
the RoI layout, the crops (affine warp, RGB order, H x W layout), ImageNet normalisation,
bbox_info -- and after it (CLIFF's local -> full camera conversion) is written out here again
from the documented conventions (docs / the papers), with OpenCV and numpy only: no hmrcli
geometry code. :class:`LinearProbe` is a regressor with the interface the engine calls
(``model(crops (B,M,3,H,W), bbox_info (B,M,3)) -> RegressorOutput``, ``model.config``) whose
outputs are a fixed linear read-out of each RoI's pixels, so they can be predicted from the
image alone (:func:`probe_outputs_np`).
"""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import torch
from torch import nn

# ImageNet statistics (RGB), applied to pixel / 255
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
# The Multi-RoI "Fixed" layout: RoI m of a box (cx, cy, b) is (cx + dx b, cy + dy b, k b)
LAYOUT = ((0.0, 0.0, 1.0), (0.1, 0.0, 1.5), (-0.1, 0.0, 1.25), (0.0, 0.1, 0.8), (0.0, -0.1, 0.65))
# CLIFF's bbox_info constants
BBOX_XY, BBOX_OFF, BBOX_SIZE = 2.8, 0.24, 0.06
# the upright global orientation (SMPL +y up -> camera -y)
FLIP = np.diag([1.0, -1.0, -1.0])


# --------------------------------------------------------------------------- expected inputs


def crop_box(xyxy, aspect_ratio: float, rescale: float) -> np.ndarray:
    """CLIFF's detector-box rule: centre of the corner box, b = max(w / ratio, h) * rescale."""
    x0, y0, x1, y1 = (float(v) for v in xyxy)
    return np.array([(x0 + x1) / 2, (y0 + y1) / 2, max((x1 - x0) / aspect_ratio, y1 - y0) * rescale])


def rois_of(box: np.ndarray, num_rois: int) -> np.ndarray:
    cx, cy, b = box
    return np.array([[cx + dx * b, cy + dy * b, k * b] for dx, dy, k in LAYOUT[:num_rois]])


def crop(image: np.ndarray, roi: np.ndarray, crop_hw) -> np.ndarray:
    """The RoI's crop: its centre to (w/2, h/2), scale h / b, bilinear, zeros outside
    (cv2.warpAffine with the affine written out; OpenCV pixel-centre convention)."""
    h, w = crop_hw
    cx, cy, b = roi
    k = h / b
    a = np.array([[k, 0.0, w / 2 - k * cx], [0.0, k, h / 2 - k * cy]])
    return cv2.warpAffine(image, a, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def normalise(crop_u8: np.ndarray) -> np.ndarray:
    """(h, w, 3) RGB uint8 -> (h, w, 3) float64 network values."""
    return (crop_u8.astype(np.float64) / 255.0 - MEAN) / STD


def bbox_info(rois: np.ndarray, wh, focal: float, principal) -> np.ndarray:
    cu, cv = principal
    return np.stack([(rois[:, 0] - cu) / focal * BBOX_XY, (rois[:, 1] - cv) / focal * BBOX_XY,
                     (rois[:, 2] - BBOX_OFF * focal) / (BBOX_SIZE * focal)], -1)


def cliff_full_camera(cam, roi, focal: float, principal) -> np.ndarray:
    """CLIFF's cam_crop2full: local (s, tx, ty) of a box (cx, cy, b) -> full-image translation
    (tx + 2 (cx - cu) / (b s), ty + 2 (cy - cv) / (b s), 2 f / (b s))."""
    s, tx, ty = cam
    cx, cy, b = roi
    bs = b * s
    return np.array([tx + 2 * (cx - principal[0]) / bs, ty + 2 * (cy - principal[1]) / bs, 2 * focal / bs])


def expected_inputs(image: np.ndarray, xyxy, cfg, focal: float | None = None, principal=None) -> SimpleNamespace:
    """Everything the engine should hand the network for one person of ``image`` (RGB)."""
    h_img, w_img = image.shape[:2]
    f = float(focal) if focal else float(np.sqrt(w_img ** 2 + h_img ** 2))
    c = (w_img / 2.0, h_img / 2.0) if principal is None else tuple(float(v) for v in principal)
    hw = tuple(cfg.crop_hw)
    box = crop_box(xyxy, hw[1] / hw[0], cfg.box_rescale)
    rois = rois_of(box, cfg.num_rois)
    crops = np.stack([crop(image, r, hw) for r in rois])  # (M, h, w, 3) uint8
    x = np.stack([normalise(cr) for cr in crops])  # (M, h, w, 3)
    return SimpleNamespace(box=box, rois=rois, crops=crops, x=x, bbox_info=bbox_info(rois, (w_img, h_img), f, c),
                           focal=f, principal=np.array(c), wh=(w_img, h_img),
                           K=np.array([[f, 0, c[0]], [0, f, c[1]], [0, 0, 1.0]]))


def network_input(inp: SimpleNamespace) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, M, 3, h, w) float32 crops and (1, M, 3) bbox_info of :func:`expected_inputs`."""
    x = torch.from_numpy(np.ascontiguousarray(inp.x.transpose(0, 3, 1, 2))).float()[None]
    return x, torch.from_numpy(inp.bbox_info).float()[None]


# --------------------------------------------------------------------------- the probe


def features_np(x: np.ndarray) -> np.ndarray:
    """Six read-outs of one normalised crop (h, w, 3): R - B in the top-left quadrant, G top
    half - bottom half, R left half - right half, and the means of B, R, G."""
    h, w = x.shape[:2]
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    return np.array([r[:h // 2, :w // 2].mean() - b[:h // 2, :w // 2].mean(),
                     g[:h // 2].mean() - g[h // 2:].mean(),
                     r[:, :w // 2].mean() - r[:, w // 2:].mean(),
                     b.mean(), r.mean(), g.mean()])


def _features_torch(x: torch.Tensor) -> torch.Tensor:
    """The same read-outs of (B, M, 3, H, W) crops, from whatever layout arrives."""
    h, w = x.shape[-2:]
    r, g, b = x[:, :, 0], x[:, :, 1], x[:, :, 2]

    def mean(t):
        return t.mean(dim=(-2, -1))

    return torch.stack([mean(r[..., :h // 2, :w // 2]) - mean(b[..., :h // 2, :w // 2]),
                        mean(g[..., :h // 2, :]) - mean(g[..., h // 2:, :]),
                        mean(r[..., :, :w // 2]) - mean(r[..., :, w // 2:]),
                        mean(b), mean(r), mean(g)], -1)


def _rot_z(angle):
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def probe_outputs_np(feats: np.ndarray, info: np.ndarray) -> dict[str, np.ndarray]:
    """What :class:`LinearProbe` answers for M RoIs with features (M, 6) and bbox_info (M, 3):
    cams (M, 3), betas (M, 10), rotmats (M, 24, 3, 3)."""
    m = len(feats)
    cams = np.stack([1.0 + 0.1 * feats[:, 0], 0.2 * feats[:, 1] + 0.1 * info[:, 0],
                     0.2 * feats[:, 2] + 0.1 * info[:, 1]], -1)
    betas = np.concatenate([feats, info, np.zeros((m, 1))], -1)
    rot = np.tile(np.eye(3), (m, 24, 1, 1))
    for k in range(m):
        rot[k, 0] = _rot_z(0.3 * feats[k, 3]) @ FLIP
        rot[k, 1] = _rot_z(0.2 * feats[k, 4]).T  # a body joint too (left hip about z)
    return {"cams": cams, "betas": betas, "rotmats": rot}


class LinearProbe(nn.Module):
    """A 'regressor' whose per-RoI outputs are :func:`probe_outputs_np` of its input pixels:
    local camera s = 1 + 0.1 f0, tx = 0.2 f1 + 0.1 bbox_info_x, ty = 0.2 f2 + 0.1 bbox_info_y;
    betas = (f0..f5, bbox_info, 0); global orientation Rz(0.3 f3) FLIP, left hip Rz(-0.2 f4),
    other joints the identity. The person's estimate is RoI 0's (aggregation "code")."""

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config
        self.num_rois = config.num_rois
        self.register_buffer("_device_anchor", torch.zeros(()))
        self.calls: list[tuple[tuple[int, ...], tuple[int, ...]]] = []

    def forward(self, crops: torch.Tensor, bbox_info: torch.Tensor, return_proj: bool = False):
        from hmrcli.nn.multiroi import RegressorOutput

        self.calls.append((tuple(crops.shape), tuple(bbox_info.shape)))
        x = crops.double()
        f = _features_torch(x)
        bi = bbox_info.double()
        cams = torch.stack([1.0 + 0.1 * f[..., 0], 0.2 * f[..., 1] + 0.1 * bi[..., 0],
                            0.2 * f[..., 2] + 0.1 * bi[..., 1]], -1)
        betas = torch.cat([f, bi, torch.zeros_like(bi[..., :1])], -1)
        b, m = f.shape[:2]
        rot = torch.eye(3, dtype=x.dtype).expand(b, m, 24, 3, 3).clone()
        rot[:, :, 0] = _rot_z_torch(0.3 * f[..., 3]) @ torch.as_tensor(FLIP, dtype=x.dtype)
        rot[:, :, 1] = _rot_z_torch(0.2 * f[..., 4]).transpose(-1, -2)
        out = crops.dtype
        return RegressorOutput(rotmats=rot.to(out), betas=betas.to(out), cams=cams.to(out),
                               pose6d=rot[..., :, :2].reshape(b, m, -1).to(out), person_rotmats=rot[:, 0].to(out),
                               person_betas=betas[:, 0].to(out), person_cam=cams[:, 0].to(out))


def _rot_z_torch(angle: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(angle), torch.sin(angle)
    z, o = torch.zeros_like(angle), torch.ones_like(angle)
    return torch.stack([torch.stack([c, -s, z], -1), torch.stack([s, c, z], -1), torch.stack([z, z, o], -1)], -2)


# --------------------------------------------------------------------------- small checkpoints


def small_config(num_rois: int = 5, aggregation: str = "code"):
    from hmrcli.nn.checkpoints import RegressorConfig

    return RegressorConfig(arch="multiroi", backbone="resnet18", num_rois=num_rois, crop_hw=(64, 48),
                           aggregation=aggregation)


def small_checkpoint(path, heads: str = "sensitive", num_rois: int = 5, pose=None, betas=None, seed: int = 0):
    """A saved Multi-RoI (ResNet-18, 64x48 crops, random weights) and the model itself.

    ``heads="sensitive"``: the decoders at full gain (xavier gain 1 instead of HMR's 0.01), so
    every output depends strongly on the crops (BGR crops move the cameras by ~0.1, reversed
    RoIs by ~0.03); ``"constant"``: the decoders zeroed, the outputs are the start values,
    ``pose`` (24, 3, 3) rotations (6D = their first two columns, row by row; default the
    identity with the upright global orientation FLIP) and ``betas`` (10,) (default 0)."""
    from hmrcli.nn.checkpoints import build_model, save_native

    cfg = small_config(num_rois)
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for lin in (model.decpose, model.decshape, model.deccam):
            if heads == "sensitive":
                nn.init.xavier_uniform_(lin.weight, gain=1.0)
            elif heads == "constant":
                lin.weight.zero_()
                lin.bias.zero_()
            else:
                raise ValueError(heads)
        if heads == "constant":
            rot = np.tile(np.eye(3), (24, 1, 1)) if pose is None else np.asarray(pose, dtype=np.float64)
            if pose is None:
                rot[0] = FLIP
            model.init_pose.copy_(torch.from_numpy(rot[:, :, :2].reshape(1, -1)))
            model.init_shape.copy_(torch.from_numpy(np.zeros(10) if betas is None else np.asarray(betas))[None])
    return save_native(model, cfg, path), model


# --------------------------------------------------------------------------- test images


def quadrant_image(h: int = 240, w: int = 320) -> np.ndarray:
    """RGB: R a left -> right ramp, G a top -> bottom ramp, B bright in the top-left quadrant
    (and a red top-left quadrant: R saturated there): channels, halves and positions differ."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.round(255 * x / (w - 1))
    img[..., 1] = np.round(255 * y / (h - 1))
    img[..., 2] = 25
    tl = (x < w // 2) & (y < h // 2)
    img[tl, 2] = 90
    img[tl & (x < w // 4), 0] = 255
    return img


def portrait_image(h: int = 180, w: int = 140) -> np.ndarray:
    """A second, portrait, pattern: R a bottom -> top ramp, G 20-px checks, B a left -> right ramp."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.round(255 * (1 - y / (h - 1)))
    img[..., 1] = np.where(((x // 20) + (y // 20)) % 2 == 0, 220, 40)
    img[..., 2] = np.round(255 * x / (w - 1))
    return img
