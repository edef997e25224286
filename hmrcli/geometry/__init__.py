"""Pure geometry for Multi-RoI HMR: boxes, the RoI layout, crops, bbox_info, cameras, rotations.

This package imports torch, numpy (and cv2/roma where needed) but no other
hmrcli module.  Conventions, stated once:

* Image coordinates are pixels with OpenCV's pixel-centre convention: the
  centre of pixel (row ``i``, column ``j``) is at ``(x, y) = (j, i)``.
* Boxes are ``(cx, cy, b)`` (pixels); ``b`` is the crop-region height for
  "rect" boxes (width ``0.75 b``, crops 256x192 HxW) and the side for
  "square" boxes (crops 224x224).  ``scale = b / 200``.
* Camera frame as OpenCV (x right, y down, z forward), metres.  Full camera:
  ``K = [[f, 0, W/2], [0, f, H/2], [0, 0, 1]]``, ``R = I``, translation
  ``t_full``; default ``f = sqrt(W^2 + H^2)``.
* Local cameras ``(s, tx, ty)`` project to normalised crop coordinates
  ``((u - cx) / (b/2), (v - cy) / (b/2))``.

Functions follow their inputs: torch in -> torch out (same device and
floating dtype, any leading dims), numpy in -> numpy out.
"""

from .bbox_info import BBOX_INFO_CONSTANTS, bbox_info, default_focal
from .boxes import (
    BOX_ASPECTS,
    DEFAULT_RESCALE,
    PIXEL_STD,
    box_aspect,
    box_from_xyxy,
    box_inside_fraction,
    box_iou_xyxy,
    box_to_center_scale,
    box_wh,
    center_scale_to_box,
    cxcyb_to_xyxy,
    cxcywh_to_xyxy,
    xyxy_to_cxcyb,
    xyxy_to_cxcywh,
)
from .cameras import (
    CLIFF_EPS,
    CODE_SCALE_WEIGHT,
    PAPER_CONSISTENCY_WEIGHTS,
    ConsistencyResiduals,
    consistency_loss,
    consistency_residuals,
    full_to_local,
    image_to_normalized,
    intrinsics,
    local_to_full,
    normalized_to_image,
    project,
    weak_perspective_project,
)
from .crops import (
    CROP_SIZES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    compose_affine,
    crop_affine,
    crop_batch,
    crop_image_np,
    crop_images,
    crop_pixels_to_normalized,
    crop_size,
    denormalize_crops,
    invert_affine,
    map_points,
    normalize_crops,
    normalized_to_crop_pixels,
)
from .rois import MAX_ROIS, ROI_OFFSETS, ROI_SCALES, make_rois, roi_layout
from .rotations import (
    axis_angle_to_rotmat,
    axis_rotation,
    best_rotation,
    rot6d_to_rotmat,
    rotation_between,
    rotmat_to_axis_angle,
    rotmat_to_rot6d,
)

__all__ = [
    "BBOX_INFO_CONSTANTS",
    "BOX_ASPECTS",
    "CLIFF_EPS",
    "CODE_SCALE_WEIGHT",
    "CROP_SIZES",
    "DEFAULT_RESCALE",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MAX_ROIS",
    "PAPER_CONSISTENCY_WEIGHTS",
    "PIXEL_STD",
    "ROI_OFFSETS",
    "ROI_SCALES",
    "ConsistencyResiduals",
    "axis_angle_to_rotmat",
    "bbox_info",
    "best_rotation",
    "rotation_between",
    "box_aspect",
    "box_inside_fraction",
    "box_iou_xyxy",
    "box_from_xyxy",
    "box_to_center_scale",
    "box_wh",
    "center_scale_to_box",
    "compose_affine",
    "consistency_loss",
    "consistency_residuals",
    "crop_affine",
    "crop_batch",
    "crop_image_np",
    "crop_images",
    "crop_pixels_to_normalized",
    "crop_size",
    "cxcyb_to_xyxy",
    "cxcywh_to_xyxy",
    "default_focal",
    "denormalize_crops",
    "full_to_local",
    "image_to_normalized",
    "intrinsics",
    "invert_affine",
    "local_to_full",
    "make_rois",
    "map_points",
    "normalize_crops",
    "normalized_to_crop_pixels",
    "normalized_to_image",
    "project",
    "roi_layout",
    "axis_rotation",
    "rot6d_to_rotmat",
    "rotmat_to_axis_angle",
    "rotmat_to_rot6d",
    "weak_perspective_project",
    "xyxy_to_cxcyb",
    "xyxy_to_cxcywh",
]
