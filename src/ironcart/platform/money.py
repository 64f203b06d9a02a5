"""Money: a Decimal amount with an ISO 4217 currency. Never a float.

Stored as integer minor units (`to_minor`/`from_minor`); sent as JSON strings:
`{"amount": "9999.99", "currency": "CNY"}`.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

# Currencies whose minor unit is not 1/100 (ISO 4217 exponent).
_EXPONENTS = {"JPY": 0, "KRW": 0, "VND": 0, "CLP": 0, "ISK": 0, "BHD": 3, "KWD": 3, "OMR": 3}


class MoneyError(ValueError):
    """A malformed amount or currency, or arithmetic across currencies."""


def exponent(currency: str) -> int:
    return _EXPONENTS.get(currency, 2)


@dataclass(frozen=True, slots=True)
class Money:
    amount: Decimal
    currency: str

    def __post_init__(self) -> None:
        if len(self.currency) != 3 or not self.currency.isalpha() or not self.currency.isupper():
            raise MoneyError(f"not an ISO 4217 currency code: {self.currency!r}")
        if not isinstance(self.amount, Decimal) or not self.amount.is_finite():
            raise MoneyError("amount must be a finite Decimal")
        quantum = Decimal(1).scaleb(-exponent(self.currency))
        if self.amount != self.amount.quantize(quantum, rounding=ROUND_HALF_EVEN):
            raise MoneyError(f"{self.amount} has more decimals than {self.currency} allows")
        object.__setattr__(self, "amount", self.amount.quantize(quantum))

    @classmethod
    def of(cls, amount: str | int | Decimal, currency: str) -> Money:
        try:
            return cls(Decimal(str(amount)), currency)
        except InvalidOperation:
            raise MoneyError(f"not an amount: {amount!r}") from None

    @classmethod
    def from_minor(cls, minor: int, currency: str) -> Money:
        return cls(Decimal(minor).scaleb(-exponent(currency)), currency)

    @classmethod
    def zero(cls, currency: str) -> Money:
        return cls(Decimal(0), currency)

    def to_minor(self) -> int:
        return int(self.amount.scaleb(exponent(self.currency)))

    def __add__(self, other: Money) -> Money:
        self._same_currency(other)
        return Money(self.amount + other.amount, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same_currency(other)
        return Money(self.amount - other.amount, self.currency)

    def times(self, quantity: int) -> Money:
        return Money(self.amount * quantity, self.currency)

    def _same_currency(self, other: Money) -> None:
        if other.currency != self.currency:
            raise MoneyError(f"cannot combine {self.currency} with {other.currency}")

    def to_json(self) -> dict[str, str]:
        return {"amount": str(self.amount), "currency": self.currency}
