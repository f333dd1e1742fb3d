'use strict';
// A Node.js client of uid2.operator.v1.OperatorService. It loads the .proto files from the
// repository's protos/ at run time (no generated code), as a polyglot user of the API would.
const fs = require('fs');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTOS = path.resolve(__dirname, '..', '..', 'protos');

function loadOperatorService() {
  const definition = protoLoader.loadSync('uid2/operator/v1/operator.proto', {
    includeDirs: [PROTOS],
    keepCase: true,
    longs: Number,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).uid2.operator.v1.OperatorService;
}

class OperatorClient {
  // caFile: PEM CA certificates to verify an operator serving TLS (--tls-cert) against;
  // without it the channel is plaintext.
  constructor(address, apiKey, { caFile } = {}) {
    const Service = loadOperatorService();
    const credentials = caFile
      ? grpc.credentials.createSsl(fs.readFileSync(caFile))
      : grpc.credentials.createInsecure();
    this.stub = new Service(address, credentials);
    this.apiKey = apiKey;
  }

  _call(method, request, withKey) {
    const metadata = new grpc.Metadata();
    if (withKey) metadata.set('authorization', `Bearer ${this.apiKey}`);
    const deadline = new Date(Date.now() + 5000);
    return new Promise((resolve, reject) => {
      this.stub[method](request, metadata, { deadline }, (err, response) => {
        if (err) reject(err);
        else resolve(response);
      });
    });
  }

  generateToken(dii, privacySettings) {
    return this._call('GenerateToken', { dii, privacy_settings: privacySettings }, true);
  }

  refreshToken(refreshToken) {
    return this._call('RefreshToken', { refresh_token: refreshToken }, false);
  }

  close() {
    this.stub.close();
  }
}

module.exports = { OperatorClient, loadOperatorService, grpc };
