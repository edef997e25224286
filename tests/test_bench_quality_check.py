"""benchmarks/quality_check.py's pieces: the synthetic scenes and the ranking statistics."""

import numpy as np
import pytest

from hmrcli.bench.quality_check import (
    CORRUPTIONS,
    make_scenes,
    measure_correlations,
    ranking,
)
from hmrcli.body import load_body_model


def test_ranking_perfect_reversed_and_best_fractions():
    err = np.arange(1.0, 11.0)  # 1 .. 10 mm
    perfect = ranking(-err, err)  # the highest score on the smallest error
    assert perfect["spearman"] == 1.0 and perfect["mean_error_all_mm"] == 5.5
    assert perfect["mean_error_best_50pct_mm"] == 3.0 and perfect["mean_error_best_80pct_mm"] == 4.5
    assert perfect["reduction_best_50pct"] == pytest.approx(100 * (1 - 3.0 / 5.5), abs=0.1)
    worst = ranking(err, err)
    assert worst["spearman"] == -1.0 and worst["mean_error_best_50pct_mm"] == 8.0
    assert ranking(np.ones(2), np.ones(2)) == {"n": 2}


def test_single_measure_correlations_are_signed_higher_is_worse():
    rows = []
    for k in range(6):
        q = {"rois": 5, "rois_used": 5 - k % 3, "visible_joints": 17 - k, "residual_3d_mm": {"overall": 10.0 * k}}
        rows.append({"found": True, "pa_mpjpe_mm": 50.0 + k, "quality": q})
    rows.append({"found": False})
    c = measure_correlations(rows, "fit")
    assert c["residual_3d_mm"] == 1.0 and c["hidden_joints"] == 1.0 and c["landmark_spread_box_pct"] is None
    assert c["rois_dropped"] > 0


def test_scenes_corruptions_and_truncation():
    body = load_body_model("free")
    scenes = make_scenes(body, 8, seed=3, image_wh=(320, 180))
    assert {s.corruption for s in scenes} <= set(CORRUPTIONS)
    for s in scenes:
        assert s.image.shape == (180, 320, 3) and s.image.dtype == np.uint8
        x1, y1, x2, y2 = s.box
        assert -0.5 <= x1 < x2 <= 319.5 and -0.5 <= y1 < y2 <= 179.5
        if "truncated" in s.corruption:
            edge = {"left": x1 + 0.5, "top": y1 + 0.5, "right": 319.5 - x2, "bottom": 179.5 - y2}[s.side]
            assert edge == pytest.approx(0.0, abs=1e-6) and 0.15 <= s.cut <= 0.55
        else:
            assert s.side is None
        assert (s.occluded > 0) == ("occluded" in s.corruption) or s.occluded == 0
    again = make_scenes(body, 8, seed=3, image_wh=(320, 180))
    assert np.array_equal(again[0].image, scenes[0].image)  # deterministic for a seed
