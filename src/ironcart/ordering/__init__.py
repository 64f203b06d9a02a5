"""Ordering: checkout (a TCC transaction), orders and their state machine."""
