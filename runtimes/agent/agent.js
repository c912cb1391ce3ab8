'use strict';
/*
 * Color FaaS runtime agent for the `node` runtime.
 *
 * Loads the handler once (`module.function` -> require('/code/' + module)[function]),
 * then serves invocation requests from the worker over the Unix socket
 * /run/colorfaas/agent.sock. Framing, both directions: 4-byte big-endian length,
 * then that many bytes of UTF-8 JSON. See agent.py for the message shapes.
 *
 * Environment: COLORFAAS_HANDLER, COLORFAAS_FUNCTION, COLORFAAS_VERSION,
 * COLORFAAS_MEMORY_MB; COLORFAAS_CODE_DIR and COLORFAAS_SOCKET_DIR override
 * /code and /run/colorfaas (for local testing). COLORFAAS_DEFERRED=1 starts a
 * spare agent that loads its handler when the first frame, an init frame, names
 * it (see agent.py for the init frame).
 *
 * Requests are processed strictly one at a time (across connections too).
 *
 * COLORFAAS_LOG_STREAM=1 (log-stream mode, what the worker uses; see agent.py):
 * what a call prints is also sent ahead of its answer as log chunk frames (length
 * header with the top bit set, then raw UTF-8), at most 20 ms after it was printed
 * whenever the event loop is free, and output between calls is dropped rather
 * than written to the container's own output.
 */

const net = require('net');
const fs = require('fs');
const path = require('path');
const url = require('url');

let HANDLER = process.env.COLORFAAS_HANDLER || '';
const DEFERRED = process.env.COLORFAAS_DEFERRED === '1';
let initialised = !DEFERRED;
const CODE_DIR = process.env.COLORFAAS_CODE_DIR || '/code';
const SOCKET_DIR = process.env.COLORFAAS_SOCKET_DIR || '/run/colorfaas';
const SOCKET_NAME = 'agent.sock';

const LOG_CAP = 65536;
const TRUNC_MARK = '[truncated]\n';
const MAX_RESULT = 6 * 1024 * 1024;
const MAX_REQUEST = 64 * 1024 * 1024;
const MAX_MESSAGE = 4096;
const LOG_STREAM = process.env.COLORFAAS_LOG_STREAM === '1';
const FLUSH_MS = 20;
const LOG_FRAME = 0x80000000;

const envInt = (name) => {
  const v = parseInt(process.env[name] || '0', 10);
  return Number.isFinite(v) ? v : 0;
};
let ENV_FUNCTION = process.env.COLORFAAS_FUNCTION || '';
let ENV_VERSION = envInt('COLORFAAS_VERSION');
let ENV_MEMORY = envInt('COLORFAAS_MEMORY_MB');

// ---------------------------------------------------------------------------
// Log capture
// ---------------------------------------------------------------------------

class Capture {
  constructor() {
    this.parts = [];
    this.bytes = 0;
    this.cut = false;
  }

  add(chunk, encoding) {
    let b;
    if (typeof chunk === 'string') {
      if (encoding && encoding !== 'utf8' && encoding !== 'utf-8' && Buffer.isEncoding(encoding)) {
        b = Buffer.from(chunk, encoding);
      } else {
        b = chunk; // keep strings as-is; count bytes lazily
      }
    } else if (chunk instanceof Uint8Array) {
      b = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    } else {
      b = String(chunk);
    }
    this.parts.push(b);
    this.bytes += typeof b === 'string' ? Buffer.byteLength(b) : b.length;
    if (this.bytes > 2 * LOG_CAP) {
      const all = this._buffer();
      const tail = Buffer.from(all.subarray(all.length - LOG_CAP));
      this.parts = [tail];
      this.bytes = tail.length;
      this.cut = true;
    }
  }

  _buffer() {
    return Buffer.concat(this.parts.map((p) => (typeof p === 'string' ? Buffer.from(p) : p)));
  }

