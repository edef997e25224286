"""hmrcli: batch 3D human mesh recovery (Multi-RoI HMR).

Python API (the CLI is a thin layer over it):

* :func:`hmrcli.body.load_body_model` -- the user's SMPL files or the free default body;
* :mod:`hmrcli.geometry` -- boxes, RoIs, crops, ``bbox_info``, cameras, projection;
* :func:`hmrcli.diagnostics.collect` -- what ``hmrcli doctor`` reports.
"""

from hmrcli._version import __version__

__all__ = ["__version__"]
