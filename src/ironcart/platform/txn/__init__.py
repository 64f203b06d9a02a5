"""Distributed transactions: TCC (coordinator, participant fences, recovery)."""
