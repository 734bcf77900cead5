"""Federated-learning logic above secure aggregation: tasks, aggregation rules over decoded sums."""
