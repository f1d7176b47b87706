#!/usr/bin/env bash
# The bastion's lab tools, before the Witness role runs: the clients agents use (psql,
# mariadb, redis-cli) and curl, to ask the identity provider for tokens. Witness itself is
# installed and configured by the Ansible role (ansible/), run next by ansible_local.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq curl postgresql-client mariadb-client redis-tools >/dev/null
echo "bastion: clients installed"
