"""Broker address lists: the one parser the agent, the server and the enrollment answer share.

A device or server may be given several brokers (the nodes of a cluster, or a standby), as a
list or as one comma-separated string: ``mqtt://a:1883,b:1883``. An item without a scheme
takes the first item's; an item without a port takes the scheme's (1883, 8883 for TLS). Every
item must use the same scheme: a client holds one TLS setting (its CA), and silently mixing a
plain node into a TLS list would send the credentials in clear text.

``tcp://`` and ``ssl://`` are accepted as paho's names for ``mqtt://`` and ``mqtts://``.
Credentials in a URL (``mqtt://user:pass@host``) are not this module's concern: it keeps only
where to connect, so an address can be logged as it is.

Pure: no sockets, no DNS. Rotating through the list is the client's job (agent.link,
fleet_server.broker.connection); ``Rotation`` is the shared order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from edgefleet.errors import BrokerUrlError

_SCHEMES = {"mqtt": False, "tcp": False, "mqtts": True, "ssl": True}
_FIX = "write mqtt://HOST[:PORT] or mqtts://HOST[:PORT], several separated by ',' (mqtt://a:1883,b:1883)"


@dataclass(frozen=True)
class BrokerAddress:
    """One broker node: where to connect and whether with TLS."""

    host: str
    port: int
    tls: bool

    def __post_init__(self) -> None:
        if not self.host:
            raise BrokerUrlError("a broker address has no host", fix=_FIX)
        if not 0 < self.port < 65536:
            raise BrokerUrlError(f"broker port {self.port} is out of range", fix="use 1-65535")

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"

    def __str__(self) -> str:
        return self.url


def split_broker_urls(value: str | Sequence[str]) -> list[str]:
    """The items of a list or a comma-separated string, stripped, empty ones refused."""
    items = value.split(",") if isinstance(value, str) else list(value)
    if not items or any(not isinstance(item, str) for item in items):
        raise BrokerUrlError(f"broker URLs {value!r} are not a string or a list of strings", fix=_FIX)
    stripped = [item.strip() for item in items]
    if not any(stripped):
        raise BrokerUrlError("no broker URL given", fix=_FIX)
    if "" in stripped:
        raise BrokerUrlError(f"broker URLs {value!r} hold an empty item (a stray ',')", fix=_FIX)
    return stripped


def parse_broker_urls(value: str | Sequence[str]) -> tuple[BrokerAddress, ...]:
    """Every broker of ``value``, in order, duplicates dropped. BrokerUrlError names the bad item."""
    items = split_broker_urls(value)
    first_scheme: str | None = None
    found: list[BrokerAddress] = []
    for item in items:
        if "://" not in item and first_scheme is None:
            raise BrokerUrlError(f"broker URL {item!r} has no scheme (only the items after the first may omit it)",
                                 fix=_FIX)
        text = item if "://" in item else f"{first_scheme}://{item}"
        parts = urlsplit(text)
        scheme = parts.scheme.lower()
        if scheme not in _SCHEMES:
            raise BrokerUrlError(f"broker URL {item!r} is not an MQTT URL (scheme {parts.scheme!r})", fix=_FIX)
        if first_scheme is not None and _SCHEMES[scheme] != _SCHEMES[first_scheme]:
            raise BrokerUrlError(f"broker URL {item!r} mixes TLS and plain MQTT with {items[0]!r}",
                                 fix="give every broker the same scheme: all mqtt:// or all mqtts://")
        first_scheme = first_scheme or scheme
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise BrokerUrlError(f"broker URL {item!r} has a path or query; an MQTT URL names a host and port",
                                 fix=_FIX)
        try:
            port = parts.port
        except ValueError as exc:
            raise BrokerUrlError(f"broker URL {item!r} has a bad port", fix=_FIX) from exc
        if not parts.hostname:
            raise BrokerUrlError(f"broker URL {item!r} has no host", fix=_FIX)
        tls = _SCHEMES[scheme]
        address = BrokerAddress(parts.hostname, (8883 if tls else 1883) if port is None else port, tls)
        if address not in found:
            found.append(address)
    return tuple(found)


def join_broker_urls(addresses: Sequence[BrokerAddress]) -> str:
    """The comma-separated form ``parse_broker_urls`` reads back."""
    return ",".join(a.url for a in addresses)


class Rotation:
    """Which broker to try next: the current one until it fails, then the next, round the list.

    The client calls ``failed()`` after a refused or broken connection and ``connected()`` once
    one is up; ``current`` is where to connect. Jittered backoff between tries is the client's
    (its ``Backoff``): rotating alone never waits, so a dead node costs one try, not a timeout
    per retry.
    """

    def __init__(self, addresses: Sequence[BrokerAddress]) -> None:
        if not addresses:
            raise BrokerUrlError("no broker to connect to", fix=_FIX)
        self.addresses = tuple(addresses)
        self.index = 0

    @property
    def current(self) -> BrokerAddress:
        return self.addresses[self.index]

    def failed(self) -> BrokerAddress:
        """Move on to the next broker (the same one when there is only one) and return it."""
        self.index = (self.index + 1) % len(self.addresses)
        return self.current

    @property
    def wrapped(self) -> bool:
        """True when the last ``failed()`` came back to the first broker: a whole round failed."""
        return self.index == 0
