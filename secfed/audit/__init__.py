"""Privacy-budget audit reports: built from ledgers, signed by their issuer, verifiable by anyone."""
