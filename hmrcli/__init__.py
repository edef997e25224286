"""hmrcli: batch 3D human mesh recovery (Multi-RoI HMR).

Python API (the CLI is a thin layer over it):

* :func:`hmrcli.load_regressor` -- a Multi-RoI / CLIFF network from any supported checkpoint;
* :func:`hmrcli.body.load_body_model` -- the user's SMPL files or the free default body;
* :mod:`hmrcli.geometry` -- boxes, RoIs, crops, ``bbox_info``, cameras, projection;
* :func:`hmrcli.diagnostics.collect` -- what ``hmrcli doctor`` reports.

Importing hmrcli changes no process settings. The command line sets
``OMP_WAIT_POLICY=PASSIVE`` before torch starts (idle OpenMP threads otherwise spin and starve
the pipeline's loader thread); do the same in programs that run :mod:`hmrcli.pipeline`.
"""

from hmrcli._version import __version__

__all__ = ["__version__", "load_regressor", "load_body_model"]


def __getattr__(name: str):  # lazy: importing hmrcli stays cheap for the CLI
    if name in ("load_regressor", "load_body_model"):
        # start-up: hmrcli.api loads torch (~3 s); `import hmrcli` and the CLI stay fast
        from hmrcli import api

        return getattr(api, name)
    raise AttributeError(f"module 'hmrcli' has no attribute {name!r}")
