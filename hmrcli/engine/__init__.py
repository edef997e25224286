"""The engines, in one home: the records every engine takes and returns and the interface the
pipeline drives (:mod:`hmrcli.engine.base`), the regression engine (:mod:`.regress`: crops ->
network -> body model -> full camera) and the fitting engine and refiners (:mod:`.fit`:
BlazePose landmarks -> body-model fit, ``--refine fit|pc-hmr``; the optimisers live in
:mod:`hmrcli.fit`)."""
