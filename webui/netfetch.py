"""Fetching an image from a URL for an image field, when ``--allow-image-urls`` is given (off by default).

Only ``http``/``https`` URLs without credentials; every host is resolved here and **every** address it
resolves to must be a public one (not loopback, private, link-local, CGNAT, multicast, reserved or
unspecified, IPv4-mapped IPv6 included), else the URL is refused before any connection is made. The
connection then goes to the address that was checked (no second DNS lookup that could answer
differently), with the host name kept for the ``Host`` header and TLS. Redirects are followed by hand,
at most :data:`MAX_REDIRECTS`, and each target is checked the same way. Bodies over ``max_bytes`` are
refused. Proxies from the environment are not used.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from urllib.parse import urljoin

import httpx

MAX_REDIRECTS = 5
MAX_BYTES = 32 * 1024 * 1024
TIMEOUT = httpx.Timeout(10.0, connect=5.0)

Resolver = Callable[[str, int], list[str]]


class URLRefused(ValueError):
    """The URL may not be fetched, or fetching it failed; the message says why."""


def is_public_address(address: str) -> bool:
    """True for a globally routable unicast address (what a server-side fetch may reach)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour
        if mapped is not None:
            ip = mapped
        elif ip.teredo is not None:
            return False
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified or ip.is_link_local)


def system_resolver(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise URLRefused(f"cannot resolve {host}: {exc}") from None
    return [info[4][0] for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6)]


def checked_address(url: httpx.URL, resolve: Resolver) -> str:
    """The address to connect to for ``url``, after the scheme, credential and address checks."""
    if url.scheme not in ("http", "https"):
        raise URLRefused(f"only http:// and https:// URLs are fetched, not {url.scheme or 'no scheme'}")
    if url.userinfo:
        raise URLRefused("URLs with a user name or password are not fetched")
    host = url.host
    if not host:
        raise URLRefused("the URL has no host")
    addresses = resolve(host, url.port or (443 if url.scheme == "https" else 80))
    if not addresses:
        raise URLRefused(f"{host} has no address")
    bad = [a for a in addresses if not is_public_address(a)]
    if bad:
        raise URLRefused(f"{host} resolves to {bad[0]}, a loopback, private, link-local or reserved address; "
                         "such targets are never fetched")
    return addresses[0]


class _PinnedTransport(httpx.HTTPTransport):
    """Connects to an already checked address while keeping the URL's host for ``Host`` and TLS (SNI)."""

    def __init__(self, address: str):
        super().__init__(trust_env=False)
        self.address = address

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        request.url = request.url.copy_with(host=self.address)
        shown = f"[{host}]" if ":" in host else host
        request.headers["Host"] = shown if request.url.port is None else f"{shown}:{request.url.port}"
        request.extensions = {**request.extensions, "sni_hostname": host}
        return super().handle_request(request)


def fetch_url(url: str, *, max_bytes: int = MAX_BYTES, resolve: Resolver | None = None,
              timeout: httpx.Timeout = TIMEOUT) -> bytes:
    """The body of ``url`` (GET), following up to :data:`MAX_REDIRECTS` checked redirects.

    Raises :class:`URLRefused` for a refused target, a failed request, a non-200 answer or a body over
    ``max_bytes``."""
    resolve = resolve or system_resolver
    current = url
    for _hop in range(MAX_REDIRECTS + 1):
        try:
            parsed = httpx.URL(current)
        except (httpx.InvalidURL, TypeError, ValueError) as exc:
            raise URLRefused(f"not a valid URL: {exc}") from None
        address = checked_address(parsed, resolve)
        try:
            with httpx.Client(transport=_PinnedTransport(address), timeout=timeout, follow_redirects=False,
                              trust_env=False) as client, client.stream("GET", parsed) as response:
                if response.is_redirect and "location" in response.headers:
                    current = urljoin(str(parsed), response.headers["location"])
                    continue
                if response.status_code != 200:
                    raise URLRefused(f"{parsed.host} answered HTTP {response.status_code}")
                data = bytearray()
                for chunk in response.iter_bytes():
                    data += chunk
                    if len(data) > max_bytes:
                        raise URLRefused(f"the image at the URL is larger than {max_bytes // (1024 * 1024)} MB")
                return bytes(data)
        except httpx.HTTPError as exc:
            raise URLRefused(f"fetching {parsed.host} failed: {type(exc).__name__}: {exc}") from None
    raise URLRefused(f"more than {MAX_REDIRECTS} redirects")


def is_url(value: str) -> bool:
    return value.strip().lower().startswith(("http://", "https://"))