  // Forgets what was captured; returns [parts, bytes, cut].
  _take() {
    const taken = [this.parts, this.bytes, this.cut];
    this.parts = [];
    this.bytes = 0;
    this.cut = false;
    return taken;
  }

  // The unsent tail as raw bytes for a log frame (the worker decodes).
  chunk() {
    const all = this._buffer();
    const cut = this.cut;
    this._take();
    if (!cut && all.length <= LOG_CAP) return all;
    const keep = LOG_CAP - TRUNC_MARK.length;
    return Buffer.concat([Buffer.from(TRUNC_MARK), all.subarray(Math.max(0, all.length - keep))]);
  }

  // The unsent tail as text (all of it unless logs are streamed).
  text() {
    if (this.bytes === 0) return '';
    if (!this.cut && this.bytes <= LOG_CAP) {
      const out = this.parts.every((p) => typeof p === 'string')
        ? this.parts.join('') : this._buffer().toString('utf8');
      this._take();
      return out;
    }
    const all = this._buffer();
    this._take();
    const keep = LOG_CAP - TRUNC_MARK.length;
    let tail = all.subarray(Math.max(0, all.length - keep));
    let i = 0;
    while (i < tail.length && i < 4 && (tail[i] & 0xc0) === 0x80) i++; // partial UTF-8 char at the cut
    tail = tail.subarray(i);
    return TRUNC_MARK + tail.toString('utf8');
  }
}

let current = null; // capture of the call in progress (or of the module load)
let currentSock = null; // the connection of the request in progress
let flushTimer = null;

// Log-stream mode: sends what the current capture has not sent yet.
function flushLogs() {
  flushTimer = null;
  const cap = current;
  if (cap === null || currentSock === null || currentSock.destroyed || cap.bytes === 0) return;
  const data = cap.chunk();
  const hdr = Buffer.allocUnsafe(4);
  hdr.writeUInt32BE((LOG_FRAME | data.length) >>> 0, 0);
  currentSock.write(Buffer.concat([hdr, data]));
}

// Log-stream mode: the current capture's new output leaves within FLUSH_MS.
function scheduleFlush() {
  if (LOG_STREAM && flushTimer === null) flushTimer = setTimeout(flushLogs, FLUSH_MS);
}

function endCapture() {
  current = null;
  if (flushTimer !== null) {
    clearTimeout(flushTimer);
    flushTimer = null;
  }
}
const realStderrWrite = process.stderr.write.bind(process.stderr);

function diag(msg) {
  try {
    realStderrWrite(`colorfaas-agent: ${msg}\n`);
  } catch (_) { /* ignore */ }
}

function interceptedWrite(chunk, encoding, cb) {
  if (typeof encoding === 'function') {
    cb = encoding;
    encoding = undefined;
  }
  if (current !== null) {
    current.add(chunk, encoding);
    scheduleFlush();
  } else if (!LOG_STREAM) {
    // Between calls (timers, background work): the agent's stderr, never the
    // container's stdout.
    try { realStderrWrite(chunk, encoding); } catch (_) { /* ignore */ }
  }
  if (typeof cb === 'function') process.nextTick(cb);
  return true;
}

// console.* writes through these, so console output is captured as well.
process.stdout.write = interceptedWrite;
process.stderr.write = interceptedWrite;

// ---------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------

function frame(body) {
  const len = Buffer.byteLength(body);
  const b = Buffer.allocUnsafe(4 + len);
  b.writeUInt32BE(len, 0);
  b.write(body, 4, 'utf8');
  return b;
}

function errorFrame(kind, message, logs, durationUs) {
  return frame(JSON.stringify({
    ok: false,
    error: { kind, message: String(message) },
    logs: logs || '',
    duration_us: durationUs || 0,
  }));
}

function okFrame(resultJson, logs, durationUs) {
  return frame('{"ok":true,"result":' + resultJson + ',"logs":' + JSON.stringify(logs) +
    ',"duration_us":' + durationUs + '}');
}

function bounded(msg) {
  return msg.length > MAX_MESSAGE ? `${msg.slice(0, MAX_MESSAGE)}... [message truncated]` : msg;
}

