"""Torch side of the backend: model loading, the capture engine and the in-process analysis API.

Importing this package imports torch and transformers; the web app never does.
"""
