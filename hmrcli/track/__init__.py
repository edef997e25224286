"""Persons across the frames of a sequence: tracking and temporal smoothing.

A sequence is the frames of one video (or, with ``--sequence``, the images of one folder,
sorted naturally). Its per-frame estimates (one :class:`Observation` per reconstructed
person and frame) go through two steps, each with a small typed interface:

* :func:`track_people` (:mod:`.tracker`) links observations frame to frame into
  :class:`Track` s with stable ids (``track_00``, ``track_01``, ... in order of first
  appearance): Hungarian assignment (``scipy.optimize.linear_sum_assignment``) on a cost of
  box overlap (IoU with the track's box moved by its velocity), the distance of the
  projected joints and the root depth; a track that is not seen keeps its place for
  ``max_gap`` frames, so a person hidden for a moment gets its id back.
* :func:`smooth_track` (:mod:`.smooth`) makes one motion per track: one body shape (the
  median of the per-frame shapes) and, per ``method``, ``none`` (the per-frame estimates),
  ``one-euro`` (a One-Euro filter on unit quaternions kept on one hemisphere frame to frame,
  and on the translation) or ``fit-window`` (the body model fitted to windows of frames at
  once with an acceleration penalty: :func:`hmrcli.fit.temporal.fit_window`).

Units: metres, pixels, seconds; OpenCV camera frame (x right, y down, z forward).
"""

from hmrcli.track.smooth import (
    SMOOTHERS,
    OneEuroParams,
    SmoothedTrack,
    SmoothOptions,
    lag_note,
    one_euro_filter,
    smooth_track,
)
from hmrcli.track.tracker import TrackerOptions, track_people
from hmrcli.track.types import Observation, Track

__all__ = ["Observation", "Track", "TrackerOptions", "track_people", "SMOOTHERS", "SmoothOptions", "OneEuroParams",
           "SmoothedTrack", "smooth_track", "one_euro_filter", "lag_note"]
