"""Lean 4M-style trainer over token shards (a later issue)."""
