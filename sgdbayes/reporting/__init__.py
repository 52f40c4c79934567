"""Reports: one toolkit (:mod:`.toolkit`, numbers formatted by :mod:`.format`) and one module per
report (:mod:`.anomalous_diffusion`, :mod:`.spectral_dimension`, :mod:`.ablations`,
:mod:`.posterior_concentration`, :mod:`.analyze`). Reports show numbers the analysis stored; they
compute no statistic of their own (docs/architecture.md)."""
