"""Cryptographic primitives for secure aggregation.

The submodules are deliberately thin, separately importable wrappers around
``cryptography`` (X25519, HKDF-SHA256, AES-CTR, AES-GCM) plus a small Shamir
implementation.  Nothing is re-exported here so that importing one primitive
does not pull in the others, and so that every call site names the exact
construction it relies on (``secfed.crypto.prg.mask_vector`` rather than a
generic ``crypto.mask``), which keeps security reviews grep-able.
"""

from __future__ import annotations
