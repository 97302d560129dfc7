"""The model repository workflow: versions, traffic, validation, push, and following changes.

Owns: reading versions, metadata and traffic (``registry``), validating and pushing artifacts
(``push``). Must not touch: Ray or the HTTP/gRPC layers.
"""
