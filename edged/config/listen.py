"""The one rule for a listen address (``host:port``): the metrics listener,
a camera's ``metrics_listen``, and ``edged status`` all use it."""

from __future__ import annotations

import ipaddress


def split_listen(listen: str) -> tuple[str, int]:
    if listen.startswith("["):
        host, sep, port = listen[1:].partition("]:")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError("invalid IPv6 address in brackets") from None
    else:
        host, sep, port = listen.rpartition(":")
        if ":" in host:
            raise ValueError("write an IPv6 address in brackets: '[::1]:9850'")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError("expected 'host:port' with a port 0-65535, e.g. '127.0.0.1:9850'")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (of a listen address) reaches only this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


def check_listen(value: str) -> str:
    split_listen(value)
    return value
