"""The only code that touches the kernel: netlink socket diagnostics, nftables, eBPF."""