function errMessage(e) {
  try {
    if (e instanceof Error || (e && typeof e === 'object' && 'message' in e)) {
      const name = e.name || (e.constructor && e.constructor.name) || 'Error';
      const msg = String(e.message).split('\n')[0];
      return bounded(msg ? `${name}: ${msg}` : name);
    }
    return bounded(`Uncaught ${typeof e === 'string' ? e : JSON.stringify(e)}`);
  } catch (_) {
    try {
      return bounded(`Uncaught ${String(e)}`);
    } catch (_e) {
      return 'Uncaught <unprintable>';
    }
  }
}

function errStack(e) {
  if (e && typeof e === 'object' && typeof e.stack === 'string') {
    // Hide the agent's own frames (and the node internals that called them).
    const lines = e.stack.split('\n');
    const cut = lines.findIndex((l) => l.includes(__filename));
    return (cut > 0 ? lines.slice(0, cut) : lines).join('\n') + '\n';
  }
  return errMessage(e) + '\n';
}

// ---------------------------------------------------------------------------
// Handler loading
// ---------------------------------------------------------------------------

let handlerFn = null;
let loadError = null;
let pendingLogs = '';

async function loadHandler() {
  const cap = new Capture();
  current = cap;
  try {
    const dot = HANDLER.lastIndexOf('.');
    if (dot <= 0 || dot === HANDLER.length - 1) {
      throw Object.assign(new Error(`invalid handler ${JSON.stringify(HANDLER)}: expected module.function`),
        { colorfaasLoad: true });
    }
    const modName = HANDLER.slice(0, dot);
    const fnName = HANDLER.slice(dot + 1);
    const modPath = path.resolve(CODE_DIR, modName);
    let mod;
    try {
      mod = require(modPath);
    } catch (e) {
      if (e && e.code === 'ERR_REQUIRE_ESM') {
        mod = await import(url.pathToFileURL(require.resolve(modPath)).href);
      } else {
        cap.add(errStack(e));
        throw Object.assign(new Error(`cannot load module '${modName}': ${errMessage(e)}`),
          { colorfaasLoad: true });
      }
    }
    let fn = mod == null ? undefined : mod[fnName];
    if (fn === undefined && mod && mod.default && typeof mod.default === 'object') fn = mod.default[fnName];
    if (typeof fn !== 'function') {
      throw Object.assign(new Error(fn === undefined
        ? `module '${modName}' has no export '${fnName}'`
        : `'${HANDLER}' is not a function`), { colorfaasLoad: true });
    }
    handlerFn = fn;
  } catch (e) {
    loadError = e && e.colorfaasLoad ? e.message : errMessage(e);
    if (!(e && e.colorfaasLoad)) cap.add(errStack(e));
    diag(`load error: ${loadError}`);
  } finally {
    endCapture();
  }
  pendingLogs = cap.text();
}

// ---------------------------------------------------------------------------
// Request handling
// ---------------------------------------------------------------------------

// Rejects the in-flight call when the handler throws asynchronously.
let failInflight = null;

function onStrayError(e) {
  if (failInflight !== null) {
    // Fails the call in progress; its stack is logged there.
    const f = failInflight;
    failInflight = null;
    f(e);
  } else if (current !== null) {
    current.add(errStack(e));
  } else {
    diag(`uncaught error outside a call: ${errStack(e)}`);
  }
}
process.on('uncaughtException', onStrayError);
process.on('unhandledRejection', onStrayError);

