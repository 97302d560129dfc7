"""Vector recall indexes: FAISS (``faiss_index``, the one place FAISS is imported) and exact search
with torch (``torch_exact``, for machines without FAISS; labelled ``torch_exact`` wherever it is used)."""
