"""ImpHMR (Cho et al., "Implicit 3D Human Mesh Recovery using Consistency with Pose and Shape
from Unseen-view", CVPR 2023) as a regressor of hmrcli, optionally behind Multi-RoI fusion.

``forward(crops (B,M,3,H,W), bbox_info (B,M,3)) -> RegressorOutput`` like the Multi-RoI and
CLIFF models, so the regression engine, ``hmrcli benchmark`` and the ONNX export take it as
they are. Structure (docs/method.md §10 has the account of what the paper states and what
hmrcli chose where its numbers are missing from the text):

1. **encoder**: the backbone's last map ``F`` (B*M, D, h, w) (ResNet-50 in the paper);
2. **foreground attention** (CBAM's spatial attention, Woo et al. 2018): ``A = sigmoid(conv7x7(
   [mean_c F, max_c F]))``, latent ``z = GAP(A * F)`` (D);
3. *(M > 1 only: Multi-RoI fusion)* the latents of the M RoIs go through the Multi-RoI
   attention fusion (:class:`hmrcli.nn.multiroi.MultiRoIHMR`'s ``pos_enc`` / ``fuse_fc`` /
   ``attention``, same names and shapes): ``z_m <- sum_n w_mn z_n``;
4. **neural feature field** (GIRAFFE's object field, Niemeyer & Geiger 2021) conditioned on
   ``z``: ``(sigma, f) = h(PE(x), PE(d), z)``, an MLP of 8 ReLU layers (width
   ``field_hidden``, skip at layer 4), density head, view-dependent feature head with
   ``D`` outputs; positional encodings with 10 (points) and 4 (directions) octaves;
5. **volume rendering** for the viewing direction (azimuth ``xi``, elevation 0): a
   ``feature_hw x feature_hw`` grid of parallel rays through the cube ``[-1, 1]^3`` the field
   lives in, ``n_samples`` points per ray (midpoints of equal intervals; uniformly jittered
   inside their interval while training), ``alpha_i = 1 - exp(-softplus(sigma_i) delta_i)``,
   ``f = sum_i T_i alpha_i f_i`` -> a map (D, feature_hw, feature_hw);
6. **aggregation** ``g``: one depthwise convolution whose kernel covers the whole map
   (the paper's best variant, "DWConv") -> feature vector (D);
7. **regressor**: SPIN's iterative regressor (3 iterations, 6D pose, betas, weak-perspective
   camera ``(s, tx, ty)``) on the feature; with M > 1 it is the Multi-RoI head (feature plus
   the box information of all M RoIs, as :class:`~hmrcli.nn.multiroi.MultiRoIHMR`);
8. **geometric guidance** (training only): the rendered map -> 1x1 conv -> 3 transposed
   convolutions (x2 each, BN, ReLU) -> silhouette logits (``8 feature_hw`` square).

Viewing direction: ``xi`` (radians) turns the virtual camera about the vertical axis (the
camera's y axis) by ``R_y(xi) = [[cos, 0, sin], [0, 1, 0], [-sin, 0, cos]]``; ray directions
are ``R_y(xi) e_z`` and the grid axes turn with them. The person seen from that camera is the
canonical one turned by ``R_y(xi)^T`` (:func:`azimuth_rotation`), which is how the training
ground truth is rotated (:mod:`hmrcli.train.losses_imphmr`). ``xi = 0`` is the canonical view
(the image's own), the only one inference uses unless ``view_azimuth_deg`` is set (``hmrcli
infer --view-azimuth DEG``): then pose and shape are those inferred for that view, and the
camera (the person's place in the image) stays the canonical view's.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from hmrcli.nn.multiroi import (
    BBOX_INFO_DIM,
    MultiRoIHMR,
    PositionalEncoding,
    RegressorOutput,
    _decode,
    _head_init,
    _iterate,
    add_fusion_layers,
    contrastive_projection,
)

__all__ = ["ImpHMR", "FeatureField", "azimuth_rotation"]


def azimuth_rotation(xi: torch.Tensor) -> torch.Tensor:
    """(...,) azimuths in radians -> (..., 3, 3) rotations about the camera's y axis,
    ``[[cos, 0, sin], [0, 1, 0], [-sin, 0, cos]]`` (right-handed; the module docstring)."""
    c, s = torch.cos(xi), torch.sin(xi)
    z, o = torch.zeros_like(xi), torch.ones_like(xi)
    return torch.stack([torch.stack([c, z, s], -1), torch.stack([z, o, z], -1), torch.stack([-s, z, c], -1)], -2)


class FeatureField(nn.Module):
    """GIRAFFE's object feature field with one latent: ``forward(pe_x (N,P,Cx), pe_d (N,Cd),
    z (N,Dz)) -> sigma (N,P), feature (N,P,Dout)``.

    Layers: ``fc_in`` (PE(x) -> hidden) plus ``fc_z`` (z -> hidden), ReLU; ``blocks`` (hidden ->
    hidden, ReLU) with ``PE(x)`` and ``z`` added again before block ``skip``; ``sigma_out``;
    ``feat_view`` plus ``fc_z_view`` (z) plus ``fc_view`` (PE(d)), ReLU, ``feat_out``.
    """

    def __init__(self, pe_x_dim: int, pe_d_dim: int, z_dim: int, hidden: int, out_dim: int,
                 n_layers: int = 8, skip: int = 4) -> None:
        super().__init__()
        self.skip = skip
        self.fc_in = nn.Linear(pe_x_dim, hidden)
        self.fc_z = nn.Linear(z_dim, hidden)
        self.blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(n_layers - 1))
        self.fc_z_skip = nn.Linear(z_dim, hidden)
        self.fc_p_skip = nn.Linear(pe_x_dim, hidden)
        self.sigma_out = nn.Linear(hidden, 1)
        self.feat_view = nn.Linear(hidden, hidden)
        self.fc_z_view = nn.Linear(z_dim, hidden)
        self.fc_view = nn.Linear(pe_d_dim, hidden)
        self.feat_out = nn.Linear(hidden, out_dim)

    def forward(self, pe_x: torch.Tensor, pe_d: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        net = F.relu(self.fc_in(pe_x) + self.fc_z(z)[:, None])
        for i, layer in enumerate(self.blocks, start=1):
            if i == self.skip:
                net = net + self.fc_z_skip(z)[:, None] + self.fc_p_skip(pe_x)
            net = F.relu(layer(net))
        sigma = self.sigma_out(net)[..., 0]
        h = F.relu(self.feat_view(net) + self.fc_z_view(z)[:, None] + self.fc_view(pe_d)[:, None])
        return sigma, self.feat_out(h)


class ImpHMR(nn.Module):
    """ImpHMR: ``forward(crops (B,M,3,H,W), bbox_info (B,M,3)) -> RegressorOutput`` (module
    docstring). ``num_rois`` M = 1 is the paper's model; M > 1 puts Multi-RoI fusion in front
    of the feature field. Training uses :meth:`forward_views` (several viewing directions over
    one backbone pass, silhouettes on request)."""

    def __init__(
        self,
        backbone: nn.Module,
        num_rois: int = 1,
        n_iter: int = 3,
        mean_params: dict[str, torch.Tensor] | None = None,
        field_hidden: int = 128,
        feature_hw: int = 8,
        n_samples: int = 32,
        with_proj_head: bool = True,
    ) -> None:
        super().__init__()
        if not 1 <= num_rois <= 5:
            raise ValueError(f"num_rois must be 1..5, got {num_rois}")
        self.num_rois = num_rois
        self.n_iter = n_iter
        self.aggregation = "code"
        self.feature_hw = feature_hw
        self.n_samples = n_samples
        self.backbone = backbone
        d = int(backbone.feature_dim)
        self.feature_dim = d
        #: azimuth (degrees) ``forward`` infers for when none is passed (0: the canonical view)
        self.view_azimuth_deg = 0.0
        self.fg_attention = nn.Conv2d(2, 1, kernel_size=7, padding=3, bias=False)
        if num_rois > 1:  # Multi-RoI fusion, the names and shapes of MultiRoIHMR's
            add_fusion_layers(self, d, num_rois)
        self.pe_x = PositionalEncoding(10, 3)
        self.pe_d = PositionalEncoding(4, 3)
        self.field = FeatureField(self.pe_x.out_dim, self.pe_d.out_dim, d, field_hidden, d)
        self.aggregate = nn.Conv2d(d, d, kernel_size=feature_hw, groups=d)
        if num_rois > 1:
            _head_init(self, d + BBOX_INFO_DIM * num_rois, 2048, mean_params)
        else:
            _head_init(self, d, 1024, mean_params)
        self.silhouette_decoder = nn.Sequential(
            nn.Conv2d(d, 256, kernel_size=1), nn.BatchNorm2d(256), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(256, 128, 4, 2, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(128, 64, 4, 2, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(64, 32, 4, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.Conv2d(32, 1, kernel_size=1),
        )
        if with_proj_head and num_rois > 1:
            self.proj_head = nn.Sequential(
                nn.Linear(d, d), nn.BatchNorm1d(d), nn.ReLU(inplace=True),
                nn.Linear(d, d, bias=False), nn.BatchNorm1d(d),
            )

    @property
    def silhouette_hw(self) -> int:
        """Side (pixels) of the silhouettes of the geometric guidance branch."""
        return 8 * self.feature_hw

    # -- pieces ---------------------------------------------------------------------
    def encode(self, crops: torch.Tensor, backbone_chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """crops (B, M, 3, H, W) -> (foreground-attended latents (B, M, D), backbone pooled features
        (B, M, D) for the contrastive head)."""
        b, m = crops.shape[:2]
        x = crops.reshape(b * m, *crops.shape[2:])
        if backbone_chunk and not self.backbone.training and backbone_chunk < x.shape[0]:
            fmap = torch.cat([self.backbone.forward_maps(x[i:i + backbone_chunk])
                              for i in range(0, x.shape[0], backbone_chunk)])
        else:
            fmap = self.backbone.forward_maps(x)
        att = torch.sigmoid(self.fg_attention(torch.cat([fmap.mean(1, keepdim=True), fmap.amax(1, keepdim=True)], 1)))
        z = (att * fmap).mean((2, 3))
        return z.reshape(b, m, -1), fmap.mean((2, 3)).reshape(b, m, -1)

    def render(self, z: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        """Volume-render the feature field of latents z (N, D) seen from azimuths xi (N,)
        (radians) -> feature maps (N, D, feature_hw, feature_hw)."""
        n, s, p = z.shape[0], self.feature_hw, self.n_samples
        dev, dt = z.device, z.dtype
        g = (torch.arange(s, device=dev, dtype=dt) + 0.5) * (2.0 / s) - 1.0  # pixel centres in [-1, 1]
        step = 2.0 / p
        t = (torch.arange(p, device=dev, dtype=dt) + 0.5) * step - 1.0
        if self.training:  # stratified samples (GIRAFFE): one uniform draw inside every interval
            t = t + (torch.rand(n, 1, 1, p, device=dev, dtype=dt) - 0.5) * step
        else:
            t = t.expand(n, 1, 1, p)
        vv, uu = torch.meshgrid(g, g, indexing="ij")  # (s, s): row = y (down), column = x (right)
        local = torch.stack([uu[..., None].expand(s, s, p).expand(n, s, s, p),
                             vv[..., None].expand(s, s, p).expand(n, s, s, p),
                             t.expand(n, s, s, p)], -1)  # (N, s, s, P, 3) in the virtual camera's axes
        rot = azimuth_rotation(xi.to(dt))  # (N, 3, 3) virtual camera -> field (canonical camera) axes
        pts = torch.einsum("nij,nabpj->nabpi", rot, local).reshape(n, s * s * p, 3)
        d = rot[:, :, 2]  # ray direction R e_z
        sigma, feat = self.field(self.pe_x(pts), self.pe_d(d), z)
        sigma = F.softplus(sigma).reshape(n, s * s, p)
        feat = feat.reshape(n, s * s, p, -1)
        tau = sigma * step  # optical depth of each interval
        alpha = 1.0 - torch.exp(-tau)
        # transmittance T_i = prod_{j<i} (1 - alpha_j) = exp(-sum_{j<i} tau_j) (a cumulative sum:
        # the same values, and it exports to ONNX where a cumulative product does not)
        trans = torch.exp(-(torch.cumsum(tau, -1) - tau))
        w = alpha * trans  # (N, s*s, P)
        fmap = torch.einsum("nrp,nrpc->nrc", w, feat)
        return fmap.transpose(1, 2).reshape(n, -1, s, s)

    def fuse(self, z: torch.Tensor, bbox_info: torch.Tensor) -> torch.Tensor:
        """Multi-RoI fusion of the latents (B, M, D) (M > 1; identity for M = 1)."""
        if self.num_rois == 1:
            return z
        w = MultiRoIHMR.fusion_weights(self, z, bbox_info)  # the same computation, on this model's modules
        return torch.einsum("bmn,bnd->bmd", w, z)

    def _regress(self, feat: torch.Tensor, bbox_info: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, m = bbox_info.shape[:2]
        x = feat.reshape(b * m, -1)
        if self.num_rois > 1:
            info = bbox_info.reshape(b, 1, m * BBOX_INFO_DIM).expand(b, m, -1).reshape(b * m, -1)
            x = torch.cat([x, info.to(x.dtype)], -1)
        pose, shape, cam = _iterate(self, x, self.n_iter)
        return pose.reshape(b, m, -1), shape.reshape(b, m, -1), cam.reshape(b, m, -1)

    def _check(self, crops: torch.Tensor, bbox_info: torch.Tensor) -> None:
        b, m = crops.shape[:2]
        if crops.dim() != 5 or m != self.num_rois or bbox_info.shape != (b, m, BBOX_INFO_DIM):
            raise ValueError(f"expected crops (B,{self.num_rois},3,H,W) and bbox_info (B,{self.num_rois},3); "
                             f"got {tuple(crops.shape)} and {tuple(bbox_info.shape)}")

    # -- forward --------------------------------------------------------------------
    def forward_views(
        self,
        crops: torch.Tensor,
        bbox_info: torch.Tensor,
        azimuths: list[torch.Tensor],
        silhouettes: list[bool] | None = None,
        return_proj: bool = False,
        backbone_chunk: int | None = None,
    ) -> list[RegressorOutput]:
        """One backbone pass, one :class:`RegressorOutput` per entry of ``azimuths`` ((B,)
        radians each; every RoI of a person is seen from the person's azimuth). Where
        ``silhouettes[k]``, output k's ``extras["silhouette"]`` holds the guidance branch's
        logits (B, M, S, S) (S = :attr:`silhouette_hw`). ``extras["azimuth"]``: the (B,) azimuths."""
        self._check(crops, bbox_info)
        b, m = crops.shape[:2]
        z, pooled = self.encode(crops, backbone_chunk)
        bbox_info = bbox_info.to(z.dtype)
        z = self.fuse(z, bbox_info)
        proj = contrastive_projection(self, pooled) if return_proj else None
        outs = []
        for k, xi in enumerate(azimuths):
            xi = torch.as_tensor(xi, dtype=z.dtype, device=z.device).reshape(-1).expand(b)
            fmap = self.render(z.reshape(b * m, -1), xi.repeat_interleave(m))
            feat = self.aggregate(fmap).reshape(b, m, -1)
            pose, shape, cam = self._regress(feat, bbox_info)
            rot = _decode(pose)
            extras: dict[str, Any] = {"azimuth": xi}
            if silhouettes is not None and silhouettes[k]:
                extras["silhouette"] = self.silhouette_decoder(fmap).reshape(b, m, self.silhouette_hw,
                                                                             self.silhouette_hw)
            outs.append(RegressorOutput(
                rotmats=rot, betas=shape, cams=cam, pose6d=pose, person_rotmats=rot[:, 0], person_betas=shape[:, 0],
                person_cam=cam[:, 0], proj=proj, features=feat, extras=extras))
        return outs

    def forward(
        self,
        crops: torch.Tensor,
        bbox_info: torch.Tensor,
        return_proj: bool = False,
        backbone_chunk: int | None = None,
        azimuth: torch.Tensor | float | None = None,
    ) -> RegressorOutput:
        """The estimate for one viewing direction: ``azimuth`` (radians, scalar or (B,)); None:
        :attr:`view_azimuth_deg` (0 = the canonical view). For a view other than the canonical
        one the cameras (``cams``, ``person_cam``) are the canonical view's (module docstring)."""
        b = crops.shape[0]
        if azimuth is None:
            deg = float(self.view_azimuth_deg)
            azimuth = math.radians(deg)
            if deg == 0.0:
                return self.forward_views(crops, bbox_info, [torch.zeros(b)], None, return_proj, backbone_chunk)[0]
        canon, view = self.forward_views(crops, bbox_info, [torch.zeros(b), torch.as_tensor(azimuth)], None,
                                         return_proj, backbone_chunk)
        view.cams, view.person_cam = canon.cams, canon.person_cam
        return view
