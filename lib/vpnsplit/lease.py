"""What a VPN client handed us this time: the tunnel device and its dynamic addresses.

A Lease is what the hooks parse, what the state file records, and what the planner turns
into routes and rules. It holds plain `ipaddress` values and round-trips through JSON.
"""

import ipaddress
from typing import NamedTuple

from vpnsplit.errors import InputError


class Lease(NamedTuple):
    device: str
    # "tun" (point-to-point: routes go `dev`), "tap" (Ethernet: routes go `via` gateway).
    dev_type: str = "tun"
    local4: ipaddress.IPv4Interface | None = None
    gateway4: ipaddress.IPv4Address | None = None
    local6: ipaddress.IPv6Interface | None = None
    gateway6: ipaddress.IPv6Address | None = None
    # the VPN server's addresses (OpenVPN trusted_ip, the WireGuard endpoint): a host-wide
    # default through this tunnel must never route the tunnel's own packets into it
    servers: tuple = ()
    # the tunnel's DNS resolvers as the VPN client said them (OpenVPN's push, wg-quick's DNS =)
    dns: tuple = ()

    @property
    def locals(self):
        return [a for a in (self.local4, self.local6) if a is not None]

    def to_json(self):
        out = {k: None if v is None else str(v) for k, v in self._asdict().items()}
        out["servers"] = [str(a) for a in self.servers]
        out["dns"] = [str(a) for a in self.dns]
        return out

    @classmethod
    def from_json(cls, data, where, name="NAME"):
        """Rebuild a Lease from a state file; a damaged file is an InputError naming it
        (and the tunnel *name* in the fix, so the user can paste it)."""
        try:
            kinds = {
                "local4": ipaddress.IPv4Interface,
                "gateway4": ipaddress.IPv4Address,
                "local6": ipaddress.IPv6Interface,
                "gateway6": ipaddress.IPv6Address,
            }
            # Only text: ipaddress would take the number 5 (or True) as 0.0.0.5 (0.0.0.1).
            values = {k: (None if data.get(k) is None else conv(_text(data[k]))) for k, conv in kinds.items()}
            if not isinstance(data.get("device"), str) or data.get("dev_type") not in ("tun", "tap"):
                raise ValueError("device/dev_type")
            servers = tuple(ipaddress.ip_address(_text(a)) for a in data.get("servers") or [])
            dns = tuple(ipaddress.ip_address(_text(a)) for a in data.get("dns") or [])
            return cls(device=data["device"], dev_type=data["dev_type"], servers=servers, dns=dns, **values)
        except (ValueError, TypeError, AttributeError) as e:
            raise InputError(f"{where}: damaged ({e}); run 'vpnsplit down {name}' then let the VPN reconnect") from None


def _text(value):
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not an address string")
    return value
