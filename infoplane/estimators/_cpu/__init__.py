"""The estimators' CPU routes: the compiled counting kernel behind binning and discrete
(:mod:`~infoplane.estimators._cpu.count_kernel`), its numpy fallback (:mod:`~infoplane.estimators._cpu.range_rows`)
and the k-NN distance blocks (:mod:`~infoplane.estimators._cpu.ksg`)."""
