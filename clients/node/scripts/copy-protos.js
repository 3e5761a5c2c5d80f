'use strict';
// prepack: put the repository's sidecar.proto into the package, so an installed
// package does not need the repository; postpack (`--remove`) deletes the copy
// again, so the repository's protos/ stays the only one (it is git-ignored too).
const fs = require('node:fs');
const path = require('node:path');

const source = path.join(__dirname, '..', '..', '..', 'protos', 'integration_sidecar');
const target = path.join(__dirname, '..', 'protos');
fs.rmSync(target, { recursive: true, force: true });
if (!process.argv.includes('--remove')) {
  fs.cpSync(source, path.join(target, 'integration_sidecar'), { recursive: true });
  console.log(`copied ${path.relative(process.cwd(), source)} into ${path.relative(process.cwd(), target)}`);
}
