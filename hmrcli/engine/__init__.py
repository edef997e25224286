"""The regression engine (:mod:`hmrcli.engine.regress`) and the records every engine returns
(``PersonBox`` in, ``PersonEstimate`` out). The fitting engine lives with the fit
(:mod:`hmrcli.fit.engine`)."""
