"""Fitting and refinement: landmark models, the SMPLify-style optimiser, PC-HMR calibration
(the engines that use them: :mod:`hmrcli.engine.fit`).

Modules (import what you use; nothing here is imported eagerly):

* ``hmrcli.fit.landmarks`` -- BlazePose landmarks per person (optionally on every RoI, fused)
  and their correspondence with the body model's COCO-17 keypoints.
* ``hmrcli.fit.optimize`` -- SMPLify-style optimisation of pose, shape and camera, person by person.
* ``hmrcli.fit.pchmr`` -- PC-HMR pose calibration of a mesh by a 3D pose stream.
"""
