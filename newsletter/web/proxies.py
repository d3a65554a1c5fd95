"""`[web] trusted_proxies`: werkzeug's ProxyFix, applied only to requests whose peer is one of the
reverse proxies the operator named. Their X-Forwarded-For (one hop: the address the proxy saw),
X-Forwarded-Proto and X-Forwarded-Host are believed; anybody else's are ignored, so a visitor
cannot pick the address that per-address limits count."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from werkzeug.middleware.proxy_fix import ProxyFix

__all__ = ["ProxyAddresses", "TrustedProxies"]


class ProxyAddresses:
    """The addresses and networks named in `[web] trusted_proxies`."""

    def __init__(self, proxies: Iterable[str]) -> None:
        self.networks = [ipaddress.ip_network(p, strict=False) for p in proxies]

    def trusts(self, peer: str | None) -> bool:
        try:
            address = ipaddress.ip_address(peer or "")
        except ValueError:
            return False
        return any(address in network for network in self.networks)


class TrustedProxies(ProxyAddresses):
    def __init__(self, app: Any, proxies: Iterable[str]) -> None:
        super().__init__(proxies)
        self.app = app
        self.fixed = ProxyFix(app, x_for=1, x_proto=1, x_host=1)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if self.networks and self.trusts(environ.get("REMOTE_ADDR")):
            return self.fixed(environ, start_response)
        return self.app(environ, start_response)
