"""Headless mesh rendering: RGB overlay on a photo, mesh-index mask and depth map.

    from hmrcli.render import render, render_overlay, RenderOutput
    out = render([(vertices, faces)], K, (W, H), R, t, background=photo)
    out.rgb, out.mask, out.depth          # (H, W, 3) uint8, (H, W) int16, (H, W) float32

Why a torch rasterizer of our own
---------------------------------
The renderer must run on a machine with no display and no GPU, installed by pip alone (no
system packages).  The PyPI options were checked and none fits:

* pyrender, moderngl, vispy, open3d's offscreen renderer and VTK's offscreen windows need an
  OpenGL context, i.e. EGL or OSMesa system libraries (or an X server);
* pytorch3d has no wheels for current torch on CPU (building it needs a compiler toolchain);
* nvdiffrast needs the CUDA toolkit and OpenGL;
* ray casters (embreex through trimesh, mitsuba) are CPU-only or bring large native packages
  (mitsuba's CPU back-end also wants a system LLVM), a new dependency for what a few hundred
  lines of torch do.

So :mod:`hmrcli.render.raster` is a vectorised z-buffer scanline rasterizer in plain torch,
with no new dependency.  It runs on whatever device its tensors are on: the same code renders
on CPU and on CUDA (``device`` argument; by default the device of GPU-resident inputs, else
CUDA when available, else CPU).  A person mesh (13,718 vertices, 27,420 faces) overlaid on a
1024x1024 photo takes about 0.05 s on one CPU core (``benchmarks/render_speed.py``).

Conventions (details in :mod:`hmrcli.render.raster`)
--------------------------------------------------------
* OpenCV pinhole camera: x right, y down, z forward, metres; ``X_cam = R @ X + t``; intrinsics
  ``K`` in pixels with last row ``(0, 0, 1)``.
* Pixel ``(u, v) = (0, 0)`` is the centre of the top-left pixel; a pixel is covered when its
  centre is inside a projected triangle (no anti-aliasing).
* Only geometry with ``z > NEAR`` (1 mm) is drawn; triangles crossing the near plane are clipped.
* Depth is camera-frame z, interpolated perspective-correctly (``1/z`` is linear in screen space).
* Shading: two-sided Lambertian headlight (light at the camera centre) with smooth, area-weighted
  vertex normals; default colours :data:`PALETTE` (mesh 0 light blue).
"""

from hmrcli.render.raster import Fragments, clip_near, rasterize
from hmrcli.render.renderer import (
    AMBIENT,
    BODY_COLOR,
    DIFFUSE,
    NEAR,
    PALETTE,
    RenderOutput,
    default_colors,
    quality_color,
    render,
    render_overlay,
)

__all__ = [
    "AMBIENT",
    "BODY_COLOR",
    "DIFFUSE",
    "NEAR",
    "PALETTE",
    "Fragments",
    "RenderOutput",
    "clip_near",
    "default_colors",
    "quality_color",
    "rasterize",
    "render",
    "render_overlay",
]
