'use strict';
// prepack: put the repository's sidecar.proto into the package, so an installed
// package does not need the repository. The copy is git-ignored, never committed.
const fs = require('node:fs');
const path = require('node:path');

const source = path.join(__dirname, '..', '..', '..', 'protos', 'integration_sidecar');
const target = path.join(__dirname, '..', 'protos', 'integration_sidecar');
fs.rmSync(target, { recursive: true, force: true });
fs.cpSync(source, target, { recursive: true });
console.log(`copied ${path.relative(process.cwd(), source)} -> ${path.relative(process.cwd(), target)}`);
