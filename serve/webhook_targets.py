"""Which webhook targets the server may call: public addresses only, unless the config says otherwise.

A ``webhook_url`` comes from whoever submits a job, and the server POSTs to it from inside
the cluster, so an unchecked URL lets a user reach the cluster's own services, the node's
loopback or the cloud metadata endpoint (169.254.169.254). ``check_webhook_target``
resolves the host the way a connection would (``getaddrinfo``, which also reads the legacy
IPv4 spellings ``2130706433``, ``0x7f.1`` and ``127.1``) and refuses the URL unless every
address it resolves to is allowed; the sender then connects to one of those checked
addresses, so a DNS answer that changes between check and connection cannot redirect it.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# (host, port) -> the addresses a connection to host:port would try, as strings.
Resolver = Callable[[str, int], Iterable[str]]

_MAX_URL_LENGTH = 2048
_DEFAULT_PORTS = {"http": 80, "https": 443}
# A host made only of numeric parts is an IPv4 address in one of inet_aton's spellings
# (WHATWG's URL standard reads it the same way), never a DNS name.
_LEGACY_IPV4 = re.compile(r"(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}\.?", re.IGNORECASE)

_NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL_USE = ipaddress.ip_network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_IPV4_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_IPV4_SHARED = ipaddress.ip_network("100.64.0.0/10")
_IPV4_BROADCAST = ipaddress.ip_address("255.255.255.255")
_IPV4_PRIVATE = tuple(ipaddress.ip_network(cidr) for cidr in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
_IPV6_UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")
_METADATA = ipaddress.ip_address("169.254.169.254")


def validate_webhook_url(url: str) -> str:
    """Return ``url`` unchanged if it is an absolute http(s) URL with a host; raise otherwise."""
    if not isinstance(url, str) or not url:
        raise ValueError(f"webhook_url: must be a non-empty http or https URL (got {url!r})")
    if len(url) > _MAX_URL_LENGTH:
        raise ValueError(f"webhook_url: must be at most {_MAX_URL_LENGTH} characters (got {len(url)})")
    if url != url.strip() or any(ord(character) < 0x21 or ord(character) == 0x7F for character in url):
        raise ValueError(f"webhook_url: must not contain whitespace or control characters (got {url!r})")
    try:
        parts = urlsplit(url)
        parts.port  # raises ValueError for a port that is not a number in 0..65535
        # httpx's parser is stricter in places (IDNA host names, IPv4 octets); a URL it
        # refuses must be refused here, when the job is submitted, not at delivery time.
        httpx.URL(url).host  # .host decodes IDNA labels, which Request does too
    except (ValueError, httpx.InvalidURL) as error:
        raise ValueError(f"webhook_url: not a valid URL ({error}; got {url!r})") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(f"webhook_url: scheme must be http or https (got {url!r})")
    if not parts.hostname:
        raise ValueError(f"webhook_url: must include a host (got {url!r})")
    return url


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (IPv4-mapped, IPv4-compatible, 6to4, NAT64), if any."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64_WELL_KNOWN:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    # ::/96 minus :: and ::1, which are IPv6's own unspecified and loopback addresses.
    if ip in _IPV4_COMPATIBLE and int(ip) > 1:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def classify_address(ip: IPAddress) -> str | None:
    """None when ``ip`` is globally routable; otherwise a short reason why it is not."""
    embedded = embedded_ipv4(ip)
    if embedded is not None:
        reason = _classify_ipv4(embedded)
        # IPv4-compatible addresses are deprecated and never routed, whatever they embed;
        # mapped, 6to4 and NAT64 forms reach the IPv4 address they carry.
        if reason is not None or ip not in _IPV4_COMPATIBLE:
            return reason
    if isinstance(ip, ipaddress.IPv4Address):
        return _classify_ipv4(ip)
    return _classify_ipv6(ip)


def _classify_ipv4(ip: ipaddress.IPv4Address) -> str | None:
    if ip.is_unspecified:
        return "unspecified"
    if ip in _IPV4_THIS_NETWORK:
        return "this network"
    if ip.is_loopback:
        return "loopback"
    if ip == _METADATA:
        return "link-local (cloud metadata)"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip in _IPV4_SHARED:
        return "shared (CGNAT)"
    if any(ip in network for network in _IPV4_PRIVATE):
        return "private"
    if ip == _IPV4_BROADCAST:
        return "broadcast"
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:
        return "special-purpose"  # documentation, benchmarking, IETF protocol assignments
    return None


def _classify_ipv6(ip: ipaddress.IPv6Address) -> str | None:
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_multicast:
        return "multicast"
    if ip.is_link_local:
        return "link-local"
    if ip.is_site_local:
        return "site-local"
    if ip in _IPV6_UNIQUE_LOCAL:
        return "unique-local"
    if ip in _NAT64_LOCAL_USE:
        # Python 3.11 calls it global; RFC 8215 reserves it for NAT64 inside one network.
        return "local-use NAT64"
    if ip.ipv4_mapped is None and ip.is_reserved:
        return "reserved"
    if not ip.is_global:
        return "special-purpose"  # documentation, ORCHIDv2, Teredo, IETF protocol assignments
    return None


def _as_network(cidr: object) -> IPNetwork:
    if not isinstance(cidr, str):
        raise ValueError(f"allow_private_targets: each entry must be a CIDR string (got {cidr!r})")
    try:
        return ipaddress.ip_network(cidr)
    except ValueError as error:
        raise ValueError(f"allow_private_targets: {cidr!r} is not a network in CIDR form ({error})") from None


@dataclass(frozen=True)
class TargetPolicy:
    """Which non-public addresses webhooks may reach.

    ``allow_private_targets`` False (the default): globally routable addresses only. True:
    every address (a trusted single-user setup, or tests with a loopback receiver). A list
    of CIDRs: public addresses, and non-public ones inside those networks.
    """

    allow_private_targets: bool | tuple[IPNetwork, ...] = False
    _networks: tuple[IPNetwork, ...] = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        value = self.allow_private_targets
        if isinstance(value, bool):
            return
        if isinstance(value, str) or not isinstance(value, Iterable):
            raise ValueError(f"allow_private_targets: must be true, false or a list of CIDRs (got {value!r})")
        networks = tuple(item if isinstance(item, IPNetwork) else _as_network(item) for item in value)
        object.__setattr__(self, "allow_private_targets", networks)
        object.__setattr__(self, "_networks", networks)

    def refusal(self, ip: IPAddress) -> str | None:
        """None when ``ip`` may be called; otherwise why not."""
        reason = classify_address(ip)
        if reason is None or self.allow_private_targets is True:
            return None
        # A listed network admits the address in either spelling, e.g. ::ffff:127.0.0.1 under 127.0.0.0/8.
        candidates = [ipaddress.ip_address(ip.compressed.split("%")[0]), embedded_ipv4(ip)]
        for network in self._networks:
            if any(candidate is not None and candidate.version == network.version and candidate in network
                   for candidate in candidates):
                return None
        return reason


class UnresolvableTargetError(ValueError):
    """The host has no address now; unlike a refused address, this can change, so a delivery retries."""


@dataclass(frozen=True)
class CheckedTarget:
    url: str
    scheme: str
    host: str  # as a connection names it: IDNA-encoded, IPv6 without brackets
    port: int
    addresses: tuple[str, ...]  # every address the host resolved to, each allowed by the policy

    @property
    def host_is_ip(self) -> bool:
        return _ip_literal(self.host) is not None


def resolve_host(host: str, port: int) -> list[str]:
    """The addresses ``getaddrinfo`` gives for ``host:port`` (what a TCP connection would try), in order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _LEGACY_IPV4.fullmatch(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host.rstrip(".")))
        except OSError:
            return None
    return None


