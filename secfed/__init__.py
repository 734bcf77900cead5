"""secfed."""
