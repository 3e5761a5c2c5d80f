'use strict';
/**
 * Loads the sidecar's API from sidecar.proto at run time: the copy `npm pack`
 * puts in this package, else the repository's protos/ (the one source of truth);
 * the service for grpc-js, and message types for reading proto3 JSON.
 */
const fs = require('node:fs');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const PROTO_FILE = path.join('integration_sidecar', 'v1', 'sidecar.proto');

// Field names in camelCase, enums as their names, every field present, and the
// oneof's name on SubscribeResponse. Offsets are uint64 on the wire; as JS numbers
// they are exact up to 2^53, far more events than a topic will ever hold.
const LOADER_OPTIONS = {
  keepCase: false,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
};

const CANDIDATE_DIRS = [
  path.join(__dirname, '..', 'protos'),
  path.join(__dirname, '..', '..', '..', 'protos'),
];

const cache = new Map();
const roots = new Map();

function findProtoDir(explicit) {
  const dirs = explicit ? [explicit] : CANDIDATE_DIRS;
  for (const dir of dirs) {
    if (fs.existsSync(path.join(dir, PROTO_FILE))) return dir;
  }
  throw new Error(
    `sidecar.proto not found (looked for ${PROTO_FILE} in ${dirs.join(', ')}); ` +
    'pass protoDir to SidecarClient');
}

/** The generated SidecarService client constructor (cached per proto directory). */
function loadService(protoDir) {
  const dir = findProtoDir(protoDir);
  let service = cache.get(dir);
  if (!service) {
    const definition = protoLoader.loadSync(PROTO_FILE, { ...LOADER_OPTIONS, includeDirs: [dir] });
    service = grpc.loadPackageDefinition(definition).integration_sidecar.v1.SidecarService;
    cache.set(dir, service);
  }
  return service;
}

/**
 * The protobufjs reflection of message `name` (e.g. `QueuedCall`), for reading
 * messages that arrive as JSON rather than over gRPC (cached per proto directory).
 */
function loadMessageType(name, protoDir) {
  const dir = findProtoDir(protoDir);
  let root = roots.get(dir);
  if (!root) {
    root = new protobuf.Root();
    // Imports resolve in `dir` first; google/protobuf/* come bundled with protobufjs.
    const resolve = root.resolvePath;
    root.resolvePath = (origin, target) => {
      const inDir = path.join(dir, target);
      return fs.existsSync(inDir) ? inDir : resolve(origin, target);
    };
    root.loadSync(PROTO_FILE, { keepCase: LOADER_OPTIONS.keepCase });
    root.resolveAll();
    roots.set(dir, root);
  }
  return root.lookupType(`integration_sidecar.v1.${name}`);
}

module.exports = { loadService, loadMessageType, findProtoDir, PROTO_FILE, LOADER_OPTIONS };
