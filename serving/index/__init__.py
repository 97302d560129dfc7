"""Vector recall indexes: the one place FAISS is imported (``faiss_index``)."""
