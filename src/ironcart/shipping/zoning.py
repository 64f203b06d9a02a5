"""Shipping zones (staff) and quotes (anyone; checkout through the client port).

A mixin of `ShippingService`, which provides the unit of work and the retry loop.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal

from sqlalchemy.exc import IntegrityError

from ironcart.platform.money import Money, MoneyError
from ironcart.shipping.domain import (
    MAX_WEIGHT_GRAMS,
    InvalidShippingData,
    Quote,
    ShippingMethod,
    Zone,
    ZoneChanged,
    ZoneNameTaken,
    ZoneNotFound,
    check_zone,
    destination,
    parcel_weight,
    quote,
)
from ironcart.shipping.repository import ShippingUnitOfWork


@dataclass(frozen=True, slots=True)
class ZoneDraft:
    name: str
    countries: Sequence[str]
    postal_prefixes: Sequence[str]
    methods: Sequence[ShippingMethod]


class ZoneAdmin:
    """Zones and quotes (see the module docstring)."""

    _uow: Callable[[], ShippingUnitOfWork]
    _clock: Callable[[], datetime]

    # -- zones (staff) -------------------------------------------------------------------------

    async def list_zones(self) -> list[Zone]:
        """Every zone with its methods, by name."""
        async with self._uow().reading() as uow:
            return await uow.zones.all()

    async def get_zone(self, zone_id: str) -> Zone:
        """One zone; `ZoneNotFound` if there is none."""
        async with self._uow().reading() as uow:
            zone = await uow.zones.get(zone_id)
        if zone is None:
            raise ZoneNotFound(f"No shipping zone {zone_id!r}.")
        return zone

    async def create_zone(self, draft: ZoneDraft) -> Zone:
        """A new zone with its methods (version 1); `ZoneNameTaken` if the name is in use."""
        zone = _zone(str(uuid.uuid4()), draft)
        try:
            async with self._uow() as uow:
                if await uow.zones.name_taken(zone.name):
                    raise ZoneNameTaken(f"A zone is named {zone.name!r} already.")
                await uow.zones.add(zone, now=self._clock())
                await uow.commit()
        except IntegrityError:
            raise ZoneNameTaken(f"A zone is named {zone.name!r} already.") from None
        return await self.get_zone(zone.id)

    async def update_zone(self, zone_id: str, draft: ZoneDraft, *, expected_version: int) -> Zone:
        """Replace the zone and its methods if it is still at `expected_version` (else 412)."""
        zone = _zone(zone_id, draft)
        try:
            async with self._uow() as uow:
                if await uow.zones.get(zone_id) is None:
                    raise ZoneNotFound(f"No shipping zone {zone_id!r}.")
                if await uow.zones.name_taken(zone.name, other_than=zone_id):
                    raise ZoneNameTaken(f"A zone is named {zone.name!r} already.")
                if not await uow.zones.replace(
                    zone, expected_version=expected_version, now=self._clock()
                ):
                    raise ZoneChanged("The zone changed since it was read; read it again.")
                await uow.commit()
        except IntegrityError:
            raise ZoneNameTaken(f"A zone is named {zone.name!r} already.") from None
        return await self.get_zone(zone_id)

    async def delete_zone(self, zone_id: str, *, expected_version: int) -> None:
        """Remove the zone and its methods if it is still at `expected_version` (else 412)."""
        async with self._uow() as uow:
            if await uow.zones.get(zone_id) is None:
                raise ZoneNotFound(f"No shipping zone {zone_id!r}.")
            if not await uow.zones.remove(zone_id, expected_version=expected_version):
                raise ZoneChanged("The zone changed since it was read; read it again.")
            await uow.commit()

    # -- quotes --------------------------------------------------------------------------------

    async def quote(
        self,
        *,
        country: str,
        postal_code: str | None,
        weight_grams: int,
        subtotal: Decimal,
        currency: str,
    ) -> list[Quote]:
        """The methods offered for a destination and parcel, with their prices (maybe none)."""
        where = destination(country, postal_code)
        try:
            amount = Money(subtotal, currency)
        except MoneyError as error:
            raise InvalidShippingData(f"subtotal: {error}") from None
        if amount.amount < 0:
            raise InvalidShippingData("subtotal must not be negative.")
        if weight_grams > MAX_WEIGHT_GRAMS:
            return []  # heavier than any band can be: no method takes it
        weight = parcel_weight(weight_grams)
        async with self._uow().reading() as uow:
            zones = await uow.zones.all()
        return quote(zones, where, weight_grams=weight, subtotal=amount)


def _zone(zone_id: str, draft: ZoneDraft) -> Zone:
    name, countries, prefixes = check_zone(
        name=draft.name,
        countries=draft.countries,
        postal_prefixes=draft.postal_prefixes,
        methods=draft.methods,
    )
    return replace(Zone(zone_id, name, countries, prefixes, tuple(draft.methods)), version=1)
