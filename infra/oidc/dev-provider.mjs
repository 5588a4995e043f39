#!/usr/bin/env node
// A development and test OpenID Connect provider for heimdall's login, built on the npm package
// oidc-provider (installed by `scripts/install-tools.sh oidc`). DEVELOPMENT ONLY: plain HTTP on
// loopback, a fixed table of users, any password accepted, keys generated at start and kept in
// memory, every grant, session and token in memory (a restart forgets them all).
//
// Usage: OIDC_PORT=9000 OIDC_REDIRECT_URIS=http://127.0.0.1:8080/login/callback \
//          node infra/oidc/dev-provider.mjs
//
// Environment:
//   OIDC_PORT                       port to listen on (required)
//   OIDC_HOST                       address to listen on, loopback only (default 127.0.0.1;
//                                   also ::1 or localhost); the issuer is http://<host>:<port>
//   OIDC_CLIENT_ID                  the one client's id (default heimdall)
//   OIDC_CLIENT_SECRET              its secret (default heimdall-dev-secret)
//   OIDC_REDIRECT_URIS              its redirect URIs, comma-separated (required)
//   OIDC_POST_LOGOUT_REDIRECT_URIS  its post-logout redirect URIs, comma-separated (optional)
//   OIDC_ACCESS_TOKEN_TTL           access token lifetime in seconds (default 3600)
//   OIDC_ID_TOKEN_TTL               ID token lifetime in seconds (default 3600)
//   OIDC_REFRESH_TOKEN_TTL          refresh token lifetime in seconds (default 86400)
//   HEIMDALL_NPM_MODULES            the node_modules directory holding oidc-provider
//                                   (default <repo>/.tools/npm/node_modules)
//
// The client is confidential (client_secret_basic), uses the authorization code flow with PKCE
// (S256, required) and the refresh_token grant. A refresh token is issued with every code
// exchange, whether or not offline_access was granted, and rotated on every use: presenting a
// used refresh token again fails with invalid_grant and revokes the whole grant, the refresh
// token that replaced it included. Tokens are bound to the provider's browser session: RP-initiated
// logout (end_session_endpoint, answering "yes, sign me out") revokes them with the session's
// grants. Only offline_access makes them outlive it, and oidc-provider grants that scope only to a
// request that also carries prompt=consent. Token revocation (RFC 7009) and userinfo are enabled.
//
// Access tokens for APIs (resource indicators, RFC 8707): the client may also use the
// client_credentials grant, and any request may name a resource `http://127.0.0.1/<path>`.
// The token's `aud` is the resource, its scopes are among `api:read api:write`, and its format
// follows the path: a path containing `opaque` gets an opaque token, any other a JWT signed
// RS256 with the provider's key (the same key set as ID tokens: /jwks). A path starting with
// `/short-lived/` makes a token that expires after 2 seconds. Without a resource, access tokens
// are opaque (as the login uses them). Every access token carries `roles`: the user's, or
// ["service", "reader"] for a client_credentials token, whose subject is the client id (in a JWT
// `sub`; at introspection `client_id`). Token introspection (RFC 7662, /token/introspection,
// client_secret_basic) answers for any token of the provider.
//
// Scopes and their claims, in the ID token as well as from userinfo:
//   openid          sub
//   profile         name
//   email           email, email_verified
//   roles           roles (a JSON array of strings)
//   offline_access  (no claims)
//   api:read, api:write  (no claims; API scopes for resource indicators)
//
// Users: the built-in login form's "login" field is the account id, the password is ignored.
//   alice  Alice Example  alice@example.com  roles ["user", "editor"]
//   bob    Bob Example    bob@example.com    roles ["user"]
// Any other login is refused: the login form comes back.
//
// Endpoints (from /.well-known/openid-configuration): /auth, /token, /me (userinfo), /jwks,
// /token/introspection, /token/revocation, /session/end (its confirmation form is POSTed to /session/end/confirm
// with the hidden xsrf field and logout=yes), /interaction/<uid> (login and consent forms).
//
// Once listening it prints one line to stdout, `oidc-provider ready <issuer>`; errors go to
// stderr. A bad configuration exits with status 2 and a message.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const USERS = {
  alice: {
    name: 'Alice Example',
    email: 'alice@example.com',
    roles: ['user', 'editor'],
  },
  bob: {
    name: 'Bob Example',
    email: 'bob@example.com',
    roles: ['user'],
  },
};

function die(message) {
  process.stderr.write(`dev-provider: ${message}\n`);
  process.exit(2);
}

function env(name, fallback) {
  const value = process.env[name];
  return value === undefined || value.trim() === '' ? fallback : value.trim();
}

