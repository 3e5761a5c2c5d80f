'use strict';
/**
 * Test support: a real sidecar process (the repository's .venv) on free loopback
 * ports, and a real upstream HTTP server that fails on purpose.
 */
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const http = require('node:http');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');

const REPO_ROOT = path.resolve(__dirname, '..', '..', '..', '..');
const SIDECAR_BIN = process.env.SIDECAR_BIN || path.join(REPO_ROOT, '.venv', 'bin', 'integration-sidecar');
const READY_TIMEOUT_MS = 20000;
const STOP_TIMEOUT_MS = 10000;
const OUTPUT_LIMIT = 16384;

const running = new Set();

function killRunning() {
  for (const child of running) child.kill('SIGKILL');
}

// Last resort if a test process ends without its teardown: no sidecar outlives it.
// 'exit' does not fire when a signal ends the process, and the test runner ends a
// file's process with SIGTERM when it is interrupted or a test times out: on a
// signal, stop the sidecars, then die of that signal as before.
process.on('exit', killRunning);
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.once(signal, function onSignal() {
    killRunning();
    if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
  });
}

// On Linux the kernel kills a sidecar whose test process dies even by SIGKILL
// (setpriv sets its parent-death signal, then execs it): nothing runs in a killed
// process, so no handler can. libuv spawns from the main thread, which lives as
// long as the process, so the signal never comes early.
const SETPRIV = process.platform === 'linux'
  ? ['/usr/bin/setpriv', '/bin/setpriv'].find((p) => fs.existsSync(p))
  : undefined;

function spawnTied(file, args, options) {
  return SETPRIV
    ? spawn(SETPRIV, ['--pdeathsig', 'KILL', '--', file, ...args], options)
    : spawn(file, args, options);
}

/** A loopback port nothing listens on right now (bind port 0, read it, release it). */
function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

function httpGet(url, timeoutMs) {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { timeout: timeoutMs }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk) => { body += chunk; });
      res.on('end', () => resolve({ status: res.statusCode, body }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

function merge(base, extra) {
  const out = { ...base };
  for (const [key, value] of Object.entries(extra || {})) {
    const both = value && typeof value === 'object' && !Array.isArray(value) &&
      out[key] && typeof out[key] === 'object' && !Array.isArray(out[key]);
    out[key] = both ? merge(out[key], value) : value;
  }
  return out;
}

class SidecarProcess {
  /**
   * @param {object} [options] config (merged into the defaults), env (extra environment)
   */
  constructor(options = {}) {
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sidecar-node-'));
    this.extraConfig = options.config || {};
    this.env = options.env || {};
    this.child = null;
    this.output = '';
    this.ports = null;
  }

  get address() {
    return `127.0.0.1:${this.ports.grpc}`;
  }

  get adminUrl() {
    return `http://127.0.0.1:${this.ports.admin}`;
  }

  /** Writes the config (first time: picks the ports) and starts the process; resolves when /readyz says ready. */
  async start() {
    if (!this.ports) {
      this.ports = { grpc: await freePort(), edge: await freePort(), admin: await freePort() };
    }
    // JSON is YAML: the sidecar reads this file like any other config.
    const config = merge({
      version: 1,
      server: {
        grpc: { address: this.address },
        edge: { host: '127.0.0.1', port: this.ports.edge },
        admin: { host: '127.0.0.1', port: this.ports.admin },
        shutdown_grace: '1s',
      },
      storage: { backend: 'sqlite', data_dir: path.join(this.dir, 'data') },
      logging: { level: 'warning', format: 'text' },
    }, this.extraConfig);
    const configFile = path.join(this.dir, 'sidecar.yaml');
    fs.writeFileSync(configFile, JSON.stringify(config, null, 2));

    const child = spawnTied(SIDECAR_BIN, ['serve', '--config', configFile], {
      env: { ...process.env, ...this.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.child = child;
    running.add(child);
    const keep = (chunk) => {
      this.output = (this.output + chunk.toString()).slice(-OUTPUT_LIMIT);
    };
    const exited = new Promise((resolve) => {
      child.on('exit', (code, signal) => {
        running.delete(child);
        resolve({ code, signal });
      });
      // Could not start at all (e.g. no .venv yet: run `make venv`).
      child.on('error', (err) => {
        running.delete(child);
        keep(`${err.message} (SIDECAR_BIN=${SIDECAR_BIN})\n`);
        resolve({ error: err.code });
      });
    });
    child.exited = exited;
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);

    const deadline = Date.now() + READY_TIMEOUT_MS;
    let early = null;
    exited.then((how) => { early = how; });
    while (Date.now() < deadline) {
      if (early) throw new Error(`sidecar exited during start-up (${JSON.stringify(early)}):\n${this.output}`);
      try {
        const res = await httpGet(`${this.adminUrl}/readyz`, 1000);
        if (res.status === 200) return this;
      } catch {
        // not listening yet
      }
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    await this.stop('SIGKILL');
    throw new Error(`sidecar not ready within ${READY_TIMEOUT_MS} ms:\n${this.output}`);
  }

  /** Signals the process and waits for it to exit (SIGKILL after a bounded wait). */
  async stop(signal = 'SIGTERM') {
    const child = this.child;
    if (!child) return null;
    this.child = null;
    if (child.exitCode !== null || child.signalCode !== null) return child.exited;
    child.kill(signal);
    const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS);
    try {
      return await child.exited;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Stops the process and removes its directory. */
  async destroy() {
    await this.stop('SIGKILL');
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/** A real HTTP upstream: `respond(req, body)` decides each answer ({status, headers, body}); `seen` records requests. */
class Upstream {
  constructor() {
    this.seen = [];
    this.respond = () => ({ status: 200, body: '{}' });
    this.server = http.createServer((req, res) => {
      const chunks = [];
      req.on('data', (c) => chunks.push(c));
      req.on('end', () => {
        const body = Buffer.concat(chunks);
        this.seen.push({ method: req.method, url: req.url, headers: req.headers, body });
        const answer = this.respond(req, body);
        res.writeHead(answer.status, { 'content-type': 'application/json', ...(answer.headers || {}) });
        res.end(answer.body || '');
      });
    });
  }

  async start() {
    await new Promise((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${this.server.address().port}`;
    return this;
  }

  close() {
    this.server.closeAllConnections?.();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

module.exports = { SidecarProcess, Upstream, freePort, REPO_ROOT };
