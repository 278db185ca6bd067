"""Serving a trained model: request decoding, SageMaker handlers, packaging and the local batching server.

Modules: :mod:`.codec` and :mod:`.npy` (requests and answers on the wire), :mod:`.handlers` (the SageMaker inference
functions), :mod:`.package` (``dogclf package``), :mod:`.server`, :mod:`.batcher`, :mod:`.connections` and
:mod:`.decode_memory` (``dogclf serve``), :mod:`.client` (``dogclf predict --url``) and :mod:`.answers` (answers as
``dogclf predict`` prints them).

Nothing heavy is imported here; import the submodules you need.
"""
