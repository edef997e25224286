"""Weights: the catalogue of known checkpoints (regressors and person detectors; resolve,
fetch, verify), the weights-only readers and regressors exported to ONNX
(:mod:`hmrcli.weights.onnx_regressor`). The BlazePose landmark files are managed beside
their backend (:mod:`hmrcli.detect.blazepose_models`)."""

from hmrcli.weights.catalogue import (
                                      RUNTIMES,
                                      FetchError,
                                      fetch_checkpoint,
                                      known_checkpoints,
                                      load_regressor,
                                      registry_document,
                                      resolve_checkpoint,
                                      verify_checkpoint,
)
from hmrcli.weights.onnx_regressor import OnnxExportError, OnnxRegressor, export_onnx
from hmrcli.weights.readers import CheckpointError, read_mmdet_checkpoint

__all__ = ["FetchError", "fetch_checkpoint", "known_checkpoints", "load_regressor", "registry_document", "resolve_checkpoint",
           "verify_checkpoint", "CheckpointError", "read_mmdet_checkpoint", "RUNTIMES", "OnnxExportError", "OnnxRegressor",
           "export_onnx"]
