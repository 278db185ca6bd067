"""Backbone features: extraction, the on-disk feature cache (image keys, shards), and the pipeline that fills it.

Heads are fitted on these features in :mod:`dogclf.training` (``head``, ``lbfgs``).
"""
