"""The address policy: where the server may send a request on a tenant's behalf.

A tenant chooses the URL (a provider's base URL; later a tool server's, a webhook's), and the
server sends the request, with the tenant's key, from inside the operator's network. Without a
policy, a URL naming 127.0.0.1, a private range or the cloud's metadata service would make the
server fetch what only it can reach. So, for every such request:

- the host is resolved once, whatever form it takes (a name, dotted quads, the decimal, hex,
  octal and short forms resolvers also accept: ``2130706433``, ``0x7f.1``, ``0177.0.0.1``,
  ``127.1``; IPv6, IPv4-mapped and IPv4-embedding IPv6 forms);
- every address it resolves to must be public (``ipaddress``' ``is_global``, and neither
  multicast nor reserved), or inside one of the operator's allowed networks
  (``UPSTREAM_ALLOWED_NETWORKS``); one refused address refuses the host;
- the connection goes to the address that was checked (`PinnedTransport`), never to a second
  resolution of the name, which a rebinding DNS server could answer differently; TLS still
  checks the certificate against the name, and the ``Host`` header is the name;
- redirects are not followed (the clients that use the transport say so), since a redirect
  would name an address nobody checked.

Plain Python (no Django), so the provider interface can use it; the allowed networks come from
the caller (``providers.specs.address_policy`` reads them from the settings).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx2

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

SETTING = "UPSTREAM_ALLOWED_NETWORKS"
LOOPBACK_NETWORKS = ("127.0.0.0/8", "::1/128")

# The instance metadata services of the clouds (AWS, GCP, Azure, OpenStack, Oracle: the first;
# AWS ECS task metadata; AWS over IPv6; Alibaba). Named on their own: they hand out credentials.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
)
# NAT64's well-known prefix: 64:ff9b::a.b.c.d reaches a.b.c.d through the gateway.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class AddressRefused(Exception):
    """The policy refuses the host. Not an ``httpx2.RequestError`` on purpose: the openai SDK
    retries those (and reports them as a connection error), while asking again cannot help."""

    def __init__(self, host: str, reason: str) -> None:
        self.host = host
        self.reason = reason  # what the address is: "a loopback address", ...
        self.message = (
            f"The server does not send requests to {host}: it is or resolves to {reason}. "
            f"The server's operator can allow that network with {SETTING}."
        )
        super().__init__(self.message)


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """CIDRs (or single addresses) as networks; host bits are ignored (``10.1.2.3/8`` is
    ``10.0.0.0/8``). Raises ValueError naming an entry that is none."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{SETTING}: {value!r} is not a network (e.g. 10.0.0.0/8)") from None
    return tuple(networks)


def numeric_address(host: str) -> Address | None:
    """The address ``host`` names without any lookup, in every numeric form a resolver takes
    (``inet_aton``'s: decimal, hex, octal, fewer than four parts; a trailing dot, as in a
    fully qualified name); None for a name."""
    host = host.strip("[]").removesuffix(".")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if not host or any(c.isspace() for c in host):  # inet_aton stops at whitespace
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def _from_sockaddrs(infos: list[tuple[Any, ...]]) -> list[Address]:
    addresses: list[Address] = []
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


async def resolve_host(host: str, port: int) -> list[Address]:
    """Every address of ``host``, in the order the system prefers. Raises OSError
    (``socket.gaierror``) when it has none. Tests replace this function to stage DNS."""
    loop = asyncio.get_running_loop()
    return _from_sockaddrs(await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM))


