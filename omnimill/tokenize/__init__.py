"""Tokenizers: spatial, vector and sequence tokenizers for every label type (next issue)."""
