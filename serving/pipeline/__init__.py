"""The request path's stages and their orchestration over a batch.

Owns: the feature tables and ranker-input assembly (``features``), recall (``recall``), crossing
(``crossing``), ranking (``ranking``) and the batch orchestration (``orchestration``).
Must not touch: HTTP, gRPC or Serve (the service and app layers above), files of the model
repository (``serving.repository``), or processes.
"""