def resolve_host_sync(host: str, port: int) -> list[Address]:
    """`resolve_host` for sync code (a form being saved)."""
    return _from_sockaddrs(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries traffic to: 6to4, Teredo, NAT64."""
    embedded = []
    if address.sixtofour is not None:
        embedded.append(address.sixtofour)
    if address.teredo is not None:
        embedded.extend(address.teredo)
    if address in _NAT64:
        embedded.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return embedded


def _kind(address: Address) -> str | None:
    """What makes ``address`` unfit to fetch for a tenant; None if it is public."""
    if address in METADATA_ADDRESSES:
        return f"a cloud metadata address ({address})"
    if address.is_loopback:
        return "a loopback address"
    if address.is_unspecified:
        return "the unspecified address (0.0.0.0 or ::)"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_private:
        return "a private address"
    if address.is_reserved or not address.is_global:
        return "a reserved or otherwise non-public address"
    return None


@dataclass(frozen=True)
class AddressPolicy:
    """Public addresses, plus ``allowed`` networks. The default (no networks) is production's."""

    allowed: tuple[Network, ...] = ()

    @classmethod
    def allowing(cls, networks: Iterable[str]) -> AddressPolicy:
        return cls(parse_networks(networks))

    def refusal(self, address: Address) -> str | None:
        """Why ``address`` is refused, or None if it may be fetched."""
        if any(address in network for network in self.allowed):
            return None
        if isinstance(address, ipaddress.IPv6Address):
            if address.ipv4_mapped is not None:  # ::ffff:a.b.c.d *is* a.b.c.d to the kernel
                return self.refusal(address.ipv4_mapped)
            for inner in _embedded_ipv4(address):
                if (reason := self.refusal(inner)) is not None:
                    return reason
        return _kind(address)

    def check(self, host: str, addresses: Iterable[Address]) -> None:
        """Raises `AddressRefused` unless every address of ``host`` may be fetched."""
        for address in addresses:
            if (reason := self.refusal(address)) is not None:
                raise AddressRefused(host, reason)

    async def pin(self, host: str, port: int) -> Address:
        """The one address a request to ``host`` goes to: resolved once, every address of the
        answer checked. Raises `AddressRefused`, or OSError when the name does not resolve."""
        literal = numeric_address(host)
        addresses = [literal] if literal is not None else await resolve_host(host, port)
        if not addresses:
            raise socket.gaierror(socket.EAI_NONAME, f"{host} has no address")
        self.check(host, addresses)
        return addresses[0]

    def check_url(self, url: str) -> None:
        """At save time: refuses a URL whose host is a forbidden address, or a name that
        resolves to one now. A name that does not resolve (yet) passes: a compose service
        may not exist while its URL is entered, and every request is checked anyway."""
        for host, port in _hosts_of(url):
            literal = numeric_address(host)
            if literal is not None:
                self.check(host, [literal])
                continue
            try:
                addresses = resolve_host_sync(host, port)
            except (OSError, UnicodeError):
                continue
            self.check(host, addresses)


def _hosts_of(url: str) -> set[tuple[str, int]]:
    """The host as the standard library reads it and as httpx2 (which sends) reads it: should
    the two parsers ever disagree on an odd URL, both readings are checked."""
    hosts: set[tuple[str, int]] = set()
    try:
        parts = urlsplit(url)
        if parts.hostname:
            hosts.add((parts.hostname, parts.port or _DEFAULT_PORTS.get(parts.scheme, 443)))
    except ValueError:
        pass
    try:
        parsed = httpx2.URL(url)
        if parsed.raw_host:
            port = parsed.port or _DEFAULT_PORTS.get(parsed.scheme, 443)
            hosts.add((parsed.raw_host.decode("ascii"), port))
    except (httpx2.InvalidURL, UnicodeError):
        pass
    return hosts


class PinnedTransport(httpx2.AsyncBaseTransport):
    """An httpx2 transport that sends each request to the address `AddressPolicy.pin` checked.

    The URL's host is replaced by that address for the connection only: the ``Host`` header
    stays the name, and TLS sends the name (SNI) and checks the certificate against it. One
    connection pool per host name, so a TLS connection made for one name is never reused for
    another that shares its address. With a transport of its own, an httpx2 client ignores
    proxy environment variables: requests go straight to the checked address.

    Redirects are the client's business: create it with ``follow_redirects=False``.
    """

    def __init__(self, policy: AddressPolicy, **options: Any) -> None:
        self._policy = policy
        self._options = options  # for httpx2.AsyncHTTPTransport (limits, verify, ...)
        self._pools: dict[str, httpx2.AsyncHTTPTransport] = {}

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        url = request.url
        host = url.raw_host.decode("ascii")
        port = url.port or _DEFAULT_PORTS.get(url.scheme)
        if port is None:
            raise httpx2.UnsupportedProtocol(f"Cannot send a request to {url.scheme}://")
        try:
            address = await self._policy.pin(host, port)
        except OSError as exc:  # no such name: what httpx2 says when it cannot connect
            raise httpx2.ConnectError(f"Cannot resolve {host}: {exc}", request=request) from exc
        extensions = dict(request.extensions)
        if url.scheme == "https" and numeric_address(host) is None:
            extensions["sni_hostname"] = host
        pinned = httpx2.Request(
            request.method,
            url.copy_with(host=str(address)),
            headers=request.headers,
            stream=request.stream,
            extensions=extensions,
        )
        pool = self._pools.get(host)
        if pool is None:
            pool = self._pools[host] = httpx2.AsyncHTTPTransport(**self._options)
        return await pool.handle_async_request(pinned)

    async def aclose(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.aclose()
