"""Keeping upstream calls off private networks (server-side request forgery).

A provider's base URL is an admin's input, and tenant admins may add their own
providers: without a guard, the gateway could be made to call its own
database, a cloud metadata service or anything else on its network. Unless
staff tick "allow private network" on a provider, its calls may only reach
globally routable addresses.

Checked twice: when the provider is saved (every form of address: dotted,
decimal, octal and hexadecimal IPv4, IPv6, and the IPv6 forms that carry an
IPv4 address: IPv4-mapped, IPv4-compatible, IPv4-translated, NAT64, 6to4 and
Teredo; and names, resolved) and on every connection, by the resolver of the session that calls
unprivileged providers, so a name that later resolves elsewhere (DNS
rebinding) is refused too. Upstream redirects are never followed.
"""

import ipaddress
import socket
from urllib.parse import urlsplit

import aiohttp


class UnsafeAddress(OSError):
    """The address is not on the public internet and the provider may not call private networks."""


# IPv6 ranges whose last 32 bits are an IPv4 address that a translator or the
# host's own stack may reach: IPv4-translated (RFC 7915, SIIT) and the
# well-known NAT64 prefix (RFC 6052). Python's `is_global` takes them as public.
_CARRY_IPV4 = (ipaddress.IPv6Network("::ffff:0:0:0/96"), ipaddress.IPv6Network("64:ff9b::/96"))
# Never public, whatever they carry: IPv4-compatible addresses (deprecated by
# RFC 4291, `::127.0.0.1`; `::` and `::1` are in it too) and the local-use NAT64
# prefix (RFC 8215), which Python releases before 3.13 take as global.
_NEVER_PUBLIC = (ipaddress.IPv6Network("::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))


def is_public(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if any(ip in network for network in _NEVER_PUBLIC):
            return False
        if ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        elif any(ip in network for network in _CARRY_IPV4):
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        elif ip.sixtofour:
            ip = ip.sixtofour
        elif ip.teredo:
            ip = ip.teredo[1]
    return ip.is_global and not ip.is_multicast


def resolve(host: str) -> list[str]:
    """Every address `host` stands for, as the operating system's resolver reads it
    (which also turns decimal, octal and hexadecimal IPv4 forms into addresses)."""
    return sorted({info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)})


def check_url(url: str, allow_private: bool) -> None:
    """Raise UnsafeAddress, with a reason an admin can act on, when the URL may not be called."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UnsafeAddress("Only http and https URLs can be called.")
    if parts.username or parts.password:
        raise UnsafeAddress("Put credentials in the provider's key, not in the URL.")
    host = parts.hostname
    if not host:
        raise UnsafeAddress("The URL has no host.")
    if allow_private:
        return
    try:
        addresses = resolve(host)
    except (socket.gaierror, UnicodeError):
        return  # not resolvable from here now: the resolver checks it on every connection
    private = [a for a in addresses if not is_public(a)]
    if private:
        raise UnsafeAddress(f"'{host}' is a private, loopback, link-local or reserved address "
                            f"({', '.join(private)}). {HOW_TO_ALLOW}")


# Said wherever an address is refused: where staff allow it (a local Ollama or vLLM, a webhook at home).
HOW_TO_ALLOW = ("Staff can allow it: tick \"Allow private network\" on it in the admin, or set "
                "allow_private_network: true through the management API or in the configuration file "
                "(apply_config, docs/config.md); for a provider, add_provider --allow-private-network does the same.")

_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of a URL, as a connection sees it: what a private-network
    grant is bound to. A path or query may change under a grant; these may not."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").rstrip(".")
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        pass  # a name (hostname is lower-cased already)
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, host, port or _DEFAULT_PORTS.get(scheme)


class PublicOnlyResolver(aiohttp.ThreadedResolver):
    """aiohttp's resolver, refusing names that resolve to non-public addresses."""

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET):
        infos = await super().resolve(host, port, family)
        for info in infos:
            if not is_public(info["host"]):
                raise UnsafeAddress(f"'{host}' resolves to a non-public address ({info['host']}). {HOW_TO_ALLOW}")
        return infos


_literal_checked: dict[str, bool] = {}


def literal_allowed(host: str) -> bool:
    """aiohttp skips its resolver for IP literals: those are checked here, in
    every form the C library accepts (decimal, octal, hexadecimal, short), cached per host."""
    allowed = _literal_checked.get(host)
    if allowed is None:
        bare = host.strip("[]").split("%", 1)[0]
        try:
            ip = ipaddress.ip_address(bare)
        except ValueError:
            try:
                ip = ipaddress.IPv4Address(socket.inet_aton(bare))
            except OSError:
                ip = None  # a name: the resolver checks it on connection
        allowed = ip is None or is_public(str(ip))
        _literal_checked[host] = allowed
    return allowed
