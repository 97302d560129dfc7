"""The GPU check (``make gpu-check``): ``check`` runs its steps and carries its wheels to a bare
device image, ``probe`` reads the machine and measures the pipeline, ``report`` words the result.

Nothing here is imported by the server; the check imports neither FAISS nor Ray.
"""
