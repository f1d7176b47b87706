// A real OpenID Provider (oidc-provider) for Witness's lab: the demo and the identity tests.
//
// Usage: node provider.mjs CONFIG.json     (or "-" to read the JSON from stdin)
//
// The configuration is written by appliance/lab/idp.py:
//   host, port           where to listen (port 0: any free port)
//   issuer               optional; default http://HOST:PORT (known only once bound)
//   jwks                 {"keys": [...]} private JWKs with kids; tokens are signed with them.
//                        Optional: without it the provider makes one RS256 key (with a kid)
//                        when it starts and says so on stderr. That key lives only as long
//                        as the process, so tokens signed before a restart no longer validate.
//   resources            {"urn:witness": {"alg": "RS256", "audience": "urn:witness"}, ...}
//   clients              client metadata; witness_email/_name/_groups are the identity of a
//                        client-credentials client, witness_token_ttl its token lifetime
//   accounts             {"alice": {"email": ..., "name": ..., "groups": [...]}, ...}
//   token_ttl            default access token lifetime in seconds
//   device_code_ttl      how long a device code waits for approval, in seconds
//
// When listening it prints exactly one line on stdout, "ready ISSUER"; everything else it has
// to say goes to stderr. It exits on SIGTERM or SIGINT.
//
// Sign-in runs through oidc-provider's own development interactions (any password is taken):
// this is a provider for tests, and the people in it are fixtures.

import { readFileSync } from 'node:fs';
import * as http from 'node:http';
import { generateKeyPairSync, randomBytes } from 'node:crypto';

import Provider, { errors } from 'oidc-provider';

function readConfig() {
  const source = process.argv[2];
  if (!source) {
    console.error('usage: node provider.mjs CONFIG.json | -');
    process.exit(2);
  }
  return JSON.parse(readFileSync(source === '-' ? 0 : source, 'utf8'));
}

const config = readConfig();
const accounts = config.accounts || {};
const resources = config.resources || {};
const tokenTtl = config.token_ttl || 600;

function accountClaims(id) {
  const account = accounts[id];
  if (!account) return undefined;
  return {
    email: account.email,
    email_verified: true,
    name: account.name,
    groups: account.groups || [],
  };
}

// Identity claims of a client-credentials client, from its registered metadata.
function clientClaims(client) {
  const metadata = client.metadata();
  const claims = {};
  if (metadata.witness_email) claims.email = metadata.witness_email;
  if (metadata.witness_name) claims.name = metadata.witness_name;
  if (metadata.witness_groups) claims.groups = metadata.witness_groups;
  return claims;
}

// The signing keys: the configuration's, or else one RS256 key made now and kept in memory only.
function signingKeys() {
  if (config.jwks) return config.jwks;
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const kid = `rs256-${randomBytes(4).toString('hex')}`;
  const jwk = { ...privateKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' };
  console.error(
    `no jwks in the configuration: signing with an ephemeral RS256 key, kid ${kid} `
      + '(tokens signed before a restart will not validate after it)',
  );
  return { keys: [jwk] };
}

function configuration() {
  return {
    clients: config.clients || [],
    jwks: signingKeys(),
    cookies: { keys: [randomBytes(32).toString('hex')] },
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name', 'groups'],
    },
    extraClientMetadata: {
      properties: ['witness_email', 'witness_name', 'witness_groups', 'witness_token_ttl'],
    },
    async findAccount(ctx, id) {
      const claims = accountClaims(id);
      if (!claims) return undefined;
      return {
        accountId: id,
        async claims() {
          return { sub: id, ...claims };
        },
      };
    },
    // Access tokens carry who they are for, so that a resource server (Witness) can read the
    // identity from the token alone.
    async extraTokenClaims(ctx, token) {
      if (token.accountId) return accountClaims(token.accountId);
      if (token.kind === 'ClientCredentials') {
        const client = await ctx.oidc.provider.Client.find(token.clientId);
        return client ? clientClaims(client) : undefined;
      }
      return undefined;
    },
    features: {
      devInteractions: { enabled: true },
      deviceFlow: { enabled: true },
      clientCredentials: { enabled: true },
      introspection: { enabled: false },
      revocation: { enabled: true },
      resourceIndicators: {
        enabled: true,
        // The device flow asks for the resource when it starts; the token endpoint poll does
        // not repeat it, so the granted resource is what the token is for.
        useGrantedResource: async () => true,
        defaultResource: async (ctx, client, oneOf) => (oneOf ? oneOf[0] : undefined),
        async getResourceServerInfo(ctx, indicator, client) {
          const resource = resources[indicator];
          if (!resource) throw new errors.InvalidTarget(`unknown resource ${indicator}`);
          const ttl = client.metadata().witness_token_ttl;
          return {
            scope: 'witness',
            audience: resource.audience || indicator,
            accessTokenTTL: ttl || tokenTtl,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: resource.alg || 'RS256' } },
          };
        },
      },
    },
    ttl: {
      AccessToken: (ctx, token) => token.resourceServer?.accessTokenTTL || tokenTtl,
      ClientCredentials: (ctx, token) => token.resourceServer?.accessTokenTTL || tokenTtl,
      DeviceCode: config.device_code_ttl || 600,
      Grant: 3600,
      IdToken: 3600,
      Interaction: 600,
      RefreshToken: 86400,
      Session: 3600,
    },
    renderError(ctx, out) {
      ctx.type = 'html';
      ctx.body = `<!DOCTYPE html><title>error</title><pre id="error">${
        JSON.stringify(out).replace(/</g, '&lt;')}</pre>`;
    },
  };
}

const host = config.host || '127.0.0.1';
const server = http.createServer();
server.on('error', (err) => {
  console.error(`cannot listen on ${host}:${config.port || 0}: ${err.message}`);
  process.exit(1);
});
server.listen(config.port || 0, host, () => {
  const { port } = server.address();
  const issuer = config.issuer || `http://${host.includes(':') ? `[${host}]` : host}:${port}`;
  const provider = new Provider(issuer, configuration());
  for (const event of ['server_error', 'grant.error', 'device_authorization.error']) {
    provider.on(event, (ctx, err) => console.error(`${event}: ${err.stack || err}`));
  }
  server.on('request', provider.callback());
  process.stdout.write(`ready ${issuer}\n`);
});

function shutdown() {
  server.close();
  server.closeAllConnections?.();
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
