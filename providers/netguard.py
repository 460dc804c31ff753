"""Keeping upstream calls off private networks (server-side request forgery).

A provider's base URL is an admin's input, and tenant admins may add their own
providers: without a guard, the gateway could be made to call its own
database, a cloud metadata service or anything else on its network. Unless
staff tick "allow private network" on a provider, its calls may only reach
globally routable addresses.

Checked twice: when the provider is saved (every form of address: dotted,
decimal, octal and hexadecimal IPv4, IPv6 and IPv4-mapped IPv6, and names,
resolved) and on every connection, by the resolver of the session that calls
unprivileged providers, so a name that later resolves elsewhere (DNS
rebinding) is refused too. Upstream redirects are never followed.
"""

import ipaddress
import socket
from urllib.parse import urlsplit

import aiohttp


class UnsafeAddress(OSError):
    """The address is not on the public internet and the provider may not call private networks."""


def is_public(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped:
            ip = ip.ipv4_mapped
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
        raise UnsafeAddress(
            f"'{host}' is a private, loopback, link-local or reserved address ({', '.join(private)}); "
            "only staff can allow a provider to call private networks.")


class PublicOnlyResolver(aiohttp.ThreadedResolver):
    """aiohttp's resolver, refusing names that resolve to non-public addresses."""

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET):
        infos = await super().resolve(host, port, family)
        for info in infos:
            if not is_public(info["host"]):
                raise UnsafeAddress(f"'{host}' resolves to a non-public address ({info['host']}).")
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
