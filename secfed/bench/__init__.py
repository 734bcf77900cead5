"""Reproducible benchmarks behind ``secfed bench ...``; each writes one JSON object."""
