"""The ``secfed`` command line: one entry point (:func:`main`), one module per command group
(:mod:`~secfed.cli.run`, :mod:`~secfed.cli.bench`, :mod:`~secfed.cli.certs`, :mod:`~secfed.cli.audit`)."""

from secfed.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
