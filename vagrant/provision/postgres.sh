#!/usr/bin/env bash
# The lab's PostgreSQL 15: listens on the private address, and takes password logins
# (SCRAM) from the bastion only. Role and database "app", with a small table to query.
#
# Usage: postgres.sh ADDRESS BASTION_ADDRESS
set -euo pipefail

address=${1:?usage: postgres.sh ADDRESS BASTION_ADDRESS}
bastion=${2:?usage: postgres.sh ADDRESS BASTION_ADDRESS}
password=app-lab-password   # a lab fixture; the README says so
conf=/etc/postgresql/15/main
cd /   # runuser keeps the directory, and postgres may not read ours

export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq postgresql-15 >/dev/null

cat > "$conf/conf.d/witness-lab.conf" <<CONF
# Witness lab (vagrant/provision/postgres.sh)
listen_addresses = 'localhost,$address'
password_encryption = 'scram-sha-256'
log_connections = on
CONF

# Replace the lab's block in pg_hba.conf, so running this again changes nothing.
begin='# BEGIN witness lab'
end='# END witness lab'
sed -i "/^$begin\$/,/^$end\$/d" "$conf/pg_hba.conf"
cat >> "$conf/pg_hba.conf" <<HBA
$begin
host    app    app    $bastion/32    scram-sha-256
$end
HBA

systemctl enable --quiet postgresql
systemctl restart postgresql

as_postgres() { runuser -u postgres -- "$@"; }
if [ -z "$(as_postgres psql -tAc "SELECT 1 FROM pg_roles WHERE rolname = 'app'")" ]; then
  as_postgres psql -q -c "CREATE ROLE app LOGIN"
fi
as_postgres psql -q -c "ALTER ROLE app PASSWORD '$password'"
if [ -z "$(as_postgres psql -tAc "SELECT 1 FROM pg_database WHERE datname = 'app'")" ]; then
  as_postgres createdb -O app app
fi
as_postgres psql -q -v ON_ERROR_STOP=1 -d app <<'SQL'
CREATE TABLE IF NOT EXISTS orders (
  id integer PRIMARY KEY,
  customer text NOT NULL,
  total numeric(10, 2) NOT NULL
);
ALTER TABLE orders OWNER TO app;
INSERT INTO orders VALUES (1, 'ada', 12.50), (2, 'grace', 99.00), (3, 'linus', 7.25)
  ON CONFLICT (id) DO NOTHING;
SQL
echo "postgres: listening on $address:5432, role app from $bastion"