function list(name) {
  return env(name, '')
    .split(',')
    .map((item) => item.trim())
    .filter((item) => item !== '');
}

function seconds(name, fallback) {
  const raw = env(name, undefined);
  if (raw === undefined) {
    return fallback;
  }
  if (!/^[0-9]+$/.test(raw) || Number(raw) < 1 || !Number.isSafeInteger(Number(raw))) {
    die(`${name} must be a positive number of seconds, not '${raw}'`);
  }
  return Number(raw);
}

function isLoopback(host) {
  if (host === 'localhost') {
    return true;
  }
  switch (isIP(host)) {
    case 4:
      return host.split('.')[0] === '127';
    case 6:
      return host === '::1' || host === '0:0:0:0:0:0:0:1';
    default:
      return false;
  }
}

function checkUris(name, uris) {
  for (const uri of uris) {
    let parsed;
    try {
      parsed = new URL(uri);
    } catch {
      die(`${name}: '${uri}' is not a URL`);
    }
    if (!['http:', 'https:'].includes(parsed.protocol) || parsed.hash !== '') {
      die(`${name}: '${uri}' must be an http(s) URL without a fragment`);
    }
  }
  return uris;
}

// ---- configuration ------------------------------------------------------------------------------

const portText = env('OIDC_PORT', undefined);
if (portText === undefined) {
  die('OIDC_PORT is required');
}
const port = Number(portText);
if (!/^[0-9]+$/.test(portText) || port < 1 || port > 65535) {
  die(`OIDC_PORT must be a port number (1-65535), not '${portText}'`);
}

const host = env('OIDC_HOST', '127.0.0.1');
if (!isLoopback(host)) {
  die(`OIDC_HOST must be a loopback address (127.0.0.1, ::1, localhost), not '${host}'`);
}
const issuer = `http://${isIP(host) === 6 ? `[${host}]` : host}:${port}`;

const clientId = env('OIDC_CLIENT_ID', 'heimdall');
const clientSecret = env('OIDC_CLIENT_SECRET', 'heimdall-dev-secret');
const redirectUris = checkUris('OIDC_REDIRECT_URIS', list('OIDC_REDIRECT_URIS'));
if (redirectUris.length === 0) {
  die('OIDC_REDIRECT_URIS is required (comma-separated redirect URIs of the client)');
}
const postLogoutRedirectUris = checkUris(
  'OIDC_POST_LOGOUT_REDIRECT_URIS',
  list('OIDC_POST_LOGOUT_REDIRECT_URIS'),
);
const accessTokenTtl = seconds('OIDC_ACCESS_TOKEN_TTL', 3600);
const idTokenTtl = seconds('OIDC_ID_TOKEN_TTL', 3600);
const refreshTokenTtl = seconds('OIDC_REFRESH_TOKEN_TTL', 86400);

const here = dirname(fileURLToPath(import.meta.url));
const modules = resolve(
  env('HEIMDALL_NPM_MODULES', join(here, '..', '..', '.tools', 'npm', 'node_modules')),
);

// ---- oidc-provider ---------------------------------------------------------------------------

// oidc-provider is ESM only and lives outside this script's module resolution: load its entry
// point by path.
async function loadProvider() {
  const dir = join(modules, 'oidc-provider');
  const manifest = join(dir, 'package.json');
  if (!existsSync(manifest)) {
    die(`oidc-provider not found in ${modules}: run \`scripts/install-tools.sh oidc\` `
      + 'or set HEIMDALL_NPM_MODULES');
  }
  // Its package.json names the entry point in "main" (9.x has no "exports" map).
  const pkg = JSON.parse(readFileSync(manifest, 'utf8'));
  const entry = join(dir, typeof pkg.exports === 'string' ? pkg.exports : (pkg.main ?? 'index.js'));
  return import(pathToFileURL(entry).href);
}

const { default: Provider, interactionPolicy, errors } = await loadProvider();

// The roles of a client_credentials token: the client acting as itself.
const SERVICE_ROLES = ['service', 'reader'];
const API_SCOPES = 'api:read api:write';

// A resource indicator `http://127.0.0.1/<path>` names an API of the tests (see the header).
function resourceServer(resourceIndicator) {
  let url;
  try {
    url = new URL(resourceIndicator);
  } catch {
    throw new errors.InvalidTarget();
  }
  if (url.origin !== 'http://127.0.0.1' || url.search !== '' || url.hash !== '') {
    throw new errors.InvalidTarget();
  }
  const opaque = url.pathname.includes('opaque');
  return {
    audience: resourceIndicator,
    scope: API_SCOPES,
    accessTokenTTL: url.pathname.startsWith('/short-lived/') ? 2 : accessTokenTtl,
    accessTokenFormat: opaque ? 'opaque' : 'jwt',
    ...(opaque ? {} : { jwt: { sign: { alg: 'RS256' } } }),
  };
}

