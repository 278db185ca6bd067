"""Backbone features: extraction, the on-disk feature cache, and training the head on features."""
