"""The official UID2 HTTP API (reference §8) as a second front door to the same `Operator`:
`app.HttpFrontDoor` serves it on its own asyncio loop beside the gRPC server
(`uid2-operator serve --http-listen HOST:PORT`, env UID2_OPERATOR_HTTP_LISTEN).

Endpoints (POST, encrypted envelope under the client's secret, bearer API key) and the domain
call behind each, the same one the gRPC servicer makes:
- /v2/token/generate    tokens.generate     -> success | optout | insufficient_user_consent
- /v2/token/refresh     tokens.refresh      (bare refresh token, no key; CORS) -> success |
  optout sealed under the presented refresh_response_key; invalid_token / expired_token 400
- /v2/token/validate    tokens.validate     -> body true/false
- /v2/token/logout      optouts.opt_out     (OPTOUT role; as the official) -> {"optout": "OK"}
- /v2/identity/map      mapper.map_identity -> {mapped: [{identifier, advertising_id,
  bucket_id}], unmapped: [{identifier, reason}]}
- /v3/identity/map      mapper.map_identity -> {email|email_hash|phone|phone_hash: [{u, p, r}
  | {e}]}
- /v2/identity/buckets  mapper.buckets_since -> [{bucket_id, last_updated}]
- /v2/optout/status     optouts.opt_out_status -> {opted_out: [{advertising_id,
  opted_out_since}]}
- /v2/key/sharing, /v2/key/bidstream  keys.sharing_keys / bidstream_keys -> key container (§5)
- /v2/token/client-generate  client_side.generate (a page's JSON, no key; domain.client_side)
- GET /ops/healthcheck  -> "OK"

Errors (plain JSON `{"status", "message"}`): bad envelope, JSON or field -> 400 client_error;
missing/unknown key or missing role -> 401 unauthorized; a page's origin or app not the site's
-> 403; a body that does not arrive in time -> 408; body over 2 MiB (64 KiB without a key) ->
413 client_error; too many bodies held at once -> 503 error;
unknown path 404, wrong method 405 (client_error); operator without keys -> 503 error. A 500
(`error`) only for a bug, logged by type and place."""
