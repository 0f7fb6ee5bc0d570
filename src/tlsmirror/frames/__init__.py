"""Link layer to TCP segments: Ethernet, Linux cooked, raw IP, loopback, VLAN, IPv4/6, tunnels."""
