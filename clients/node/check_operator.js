'use strict';
// Calls GenerateToken and RefreshToken on a running operator and checks the answers.
// Usage: OPERATOR_ADDR=host:port OPERATOR_API_KEY=key [OPERATOR_CA=ca.pem] node check_operator.js
// (OPERATOR_CA: the operator serves TLS; verify it against these CA certificates.)
// Prints one JSON line of findings (no tokens); exits 0 when every check holds, 1 otherwise.
const assert = require('assert/strict');
const { OperatorClient, grpc } = require('./operator_client');

const CONSENT = { transparency_notice_accepted: true, tcf_consent_string: '' };

async function main() {
  const address = process.env.OPERATOR_ADDR;
  const apiKey = process.env.OPERATOR_API_KEY;
  if (!address || !apiKey) {
    console.error('OPERATOR_ADDR and OPERATOR_API_KEY are required');
    return 2;
  }
  const client = new OperatorClient(address, apiKey, { caFile: process.env.OPERATOR_CA });
  const checks = [];
  try {
    const gen = await client.generateToken({ email: 'validate@example.com' }, CONSENT);
    assert.equal(gen.status, 'GENERATE_TOKEN_STATUS_SUCCESS');
    const id = gen.identity;
    assert.match(id.advertising_token, /^A4[A-Za-z0-9_-]+$/);
    assert.equal(id.refresh_token.length, 388);
    assert.ok(id.refresh_from <= id.identity_expires && id.identity_expires <= id.refresh_expires);
    assert.equal(Buffer.from(id.refresh_response_key, 'base64').length, 32);
    checks.push('generate');

    const ref = await client.refreshToken(id.refresh_token);
    assert.equal(ref.status, 'REFRESH_TOKEN_STATUS_SUCCESS');
    assert.notEqual(ref.identity.advertising_token, id.advertising_token);
    assert.notEqual(ref.identity.refresh_response_key, id.refresh_response_key);
    checks.push('refresh');

    const opt = await client.generateToken({ email: 'optout@example.com' }, CONSENT);
    assert.equal(opt.status, 'GENERATE_TOKEN_STATUS_OPTOUT');
    assert.equal(opt.identity, null);
    checks.push('generate-optout');

    const chain = await client.generateToken({ phone: '+00000000002' }, CONSENT);
    const ended = await client.refreshToken(chain.identity.refresh_token);
    assert.equal(ended.status, 'REFRESH_TOKEN_STATUS_OPTOUT');
    checks.push('refresh-optout');

    const bad = await client.refreshToken('not-a-refresh-token');
    assert.equal(bad.status, 'REFRESH_TOKEN_STATUS_INVALID_TOKEN');
    checks.push('refresh-invalid');

    const intruder = new OperatorClient(address, 'UID2-C-not-a-key', {
      caFile: process.env.OPERATOR_CA,
    });
    try {
      await intruder.generateToken({ email: 'validate@example.com' }, CONSENT);
      assert.fail('an unknown API key was accepted');
    } catch (err) {
      assert.equal(err.code, grpc.status.UNAUTHENTICATED);
    } finally {
      intruder.close();
    }
    checks.push('unauthenticated');

    console.log(JSON.stringify({ ok: true, checks }));
    return 0;
  } catch (err) {
    console.log(JSON.stringify({ ok: false, checks, error: String(err && err.message) }));
    return 1;
  } finally {
    client.close();
  }
}

main().then((code) => process.exit(code));
