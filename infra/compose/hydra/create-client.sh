#!/bin/sh
# Registers heimdall as an OAuth2 client of Hydra, once: the compose stack's `hydra-client`
# one-shot service runs this in the Hydra image. heimdall's client id and secret come from the
# environment (.env: OIDC_CLIENT_ID, OIDC_CLIENT_SECRET), so the client is imported with its id
# (`hydra create oauth2-client` would generate one). A client that already exists is left as it
# is, so `docker compose up` may run this again.
set -eu

if hydra get oauth2-client "$OIDC_CLIENT_ID" --endpoint "$HYDRA_ADMIN_URL" >/dev/null 2>&1; then
  echo "OAuth2 client ${OIDC_CLIENT_ID} exists; nothing to do"
  exit 0
fi

client="$(mktemp)"
trap 'rm -f "$client"' EXIT
# Authorization code with PKCE (heimdall always sends it) and refresh tokens (`offline_access`).
cat >"$client" <<JSON
{
  "client_id": "${OIDC_CLIENT_ID}",
  "client_secret": "${OIDC_CLIENT_SECRET}",
  "client_name": "heimdall",
  "grant_types": ["authorization_code", "refresh_token"],
  "response_types": ["code"],
  "scope": "openid profile email offline_access",
  "redirect_uris": ["${OIDC_REDIRECT_URL}"],
  "token_endpoint_auth_method": "client_secret_basic"
}
JSON
hydra import oauth2-client "$client" --endpoint "$HYDRA_ADMIN_URL" >/dev/null
echo "OAuth2 client ${OIDC_CLIENT_ID} created"
