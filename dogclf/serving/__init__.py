"""Serving a trained model: request decoding, SageMaker handlers, packaging and the local batching server.

Nothing heavy is imported here; import the submodules you need.
"""
