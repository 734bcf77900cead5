"""The institution-side gRPC runtime: built on ``secfed``, never on ``server``."""
