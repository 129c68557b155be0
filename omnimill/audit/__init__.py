"""Audit: sample pictures of every label; FAISS index and reports come next."""
