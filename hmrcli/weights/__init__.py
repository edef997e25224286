"""Weights: the catalogue of known checkpoints (regressors and person detectors; resolve,
fetch, verify) and the weights-only readers. The BlazePose landmark files are managed beside
their backend (:mod:`hmrcli.detect.blazepose_models`)."""

from hmrcli.weights.catalogue import (
                                      FetchError,
                                      fetch_checkpoint,
                                      known_checkpoints,
                                      load_regressor,
                                      registry_document,
                                      resolve_checkpoint,
                                      verify_checkpoint,
)
from hmrcli.weights.readers import CheckpointError, read_mmdet_checkpoint

__all__ = ["FetchError", "fetch_checkpoint", "known_checkpoints", "load_regressor", "registry_document", "resolve_checkpoint",
           "verify_checkpoint", "CheckpointError", "read_mmdet_checkpoint"]