def check_webhook_target(url: str, policy: TargetPolicy, resolve: Resolver = resolve_host) -> CheckedTarget:
    """``url`` checked for syntax and resolved; raises ValueError ("webhook_url: ...") if any address is refused.

    Every address must pass: a name with one public and one private record would otherwise
    let the connection pick the private one. Blocking (DNS): call it in a thread.
    """
    validate_webhook_url(url)
    parsed = httpx.URL(url)
    scheme = parsed.scheme.lower()
    host = parsed.raw_host.decode("ascii")
    port = parsed.port or _DEFAULT_PORTS[scheme]
    literal = _ip_literal(host)
    if literal is not None:
        addresses = [str(literal)]
    else:
        try:
            addresses = list(resolve(host, port))
        except (OSError, UnicodeError) as error:
            raise UnresolvableTargetError(f"webhook_url: host {host!r} does not resolve ({error})") from None
        if not addresses:
            raise UnresolvableTargetError(f"webhook_url: host {host!r} does not resolve to any address")
    for address in addresses:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            raise ValueError(f"webhook_url: host {host!r} resolved to {address!r}, not an IP address") from None
        reason = policy.refusal(ip)
        if reason is not None:
            notes = [] if address == host else [f"the address of {host!r}"]
            embedded = embedded_ipv4(ip)
            if embedded is not None:
                notes.append(f"carrying {embedded}")
            shown = f"{address} ({', '.join(notes)})" if notes else address
            raise ValueError(
                f"webhook_url: {shown} is not a public address ({reason}); webhooks go to public addresses "
                f"only unless the server's webhooks.allow_private_targets admits it"
            )
    return CheckedTarget(url=url, scheme=scheme, host=host, port=port, addresses=tuple(addresses))
