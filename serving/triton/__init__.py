"""Triton Inference Server: the process, the clients, ``config.pbtxt``, and the python-backend model.

Owns: starting and stopping ``tritonserver`` (``process``), inference and repository calls
(``client``), one model call with deadline and retry (``caller``), ``config.pbtxt`` as a protobuf
message (``config``), the in-process stand-in for benchmarks and score checks (``inprocess``), and
the generic model that runs inside Triton's python backend (``_model/model.py``).
Must not touch: request validation, batching or traffic decisions.
"""
