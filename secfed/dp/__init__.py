"""Differential privacy: DP-SGD, privacy accounting, the privacy ledger and budget guard, audits."""
