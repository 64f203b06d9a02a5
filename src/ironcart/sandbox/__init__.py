"""Sandboxes: stand-ins for the outside companies IronCart talks to, run as their own processes.

`psp` is the payment service provider (`ironcart sandbox-psp`, contract in docs/sandbox-psp.md).
A sandbox imports no IronCart context: it plays an external company, not a part of the shop.
"""