function parseRequest(payload) {
  let req;
  try {
    req = JSON.parse(payload.toString('utf8'));
  } catch (e) {
    throw new Error(`request is not valid JSON: ${e.message}`);
  }
  if (req === null || typeof req !== 'object' || Array.isArray(req)) throw new Error('request must be a JSON object');
  if (typeof req.run_id !== 'string') throw new Error('request.run_id must be a string');
  let c = req.context;
  if (c === undefined || c === null) c = {};
  if (typeof c !== 'object' || Array.isArray(c)) throw new Error('request.context must be an object');
  const ctx = {
    run_id: c.run_id === undefined ? req.run_id : c.run_id,
    function: c.function === undefined ? ENV_FUNCTION : c.function,
    version: c.version === undefined ? ENV_VERSION : c.version,
    deadline_ms: c.deadline_ms === undefined ? 0 : c.deadline_ms,
    memory_mb: c.memory_mb === undefined ? ENV_MEMORY : c.memory_mb,
  };
  if (typeof ctx.run_id !== 'string') throw new Error('context.run_id must be a string');
  if (typeof ctx.function !== 'string') throw new Error('context.function must be a string');
  for (const k of ['version', 'deadline_ms', 'memory_mb']) {
    if (!Number.isInteger(ctx[k])) throw new Error(`context.${k} must be an integer`);
  }
  const deadline = ctx.deadline_ms;
  const remaining = () => Math.max(0, deadline - Date.now());
  Object.defineProperty(ctx, 'remainingMs', { value: remaining, enumerable: false });
  // AWS Lambda spelling, for ported handlers.
  Object.defineProperty(ctx, 'getRemainingTimeInMillis', { value: remaining, enumerable: false });
  return { event: req.event === undefined ? null : req.event, ctx };
}

const hrnow = process.hrtime.bigint;

// A spare agent's first frame: {"init": {"handler", "function", "version", "memory_mb", "env"}}
// ("env", optional: the function's variables and secrets, set in process.env before the
// handler loads; COLORFAAS_* names and values with NUL are ignored).
async function handleInit(payload) {
  let req;
  try {
    req = JSON.parse(payload.toString('utf8'));
  } catch (e) {
    return errorFrame('bad_request', `request is not valid JSON: ${e.message}`);
  }
  const init = req !== null && typeof req === 'object' ? req.init : undefined;
  if (init === null || typeof init !== 'object' || Array.isArray(init)) {
    return errorFrame('bad_request', 'the agent waits for an init frame first');
  }
  if (typeof init.handler !== 'string') return errorFrame('bad_request', 'init.handler must be a string');
  const env = init.env;
  if (env !== undefined && env !== null && (typeof env !== 'object' || Array.isArray(env))) {
    return errorFrame('bad_request', 'init.env must be an object');
  }
  for (const [name, value] of Object.entries(env || {})) {
    if (typeof value === 'string' && name && !name.includes('=') && !name.includes('\0')
        && !value.includes('\0') && !name.startsWith('COLORFAAS_')) {
      process.env[name] = value;
    }
  }
  HANDLER = init.handler;
  process.env.COLORFAAS_HANDLER = HANDLER;
  if (typeof init.function === 'string') ENV_FUNCTION = init.function;
  if (Number.isInteger(init.version)) ENV_VERSION = init.version;
  if (Number.isInteger(init.memory_mb)) ENV_MEMORY = init.memory_mb;
  const t0 = hrnow();
  await loadHandler();
  initialised = true;
  const durationUs = Number((hrnow() - t0) / 1000n);
  if (loadError !== null) return errorFrame('load', loadError, pendingLogs, durationUs);
  return frame(JSON.stringify({ ok: true, logs: '', duration_us: durationUs }));
}

