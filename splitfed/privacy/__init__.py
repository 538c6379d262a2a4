"""Differential privacy: mechanisms, events, accountants, ledger."""
