"""vpnsplit's packet/conntrack mark bits and its rule and nft chain priorities, in one place.

Marks: vpnsplit only ORs its bits into a mark and only tests its own bits (README, "Marks and
priorities"); they avoid kube-proxy (0x4000, 0x8000), Tailscale and OpenWrt pbr (0xff0000),
wg-quick (0xca6c), mwan3 (0x3f00) and Cilium (0x0f00). 0x80000000 and 0x0f000000 are reserved
for per-application tunnels.
"""

# replies of connections that arrived from outside the default tunnel (plan.ReplyMark): rule 32001
REPLY_MARK = 0x10000000
# the VPN clients' own packets (WireGuard FwMark, OpenVPN --mark; backstop.KillSwitch's server names)
CLIENT_MARK = 0x20000000
# the default VPN's DNS redirected into the tunnel (dns.DnsDefault)
DNS_MARK = 0x40000000

# ip rule priorities: every tunnel's own rules end at or below 31989 (config.PRIORITY_LAST)
CLIENT_PRIORITY = 31990  # fwmark CLIENT_MARK lookup main
DNS_PRIORITY = 31991  # fwmark DNS_MARK lookup <the default tunnel's table>
NAMES_PRIORITY = 31992  # iif lo ipproto udp dport 53 lookup main: VPN servers' names at boot (default_vpn)
DEFAULT_PRIORITY = 32000  # the default VPN's 32000-32003 (plan.DEFAULT_PRIORITIES)

# nft chain priorities. Numbers, not "srcnat"/"raw": the JSON parser silently makes a hookless
# chain from a string. NAT at 99/-101: nat chains on one hook run in priority order and the first
# binding wins, so vpnsplit's SNAT comes before a Docker-style MASQUERADE (iptables-nft, 100)
# whichever was loaded last.
SRCNAT_PRIORITY, DSTNAT_PRIORITY, RAW_PRIORITY, MANGLE_PRIORITY = 99, -101, -300, -150
# the backstop on postrouting: below source NAT, so it still sees the original source
BACKSTOP_PRIORITY = 90
# the VPN servers' names before the DNS redirect's marking (mangle): such a query keeps only CLIENT_MARK
CLIENT_NAMES_PRIORITY = MANGLE_PRIORITY - 1
