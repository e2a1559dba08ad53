"""vpnsplit: route only tunnel-sourced traffic through a VPN, with a static-NAT alias."""

__version__ = "0.1.0"
