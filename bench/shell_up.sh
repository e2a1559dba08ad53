#!/bin/sh
# The contender: what an admin would write instead of vpnsplit's up hook, with ip and nft.
# Same call as OpenVPN makes (no PATH; args: dev tun_mtu 0 local netmask|remote context),
# same kernel state as `hooks/up` for one IPv4 tunnel with an alias, strict (bench checks
# that with a full dump): the table with its default and the unreachable defaults, the
# alias, vpnsplit's nft table (SNAT map, port-forward maps, anti-spoofing sets), the two
# rules, then a state file, all under a lock. Per-tunnel settings are hard-coded by a shell user; here
# they come in the environment: NAME TABLE PRIO ALIAS STATE_DIR.
# It is idempotent (replace; rule adds that exist are ignored) so it can re-apply.
set -e
IP=/usr/sbin/ip NFT=/usr/sbin/nft
dev=$1 local=$4
mkdir -p "$STATE_DIR"
exec 9>"$STATE_DIR/lock"
/usr/bin/flock 9

# routes (the fail-closed unreachable first) and the alias
$IP -batch - <<EOT
route replace unreachable 0.0.0.0/0 table $TABLE metric 4278190080 proto 118
route replace unreachable ::/0 table $TABLE metric 4278190080 proto 118
route replace 0.0.0.0/0 dev $dev table $TABLE metric 1024 proto 118 scope global
address replace $ALIAS/32 dev $dev
EOT

# SNAT of the alias to the tunnel address, in one nft transaction
$NFT -f - <<EOT
table inet vpnsplit {
	map snat4 { type ipv4_addr . ifname : ipv4_addr; flags interval; }
	map dnat4 { type ipv4_addr . ifname . inet_proto . inet_service : ipv4_addr; }
	map dnatall4 { type ipv4_addr . ifname : ipv4_addr; }
	set guard_addr4 { type ipv4_addr; }
	set guard_path4 { type ipv4_addr . ifname; }
	map snat6 { type ipv6_addr . ifname : ipv6_addr; flags interval; }
	map dnat6 { type ipv6_addr . ifname . inet_proto . inet_service : ipv6_addr; }
	map dnatall6 { type ipv6_addr . ifname : ipv6_addr; }
	set guard_addr6 { type ipv6_addr; }
	set guard_path6 { type ipv6_addr . ifname; }
	chain postrouting { type nat hook postrouting priority srcnat; policy accept; }
	chain dstnat { type nat hook prerouting priority dstnat; policy accept; }
	chain prerouting { type filter hook prerouting priority raw; policy accept; }
}
flush chain inet vpnsplit postrouting
add rule inet vpnsplit postrouting snat ip to ip saddr . oifname map @snat4
add rule inet vpnsplit postrouting snat ip6 to ip6 saddr . oifname map @snat6
flush chain inet vpnsplit dstnat
add rule inet vpnsplit dstnat dnat ip to ip daddr . iifname . meta l4proto . th dport map @dnat4
add rule inet vpnsplit dstnat dnat ip to ip daddr . iifname map @dnatall4
add rule inet vpnsplit dstnat dnat ip6 to ip6 daddr . iifname . meta l4proto . th dport map @dnat6
add rule inet vpnsplit dstnat dnat ip6 to ip6 daddr . iifname map @dnatall6
flush chain inet vpnsplit prerouting
add rule inet vpnsplit prerouting ip daddr @guard_addr4 ip daddr . iifname != @guard_path4 fib saddr type != local drop
add rule inet vpnsplit prerouting ip6 daddr @guard_addr6 ip6 daddr . iifname != @guard_path6 fib saddr type != local drop
add element inet vpnsplit snat4 { $ALIAS . "$dev" : $local }
add element inet vpnsplit guard_addr4 { $local, $ALIAS }
add element inet vpnsplit guard_path4 { $local . "$dev", $ALIAS . "$dev" }
EOT

# the rules that steer traffic from the tunnel address and the alias into the table
$IP -force -batch - 2>/dev/null <<EOT || :
rule add from $local table $TABLE priority $PRIO proto 118
rule add from $ALIAS table $TABLE priority $((PRIO + 1)) proto 118
EOT

printf '{"tunnel": "%s", "device": "%s", "local4": "%s"}\n' "$NAME" "$dev" "$local" >"$STATE_DIR/$NAME.json.tmp"
/usr/bin/mv -f "$STATE_DIR/$NAME.json.tmp" "$STATE_DIR/$NAME.json"
