import os
import sys
from pathlib import Path

import pytest

# as the hmrcli command does, before torch starts (see hmrcli/cli/__init__.py)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

sys.path.insert(0, str(Path(__file__).parent))

from _fake_smpl import make_fake_smpl, write_chumpy_pickle  # noqa: E402


@pytest.fixture(scope="session")
def fake_smpl_model():
    return make_fake_smpl(seed=0)


@pytest.fixture(scope="session")
def fake_smpl_dir(tmp_path_factory, fake_smpl_model):
    """A folder laid out like a user's SMPL folder, with chumpy-style pickles."""
    d = tmp_path_factory.mktemp("smpl")
    write_chumpy_pickle(d / "basicmodel_neutral_lbs_10_207_0_v1.1.0.pkl", fake_smpl_model)
    write_chumpy_pickle(d / "SMPL_MALE.pkl", make_fake_smpl(seed=1))
    return d


@pytest.fixture(scope="session")
def constant_checkpoint(tmp_path_factory):
    """A standard-size Multi-RoI checkpoint whose heads output constants (see
    ``_pipeline_helpers.constant_checkpoint``)."""
    from _pipeline_helpers import constant_checkpoint as make

    return make(tmp_path_factory.mktemp("ckpt") / "constant", crop_hw=None)