async function handleRequest(payload) {
  if (!initialised) return handleInit(payload);
  if (DEFERRED && payload.length >= 8 && payload.toString('utf8', 0, 8) === '{"init":') {
    return errorFrame('bad_request', 'the agent is already initialised');
  }
  let event;
  let ctx;
  try {
    ({ event, ctx } = parseRequest(payload));
  } catch (e) {
    return errorFrame('bad_request', e.message);
  }
  if (loadError !== null) return errorFrame('load', loadError, pendingLogs);

  const cap = new Capture();
  current = cap;
  if (pendingLogs) {
    cap.add(pendingLogs);
    pendingLogs = '';
    scheduleFlush();
  }
  let result;
  let durationUs;
  const t0 = hrnow();
  try {
    result = handlerFn(event, ctx);
    if (result !== null && typeof result === 'object' && typeof result.then === 'function') {
      result = await new Promise((resolve, reject) => {
        failInflight = reject;
        result.then(resolve, reject);
      });
    }
    durationUs = Number((hrnow() - t0) / 1000n);
  } catch (e) {
    durationUs = Number((hrnow() - t0) / 1000n);
    endCapture();
    cap.add(errStack(e));
    return errorFrame('exception', errMessage(e), cap.text(), durationUs);
  } finally {
    failInflight = null;
    endCapture();
  }

  let resultJson;
  try {
    resultJson = JSON.stringify(result === undefined ? null : result);
  } catch (e) {
    return errorFrame('bad_result', `result is not JSON-serializable: ${errMessage(e)}`, cap.text(), durationUs);
  }
  if (resultJson === undefined) {
    return errorFrame('bad_result', `result is not JSON-serializable: ${typeof result}`, cap.text(), durationUs);
  }
  // Cheap check first: a UTF-8 char is at most 3 bytes per UTF-16 code unit.
  const n = resultJson.length * 3 <= MAX_RESULT ? 0 : Buffer.byteLength(resultJson);
  if (n > MAX_RESULT) {
    return errorFrame('bad_result', `result too large (${n} bytes > ${MAX_RESULT})`, cap.text(), durationUs);
  }
  return okFrame(resultJson, cap.text(), durationUs);
}

// One request at a time, in arrival order.
const queue = [];
let busy = false;

async function drain() {
  busy = true;
  while (queue.length > 0) {
    const [sock, payload] = queue.shift();
    let resp;
    currentSock = sock;
    try {
      resp = await handleRequest(payload);
    } catch (e) {
      resp = errorFrame('bad_request', `agent error: ${errMessage(e)}`);
    }
    endCapture();
    currentSock = null;
    if (!sock.destroyed) sock.write(resp);
  }
  busy = false;
}

function onConnection(sock) {
  let pending = null;
  sock.on('error', () => { /* worker went away */ });
  sock.on('data', (chunk) => {
    pending = pending === null ? chunk : Buffer.concat([pending, chunk]);
    while (pending !== null && pending.length >= 4) {
      const len = pending.readUInt32BE(0);
      if (len > MAX_REQUEST) {
        sock.end(errorFrame('bad_request', `request too large (${len} bytes > ${MAX_REQUEST})`));
        pending = null;
        return;
      }
      if (pending.length < 4 + len) break;
      queue.push([sock, pending.subarray(4, 4 + len)]);
      pending = pending.length === 4 + len ? null : pending.subarray(4 + len);
    }
    if (!busy && queue.length > 0) drain();
  });
}

function listen() {
  fs.mkdirSync(SOCKET_DIR, { recursive: true });
  const finalPath = path.join(SOCKET_DIR, SOCKET_NAME);
  const tmpPath = path.join(SOCKET_DIR, `.${SOCKET_NAME}.${process.pid}.tmp`);
  try { fs.unlinkSync(tmpPath); } catch (_) { /* absent */ }
  const server = net.createServer({ allowHalfOpen: false }, onConnection);
  server.on('error', (e) => {
    diag(`server error: ${e.message}`);
    process.exit(1);
  });
  server.listen(tmpPath, () => {
    fs.chmodSync(tmpPath, 0o666);
    fs.renameSync(tmpPath, finalPath); // atomic: the worker only ever sees a ready socket
  });
}

function onTerm() {
  try { fs.unlinkSync(path.join(SOCKET_DIR, SOCKET_NAME)); } catch (_) { /* ignore */ }
  process.exit(0);
}
process.on('SIGTERM', onTerm);
process.on('SIGINT', onTerm);

(DEFERRED ? Promise.resolve() : loadHandler()).then(listen, (e) => {
  diag(`fatal: ${errStack(e)}`);
  process.exit(1);
});
