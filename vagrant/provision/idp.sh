#!/usr/bin/env bash
# The lab's identity provider: oidc-provider (appliance/lab/provider) under Debian's node,
# as a systemd service on port 9000 of the private address.
#
# The provider is copied out of the synced tree into /opt/witness-idp and its packages are
# installed there from the lockfile, so nothing is written under /vagrant. Its configuration
# (vagrant/idp/config.json) has no signing keys: the provider makes an RS256 key each time it
# starts, so tokens issued before a restart of the service stop validating after it.
#
# Usage: idp.sh CONFIG.json
set -euo pipefail

config=${1:?usage: idp.sh CONFIG.json}
source_dir=/vagrant/appliance/lab/provider
app=/opt/witness-idp

export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq nodejs npm curl >/dev/null

install -d -m 0755 "$app" /etc/witness-idp
install -m 0644 "$source_dir/provider.mjs" "$source_dir/package.json" \
  "$source_dir/package-lock.json" "$app/"
install -m 0644 "$config" /etc/witness-idp/config.json

# npm ci again only when the lockfile changed since the last install.
stamp="$app/node_modules/.witness-lock.sha256"
want=$(sha256sum "$app/package-lock.json" | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  (cd "$app" && npm ci --omit=dev --no-audit --no-fund --loglevel=error)
  echo "$want" > "$stamp"
fi

cat > /etc/systemd/system/witness-idp.service <<'UNIT'
[Unit]
Description=Witness lab identity provider (oidc-provider)
After=network-online.target
Wants=network-online.target

[Service]
ExecStart=/usr/bin/node /opt/witness-idp/provider.mjs /etc/witness-idp/config.json
WorkingDirectory=/opt/witness-idp
DynamicUser=yes
Restart=on-failure
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes

[Install]
WantedBy=multi-user.target
UNIT

systemctl daemon-reload
systemctl enable --quiet witness-idp
systemctl restart witness-idp

issuer=$(node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1])).issuer)' \
  /etc/witness-idp/config.json)
for _ in $(seq 1 30); do
  if curl -fsS -o /dev/null "$issuer/.well-known/openid-configuration"; then
    echo "idp: $issuer is up"
    exit 0
  fi
  sleep 1
done
echo "idp: $issuer did not answer within 30 s" >&2
journalctl -u witness-idp --no-pager -n 50 >&2 || true
exit 1
