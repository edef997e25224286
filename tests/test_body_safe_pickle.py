import copyreg
import os
import pickle

import numpy as np
import pytest

from hmrcli.body import UnsafePickleError, load_smpl_pickle
from hmrcli.body.safe_pickle import loads_smpl_pickle


def test_reads_chumpy_and_sparse_without_chumpy(fake_smpl_dir, fake_smpl_model):
    import sys

    assert "chumpy" not in sys.modules
    raw = (fake_smpl_dir / "basicmodel_neutral_lbs_10_207_0_v1.1.0.pkl").read_bytes()
    assert b"chumpy.ch" in raw and b"scipy.sparse" in raw  # really written with those class paths
    data = load_smpl_pickle(fake_smpl_dir / "basicmodel_neutral_lbs_10_207_0_v1.1.0.pkl")
    for k in ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f"):
        assert isinstance(data[k], np.ndarray), k
        np.testing.assert_array_equal(data[k], fake_smpl_model[k])
    assert data["bs_type"] == "lrotmin"


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Evals:
    def __reduce__(self):
        return (eval, ("1 + 1",))


@pytest.mark.parametrize("proto", [0, 2, 4, 5])
def test_refuses_code_execution(tmp_path, proto):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"v_template": np.zeros(3), "evil": _RunsCode(marker)}, protocol=proto)
    with pytest.raises(UnsafePickleError, match=r"(posix|os|nt)\.system"):
        loads_smpl_pickle(payload, source="evil.pkl")
    assert not marker.exists()
    with pytest.raises(UnsafePickleError, match="eval"):
        loads_smpl_pickle(pickle.dumps(_Evals(), protocol=proto))


def test_refuses_reconstructor_of_real_classes():
    # copyreg._reconstructor is allowed only for inert stand-ins, never for real classes
    class Sneaky:
        def __reduce_ex__(self, proto):
            return (copyreg._reconstructor, (np.ndarray, object, None))

    with pytest.raises(UnsafePickleError):
        loads_smpl_pickle(pickle.dumps(Sneaky(), protocol=2))


def test_error_names_the_file(tmp_path):
    p = tmp_path / "model.pkl"
    p.write_bytes(pickle.dumps(_Evals(), protocol=2))
    with pytest.raises(UnsafePickleError, match=str(p)):
        load_smpl_pickle(p)
