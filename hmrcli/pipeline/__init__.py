"""Batch inference: inputs -> persons -> engine (regress | fit, optional refine) -> files under ``--out``.

The package, by the parts of a run: :mod:`.options` (options, summary, stop request, the
layout's constants), :mod:`.manifest` (settings and the re-run rule's records), :mod:`.layout`
(the files of one image), :mod:`.loader` (the loader thread), :mod:`.run` (:func:`run_inference`).

Output layout (``docs/output.md``), for an input filed under NAME (the file name, or its
path below a given folder, extension kept so ``a.jpg`` and ``a.png`` differ)::

    OUT/NAME/person_00.obj|.ply        mesh (metres; frame: see camera JSON "mesh")
    OUT/NAME/person_00.camera.json     camera + boxes + RoIs (hmrcli.camera/1)
    OUT/NAME/person_00.params.npz      body-model parameters
    OUT/NAME/overlay.png               with ``overlay``: all persons rendered over the photo
    OUT/NAME/result.json               written last: the image is done (hmrcli.result/1)
    OUT/manifest.jsonl                 what was produced with which settings (hmrcli.manifest/1)
    OUT/errors.jsonl                   one line per failed input or person (hmrcli.error/1)

XX in person_XX is the person's index among the image's detections; a person the engine
could not reconstruct (e.g. no landmarks found in its box) has no files, an errors.jsonl
line and an entry in result.json's "problems". A failing image never stops the batch.

Flow. One loader thread reads (through a small pool of decoding threads), detects and
prepares the images (``engine.prepare``: crops, or BlazePose landmarks for the fit engine)
and hands them over a bounded queue to the calling thread, which runs the engine on batches
and writes the files. The detector and the engine's landmark models are used from the loader
thread only (MediaPipe graphs are not thread-safe); the engine's ``run`` from the calling
thread only. At most ``2 * images_per_step`` prepared images wait in the queue, a few more
are being decoded or detected: memory does not grow with the number of images.

Per image, in this order: (1) an old ``result.json`` is removed (the image is not done until
the new one lands), (2) every person's files and the overlay are written atomically (temp
file + rename), (3) ``result.json`` is written, (4) files of the layout that the new result
does not list (persons that no longer exist, leftover temp files) are removed, (5) one line
is appended to ``manifest.jsonl``. A kill at any point leaves either a finished image or one
that the next run redoes.

Re-runs. An image is skipped when its ``result.json`` exists and its last manifest line has
the same settings (:func:`run_settings`: engine, model, checkpoint sha256, body model,
detector, focal, mesh formats/frame, overlay, ...) and the same input (file size and
modification time, and boxes given with the input), and the files it lists exist. Otherwise
it is redone, and the caller is told once per reason (``{"event": "redo", ...}``) which
settings differ. ``overwrite`` redoes every image.

Stopping. ``stop`` (a :class:`StopRequest`, set e.g. by a signal handler) makes the run
finish the batch the engine is working on, write it, and return; a KeyboardInterrupt
abandons the batch at once (its images are redone by the next run). Either way the loader
thread is joined before returning, the summary says ``interrupted`` and no temp files remain.
"""

from hmrcli.pipeline.layout import camera_record
from hmrcli.pipeline.manifest import Manifest, run_settings, settings_diff, settings_id
from hmrcli.pipeline.options import (
    CAMERA_CONVENTION,
    CAMERA_SCHEMA,
    ERRORS_NAME,
    MANIFEST_NAME,
    MANIFEST_SCHEMA,
    RESULT_SCHEMA,
    SIGNAL_EXIT_CODES,
    InferOptions,
    InferSummary,
    StopRequest,
    images_per_step_for,
)
from hmrcli.pipeline.run import run_inference

__all__ = ["InferOptions", "InferSummary", "StopRequest", "images_per_step_for", "Manifest", "run_inference", "run_settings",
           "settings_diff", "settings_id", "CAMERA_SCHEMA", "CAMERA_CONVENTION", "RESULT_SCHEMA", "MANIFEST_SCHEMA",
           "MANIFEST_NAME", "ERRORS_NAME", "SIGNAL_EXIT_CODES", "camera_record"]
