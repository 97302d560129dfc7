"""rankserve: the Ray Serve ranking application, its stages, Triton and FAISS wrappers, and CLI."""

__version__ = "0.1.0"
__all__ = ["__version__"]
