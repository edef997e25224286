"""hmrcli: batch 3D human mesh recovery (Multi-RoI HMR).

Python API (the CLI is a thin layer over it):

* :func:`hmrcli.load_regressor` -- a Multi-RoI / CLIFF network from any supported checkpoint;
* :func:`hmrcli.body.load_body_model` -- the user's SMPL files or the free default body;
* :mod:`hmrcli.geometry` -- boxes, RoIs, crops, ``bbox_info``, cameras, projection;
* :func:`hmrcli.diagnostics.collect` -- what ``hmrcli doctor`` reports.
"""

import os as _os

from hmrcli._version import __version__

# The batch pipeline runs decoding/detection/BlazePose on a loader thread beside the network
# or the fit on the main thread. With OpenMP's default wait policy torch's idle worker
# threads spin and starve the other thread: on 2 cores `hmrcli infer sample_images` took
# 105 s instead of 3.3 s. PASSIVE makes idle OpenMP threads sleep. It only takes effect if
# set before torch (OpenMP) starts, which importing hmrcli first ensures; an explicit
# setting in the environment wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__all__ = ["__version__", "load_regressor", "load_body_model"]


def __getattr__(name: str):  # lazy: importing hmrcli stays cheap for the CLI
    if name in ("load_regressor", "load_body_model"):
        from hmrcli import api

        return getattr(api, name)
    raise AttributeError(f"module 'hmrcli' has no attribute {name!r}")
