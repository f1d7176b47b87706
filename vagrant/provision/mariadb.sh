#!/usr/bin/env bash
# The lab's MariaDB: listens on the private address; user "app" may log in from the bastion
# only, to database "app". Witness does not record MySQL yet: on the bastion the address is
# protected, so agents are refused and only the Witness service user gets through.
#
# Usage: mariadb.sh ADDRESS BASTION_ADDRESS
set -euo pipefail

address=${1:?usage: mariadb.sh ADDRESS BASTION_ADDRESS}
bastion=${2:?usage: mariadb.sh ADDRESS BASTION_ADDRESS}
password=app-lab-password   # a lab fixture

export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq mariadb-server >/dev/null

cat > /etc/mysql/mariadb.conf.d/60-witness-lab.cnf <<CONF
# Witness lab (vagrant/provision/mariadb.sh)
[mysqld]
bind-address = $address
CONF

systemctl enable --quiet mariadb
systemctl restart mariadb

mariadb <<SQL
CREATE DATABASE IF NOT EXISTS app;
CREATE USER IF NOT EXISTS 'app'@'$bastion' IDENTIFIED BY '$password';
ALTER USER 'app'@'$bastion' IDENTIFIED BY '$password';
GRANT ALL PRIVILEGES ON app.* TO 'app'@'$bastion';
CREATE TABLE IF NOT EXISTS app.orders (
  id INT PRIMARY KEY,
  customer VARCHAR(64) NOT NULL,
  total DECIMAL(10, 2) NOT NULL
);
INSERT IGNORE INTO app.orders VALUES (1, 'ada', 12.50), (2, 'grace', 99.00), (3, 'linus', 7.25);
SQL
echo "mariadb: listening on $address:3306, user app from $bastion"
