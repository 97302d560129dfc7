"""Generated gRPC code of the ``rankserve.v1.Ranker`` service (from ``ranker.proto``)."""
