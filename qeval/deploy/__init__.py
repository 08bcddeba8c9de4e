"""Bytes and hardware: what a model needs in memory, and which GPU serves it.

Works from a model's config alone (the meta device): ``memory`` counts
parameters and weight bytes under a policy, ``kv`` the KV cache, ``load``
builds the meta-device model (``cache`` keeps its layout), ``hardware`` reads
the GPU catalog, ``recommend`` chooses GPUs and ``text`` explains the choice.
"""
