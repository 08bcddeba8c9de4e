"""The pipeline strings the other packages together: a ``recipe`` names a
model (``qeval.models``), text, policies and a gate; the ``runner`` evaluates
the baseline and each policy (``passes``: plan, quantize, measure) and leaves
results behind.
"""
