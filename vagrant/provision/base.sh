#!/usr/bin/env bash
# Every lab machine but the bastion: fresh package lists, and services allowed to bind the
# lab address before the private interface is up (at boot they may start first).
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq

cat > /etc/sysctl.d/60-witness-lab.conf <<'CONF'
# Witness lab: services listen on the private network's address; let them bind it early.
net.ipv4.ip_nonlocal_bind = 1
CONF
sysctl -q -p /etc/sysctl.d/60-witness-lab.conf
