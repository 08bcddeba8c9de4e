"""What a run leaves behind: the results.json schema, the run directory
(``store``: atomic writes, resume), the deployment ``gate``, the ``report``
and its ``pareto`` plot.
"""
