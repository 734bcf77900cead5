"""The federation coordinator (gRPC servicer, rounds, persistence): built on ``secfed``, never on ``client``."""
