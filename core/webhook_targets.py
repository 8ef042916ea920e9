"""Where a webhook may be sent (SSRF): http(s) URLs whose host resolves only to public addresses.

Checked by the API when an endpoint is created and by the dispatcher before every attempt (a name may resolve
elsewhere later); the dispatcher then connects to the address it checked, never resolving the name again.
Loopback, private, link-local (cloud metadata), shared, multicast, unspecified and reserved addresses are
refused unless the deployment allows them: all private ones (FTJOBS_WEBHOOK_ALLOW_PRIVATE=1: loopback, private,
link-local, shared) or only the networks of FTJOBS_WEBHOOK_ALLOW_CIDRS.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class TargetRefused(ValueError):
    """The URL may not be a webhook target; the message says why (never a secret)."""


@dataclass(frozen=True)
class TargetPolicy:
    allow_private: bool = False
    allow_cidrs: tuple[str, ...] = ()

    def refusal(self, address: IPAddress) -> str | None:
        """Why `address` may not be reached (`"a loopback address"`); None when it may."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
        if any(address in ipaddress.ip_network(cidr, strict=False) for cidr in self.allow_cidrs):
            return None
        if address.is_loopback or address.is_link_local:  # first: ::1 is also in a reserved range
            return None if self.allow_private else f"a {'loopback' if address.is_loopback else 'link-local'} address"
        for kind in ("multicast", "unspecified", "reserved"):  # never a webhook receiver, allowed or not
            if getattr(address, f"is_{kind}"):
                return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} address"
        if address.is_private:
            return None if self.allow_private else "a private address"
        if not address.is_global:
            return None if self.allow_private else "a non-public address"  # e.g. shared 100.64.0.0/10
        return None


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect (`address`), and what to name in the request (Host header, TLS SNI)."""

    scheme: str
    host: str
    port: int
    path: str  # path + query, as given
    address: IPAddress

    @property
    def connect_url(self) -> str:
        """The URL with the checked address in place of the name: nothing resolves the name again."""
        ip = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return f"{self.scheme}://{ip}:{self.port}{self.path}"

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def check_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) of an http(s) URL with a host; TargetRefused otherwise (no resolution here)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise TargetRefused(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise TargetRefused("only http and https URLs are allowed")
    if not parts.hostname:
        raise TargetRefused("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise TargetRefused("credentials in the URL are not allowed (the signature authenticates us)")
    if parts.fragment:
        raise TargetRefused("the URL may not have a #fragment")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80), path


def resolve(url: str, policy: TargetPolicy) -> Target:
    """Resolve the URL's host and check every address it has; TargetRefused if one is not allowed."""
    scheme, host, port, path = check_url(url)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, ValueError) as exc:  # ValueError: UnicodeError (a label too long), a NUL in the name
        raise TargetRefused(f"the host {host!r} does not resolve ({exc})") from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if not addresses:
        raise TargetRefused(f"the host {host!r} does not resolve")
    for address in addresses:  # every one: a name with one private address among public ones is refused
        why = policy.refusal(address)
        if why is not None:
            named = f"{address}" if str(address) == host else f"{host} resolves to {address}"
            raise TargetRefused(f"{named}, {why}, which this deployment does not allow as a webhook target")
    return Target(scheme, host, port, path, addresses[0])
