// A real OpenID Connect provider (panva's oidc-provider, an OpenID-certified implementation)
// on loopback, for tests/it/oidc.rs. It issues JWT access tokens by the client-credentials
// grant: each client stands for one user, and the claims configured for it (groups, role,
// collections) are added to its tokens.
//
//   node provider.mjs CONFIG.json
//
// CONFIG: {"port": 0 | N, "key_dir": DIR, "kids": ["k2", "k1"] (the first signs; a key not in
//          DIR yet is generated there, so a restart with another list rotates keys),
//          "clients": [{"id", "secret", "claims": {...}}]}
// Tokens for resource urn:hearth (the default) have audience "hearth" and live 300 s; for
// urn:hearth-short the same audience and 1 s; for urn:NAME audience NAME.
// Prints "issuer http://127.0.0.1:PORT" once it listens.
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import Provider from 'oidc-provider';

const config = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const claims = new Map(config.clients.map((c) => [c.id, c.claims || {}]));
const keys = config.kids.map((kid) => {
  const file = path.join(config.key_dir, `${kid}.json`);
  if (!fs.existsSync(file)) {
    const jwk = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
    fs.writeFileSync(file, JSON.stringify({ ...jwk, kid, alg: 'RS256', use: 'sig' }));
  }
  return JSON.parse(fs.readFileSync(file, 'utf8'));
});

const server = http.createServer();
server.listen(config.port || 0, '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, {
    clients: config.clients.map((c) => ({
      client_id: c.id,
      client_secret: c.secret,
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_post',
    })),
    jwks: { keys },
    cookies: { keys: ['hearth-test-cookie-key'] },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => 'urn:hearth',
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, resource) => ({
          scope: 'api',
          audience: resource.startsWith('urn:hearth') ? 'hearth' : resource.replace('urn:', ''),
          accessTokenTTL: resource === 'urn:hearth-short' ? 1 : 300,
          accessTokenFormat: 'jwt',
        }),
      },
    },
    extraTokenClaims: (ctx, token) => claims.get(token.clientId) || {},
  });
  server.on('request', provider.callback());
  console.log(`issuer ${issuer}`);
});
