"""Figures from runs: the numbers behind them (:mod:`~infoplane.viz.stats`), planes and curves
(:mod:`~infoplane.viz.planes`), animations (:mod:`~infoplane.viz.animation`) and the HTML report
(:mod:`~infoplane.viz.report`). :mod:`infoplane.plot` is the public face."""
