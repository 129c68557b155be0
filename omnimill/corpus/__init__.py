"""Corpora: listing (folders, tars, manifests) into stable keys and byte pointers, and the sample kinds
that decode a sample into what teachers see."""
