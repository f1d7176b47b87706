#!/usr/bin/env bash
# The lab's Redis: listens on loopback and the private address, with a password. Redis's
# protected mode refuses clients from other hosts only while no password is set; with
# requirepass it lets them in after AUTH, so it stays on. Witness does not record Redis
# yet: on the bastion the address is protected, so agents are refused.
#
# Usage: redis.sh ADDRESS
set -euo pipefail

address=${1:?usage: redis.sh ADDRESS}
password=redis-lab-password   # a lab fixture

export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq redis-server >/dev/null

# Our settings live in a file of their own, included last so that they win.
install -m 0640 -o redis -g redis /dev/null /etc/redis/witness-lab.conf
cat > /etc/redis/witness-lab.conf <<CONF
# Witness lab (vagrant/provision/redis.sh)
bind 127.0.0.1 $address
protected-mode yes
requirepass $password
CONF
include='include /etc/redis/witness-lab.conf'
grep -qxF "$include" /etc/redis/redis.conf || echo "$include" >> /etc/redis/redis.conf

systemctl enable --quiet redis-server
systemctl restart redis-server
echo "redis: listening on $address:6379 (AUTH required)"