function findAccount(_ctx, id) {
  if (!Object.hasOwn(USERS, id)) {
    return undefined;
  }
  const user = USERS[id];
  return {
    accountId: id,
    async claims() {
      return {
        sub: id,
        name: user.name,
        email: user.email,
        email_verified: true,
        roles: [...user.roles],
      };
    },
  };
}

// The built-in login form accepts any login: an unknown one is sent back to the login form.
const policy = interactionPolicy.base();
policy.get('login').checks.add(
  new interactionPolicy.Check(
    'unknown_account',
    'the account does not exist',
    (ctx) => (ctx.oidc.session.accountId && !ctx.oidc.account
      ? interactionPolicy.Check.REQUEST_PROMPT
      : interactionPolicy.Check.NO_NEED_TO_PROMPT),
  ),
);

// A fresh RS256 signing key (and cookie key) at every start: a restarted provider's ID tokens
// carry a new kid.
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = {
  ...privateKey.export({ format: 'jwk' }),
  kid: `dev-${randomBytes(6).toString('hex')}`,
  use: 'sig',
  alg: 'RS256',
};

const configuration = {
  clients: [
    {
      client_id: clientId,
      client_secret: clientSecret,
      application_type: 'web',
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: ['authorization_code', 'refresh_token', 'client_credentials'],
      response_types: ['code'],
      redirect_uris: redirectUris,
      post_logout_redirect_uris: postLogoutRedirectUris,
      id_token_signed_response_alg: 'RS256',
    },
  ],
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  findAccount,
  claims: {
    openid: ['sub'],
    profile: ['name'],
    email: ['email', 'email_verified'],
    roles: ['roles'],
  },
  scopes: ['openid', 'offline_access', 'profile', 'email', 'roles', 'api:read', 'api:write'],
  clientAuthMethods: ['client_secret_basic'],
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  responseTypes: ['code'],
  interactions: { policy },
  features: {
    clientCredentials: { enabled: true },
    devInteractions: { enabled: true },
    introspection: { enabled: true },
    resourceIndicators: {
      enabled: true,
      getResourceServerInfo: (_ctx, resourceIndicator) => resourceServer(resourceIndicator),
    },
    revocation: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    userinfo: { enabled: true },
  },
  // Every code exchange brings a refresh token, and every refresh replaces it.
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  // Roles in every access token (JWT claims, introspection answers).
  extraTokenClaims: async (_ctx, token) => {
    if (token.kind === 'ClientCredentials') {
      return { roles: [...SERVICE_ROLES] };
    }
    if (token.accountId && Object.hasOwn(USERS, token.accountId)) {
      return { roles: [...USERS[token.accountId].roles] };
    }
    return undefined;
  },
  rotateRefreshToken: true,
  ttl: {
    AccessToken: (_ctx, token) => token.resourceServer?.accessTokenTTL ?? accessTokenTtl,
    ClientCredentials: (_ctx, token) => token.resourceServer?.accessTokenTTL ?? accessTokenTtl,
    IdToken: idTokenTtl,
    RefreshToken: refreshTokenTtl,
    AuthorizationCode: 60,
    Interaction: 3600,
    Session: Math.max(refreshTokenTtl, 86400),
    Grant: Math.max(refreshTokenTtl, 86400),
  },
  // A plain error page: the error code and its description (no styles fetched from elsewhere).
  renderError(ctx, out) {
    ctx.type = 'html';
    const escape = (text) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
    ctx.body = `<!DOCTYPE html><html><head><title>${escape(out.error)}</title></head><body>`
      + `<h1>${escape(out.error)}</h1><p>${escape(out.error_description ?? '')}</p></body></html>`;
  },
};

let provider;
try {
  provider = new Provider(issuer, configuration);
} catch (error) {
  die(`bad configuration: ${error.message}`);
}

provider.on('server_error', (_ctx, error) => {
  process.stderr.write(`dev-provider: server error: ${error?.stack ?? error}\n`);
});

const server = provider.listen(port, host);
server.on('listening', () => {
  process.stdout.write(`oidc-provider ready ${issuer}\n`);
});
server.on('error', (error) => {
  process.stderr.write(`dev-provider: cannot listen on ${host}:${port}: ${error.message}\n`);
  process.exit(1);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close();
    process.exit(0);
  });
}
