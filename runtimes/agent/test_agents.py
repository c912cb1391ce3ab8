#!/usr/bin/env python3
"""End-to-end tests of the Color FaaS runtime images and their agents.

    python3 runtimes/agent/test_agents.py          (stdlib only; needs root + docker)

Builds nothing: run scripts/build-images.sh first. For each image
(colorfaas/runtime-{python3,node,exec}:latest) it starts containers exactly as
the worker does (read-only rootfs, no network, uid 10001, /code read-only, the
agent's socket in a tmpfs of the container's own, reached through
/proc/<pid>/root, log-stream mode) and talks the agent protocol over the Unix
socket: 4-byte big-endian length + UTF-8 JSON, both directions, and log chunk
frames (top bit of the length set) from the agent.

Round-trip times are printed, not checked (timings belong in benchmarks).

Environment:
  COLORFAAS_TEST_SKIP_OOM=1     skip the OOM-kill observation
Exit status 0 when every check passed.
"""

import atexit
import json
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time

IMAGES = {
    "python3": "colorfaas/runtime-python3:latest",
    "node": "colorfaas/runtime-node:latest",
    "exec": "colorfaas/runtime-exec:latest",
}
AGENT_UID = 10001
MAX_LOGS = 65536
MAX_RESULT = 6 * 1024 * 1024
LOG_FRAME = 0x80000000
ROUNDS = 1000

# ---------------------------------------------------------------------------
# tiny check framework
# ---------------------------------------------------------------------------

FAILURES = []
PASSES = 0


def check(cond, what, detail=None):
    global PASSES
    if cond:
        PASSES += 1
        print("  ok    %s" % what)
    else:
        FAILURES.append(what)
        msg = "  FAIL  %s" % what
        if detail is not None:
            d = detail if isinstance(detail, str) else json.dumps(detail)[:800]
            msg += "\n        got: %s" % d
        print(msg)
    return cond


def section(title):
    print("\n== %s" % title)


# ---------------------------------------------------------------------------
# containers
# ---------------------------------------------------------------------------

_CONTAINERS = []
_TMPDIRS = []


def _cleanup():
    for cid in list(_CONTAINERS):
        subprocess.run(["docker", "rm", "-f", cid], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _CONTAINERS.remove(cid)
    for d in list(_TMPDIRS):
        shutil.rmtree(d, ignore_errors=True)
        _TMPDIRS.remove(d)


atexit.register(_cleanup)


def _on_signal(signum, frame):
    _cleanup()
    sys.exit(128 + signum)


signal.signal(signal.SIGTERM, _on_signal)
signal.signal(signal.SIGINT, _on_signal)


class AgentError(Exception):
    pass


class Conn(object):
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(path)

    def send_raw(self, body):
        self.sock.sendall(struct.pack(">I", len(body)) + body)

    def recv(self):
        """The next answer; log chunks before it are joined in front of its logs (the
        worker's way: the last MAX_LOGS bytes, marked when cut). `chunks` counts them."""
        streamed = b""
        chunks = 0
        while True:
            (n,) = struct.unpack(">I", self._recv_exact(4))
            if not n & LOG_FRAME:
                break
            streamed += self._recv_exact(n & ~LOG_FRAME)
            chunks += 1
        r = json.loads(self._recv_exact(n).decode("utf-8"))
        if isinstance(r, dict) and isinstance(r.get("logs"), str):
            logs = streamed.decode("utf-8", "replace") + r["logs"]
            raw = logs.encode("utf-8")
            if len(raw) > MAX_LOGS:
                logs = "[truncated]\n" + raw[-MAX_LOGS:].decode("utf-8", "ignore")
            r["logs"] = logs
            r["chunks"] = chunks
        return r

    def _recv_exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise AgentError("connection closed by the agent")
            buf += chunk
        return bytes(buf)

    def call(self, event, run_id="run-1", deadline_ms=None, function="adder", version=1, memory_mb=128):
        if deadline_ms is None:
            deadline_ms = int(time.time() * 1000) + 30000
        req = {"run_id": run_id, "event": event,
               "context": {"run_id": run_id, "function": function, "version": version,
                           "deadline_ms": deadline_ms, "memory_mb": memory_mb}}
        self.send_raw(json.dumps(req, separators=(",", ":")).encode("utf-8"))
        return self.recv()

    def close(self):
        self.sock.close()


class Container(object):
    """A function container, started the way the worker starts it."""

    def __init__(self, runtime, handler, files, memory="128m", deferred=False):
        self.runtime = runtime
        self.image = IMAGES[runtime]
        base = tempfile.mkdtemp(prefix="colorfaas-agent-test-")
        _TMPDIRS.append(base)
        self.code_dir = os.path.join(base, "code")
        os.mkdir(self.code_dir)
        os.chmod(base, 0o755)
        # The worker must make the code readable for uid 10001.
        os.chmod(self.code_dir, 0o755)
        for rel, spec in files.items():
            content, mode = spec if isinstance(spec, tuple) else (spec, 0o644)
            path = os.path.join(self.code_dir, rel)
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            with open(path, "w") as f:
                f.write(content)
            os.chmod(path, mode)
        cmd = ["docker", "run", "-d", "--network", "none", "--read-only",
               "--user", "%d:%d" % (AGENT_UID, AGENT_UID),
               "--tmpfs", "/tmp:rw,size=64m,mode=1777",
               "--tmpfs", "/run/colorfaas:rw,nosuid,nodev,noexec,size=64k,mode=0700,uid=%d,gid=%d"
               % (AGENT_UID, AGENT_UID),
               "--log-opt", "max-size=64k", "--log-opt", "max-file=1",
               "--memory", memory, "--pids-limit", "64",
               "-v", "%s:/code:ro" % self.code_dir,
               "-e", "COLORFAAS_LOG_STREAM=1",
               "-e", ("COLORFAAS_DEFERRED=1" if deferred else "COLORFAAS_HANDLER=%s" % handler),
               "-e", "COLORFAAS_FUNCTION=adder", "-e", "COLORFAAS_VERSION=1",
               "-e", "COLORFAAS_MEMORY_MB=%d" % int(memory.rstrip("m")),
               self.image]
        t0 = time.monotonic()
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
        if p.returncode != 0:
            raise AgentError("docker run failed: %s" % p.stderr.strip())
        self.cid = p.stdout.strip()
        _CONTAINERS.append(self.cid)
        # Like the worker: the socket through the agent's root, as the host sees it.
        self.pid = self.state().get("Pid", 0)
        self.sock_dir = "/proc/%d/root/run/colorfaas" % self.pid
        self.sock_path = os.path.join(self.sock_dir, "agent.sock")
        deadline = time.monotonic() + 30
        while not os.path.exists(self.sock_path):
            if time.monotonic() > deadline or not self.running():
                out, err = self.logs()
                raise AgentError("agent socket never appeared (running=%s)\nstdout: %s\nstderr: %s"
                                 % (self.running(), out, err))
            time.sleep(0.005)
        self.ready_ms = (time.monotonic() - t0) * 1000

    def connect(self):
        return Conn(self.sock_path)

    def add_file(self, rel, content, mode=0o644):
        path = os.path.join(self.code_dir, rel)
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        with open(path, "w") as f:
            f.write(content)
        os.chmod(path, mode)

    def state(self):
        p = subprocess.run(["docker", "inspect", "-f", "{{json .State}}", self.cid],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True)
        return json.loads(p.stdout) if p.returncode == 0 else {}

    def running(self):
        return bool(self.state().get("Running"))

    def logs(self):
        p = subprocess.run(["docker", "logs", self.cid], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        return p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")

    def remove(self):
        subprocess.run(["docker", "rm", "-f", self.cid], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if self.cid in _CONTAINERS:
            _CONTAINERS.remove(self.cid)


# ---------------------------------------------------------------------------
# function code used by the tests
# ---------------------------------------------------------------------------

PY_MAIN = r'''
import os, sys, logging, subprocess, time
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
with open("/tmp/loads", "a") as f:      # counts module executions
    f.write("x")
print("init-marker-py")
CALLS = 0

def handle(event, context):
    global CALLS
    CALLS += 1
    op = event.get("op")
    if op == "add":
        print("log-marker-py", event["a"], event["b"])
        print("stderr-marker-py", file=sys.stderr)
        logging.info("logging-marker-py")
        return {"sum": event["a"] + event["b"]}
    if op == "ctx":
        return {"run_id": context.run_id, "function": context.function, "version": context.version,
                "deadline_ms": context.deadline_ms, "memory_mb": context.memory_mb,
                "remaining_ms": context.remaining_ms(), "cwd": os.getcwd(), "uid": os.getuid()}
    if op == "div0":
        print("before-div0")
        return 1 / 0
    if op == "nonjson":
        return {"s": {1, 2}}
    if op == "big":
        return "x" * (7 * 1024 * 1024)
    if op == "spam":
        sys.stdout.write("a" * 200000 + "END-OF-SPAM\n")
        return 1
    if op == "stream":
        print("chunk-one-py")
        time.sleep(0.1)
        os.write(1, b"fd-one-py\n")
        os.write(2, b"fd-two-py\n")
        subprocess.run(["/bin/echo", "child-out-py"])
        print("chunk-two-py")
        return 1
    if op == "state":
        with open("/tmp/loads") as f:
            return {"calls": CALLS, "loads": len(f.read()), "pid": os.getpid()}
    if op == "exit":
        sys.exit(3)
    if op == "oom":
        blocks = []
        for _ in range(50):
            blocks.append(b"x" * (10 * 1024 * 1024))   # 500 MB, really touched
        return len(blocks)
    return event
'''

PY_PKG_INIT = ""
PY_PKG_MOD = r'''
def handle(event, context):
    return {"from": __name__, "event": event}
'''

NODE_MAIN = r'''
const fs = require('fs');
fs.appendFileSync('/tmp/loads', 'x');
console.log('init-marker-node');
let calls = 0;
exports.handle = async (event, context) => {
  calls++;
  switch (event.op) {
    case 'add':
      console.log('log-marker-node', event.a, event.b);
      console.error('stderr-marker-node');
      process.stdout.write('write-marker-node\n');
      await new Promise((r) => setTimeout(r, 1));
      return { sum: event.a + event.b };
    case 'ctx':
      return { ...context, remaining_ms: context.remainingMs(), cwd: process.cwd(), uid: process.getuid() };
    case 'throw':
      console.log('before-throw');
      throw new TypeError('bad input: ' + event.x);
    case 'nonjson':
      return { n: 10n };
    case 'big':
      return 'x'.repeat(7 * 1024 * 1024);
    case 'spam':
      process.stdout.write('a'.repeat(200000) + 'END-OF-SPAM\n');
      return 1;
    case 'stream':
      console.log('chunk-one-node');
      await new Promise((r) => setTimeout(r, 100));
      console.log('chunk-two-node');
      return 1;
    case 'state':
      return { calls, loads: fs.readFileSync('/tmp/loads', 'utf8').length, pid: process.pid };
    case 'asyncthrow':
      setTimeout(() => { throw new Error('thrown from a timer'); }, 1);
      await new Promise((r) => setTimeout(r, 200));
      return 'not reached';
    default:
      return event;
  }
};
'''

NODE_SYNC = r'''
module.exports.handle = function (event, context) {
  return { sync: true, event, fn: context.function };
};
'''

EXEC_RUN = r'''#!/bin/sh
input=$(cat)
case "$input" in
  *'"op":"fail"'*)   echo "failing-marker-exec" >&2; exit 3 ;;
  *'"op":"bad"'*)    echo "this is not json"; exit 0 ;;
  *'"op":"empty"'*)  exit 0 ;;
  *'"op":"signal"'*) kill -9 $$ ;;
  *'"op":"big"'*)    head -c 7000000 /dev/zero | tr '\0' '1'; exit 0 ;;
  *'"op":"spam"'*)   head -c 200000 /dev/zero | tr '\0' 'a' >&2; echo "END-OF-SPAM" >&2; echo 1; exit 0 ;;
  *'"op":"env"'*)
    printf '{"run_id":"%s","function":"%s","version":"%s","deadline_ms":"%s","memory_mb":"%s","cwd":"%s"}\n' \
      "$COLORFAAS_RUN_ID" "$COLORFAAS_FUNCTION" "$COLORFAAS_VERSION" "$COLORFAAS_DEADLINE_MS" \
      "$COLORFAAS_MEMORY_MB" "$(pwd)" ;;
  *) echo "log-marker-exec" >&2; printf '{"echo":%s}\n' "$input" ;;
esac
'''

EXEC_FAST = "#!/bin/sh\nexec cat\n"
EXEC_ESCAPE = r'''#!/usr/bin/python3
import json, os, sys, time
event = sys.stdin.read()
if "spawn" in event:
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            for fd in (0, 1, 2):
                os.close(fd)
            while True:
                time.sleep(0.01)
        os._exit(0)
    os.wait()
    print(json.dumps("spawned"))
else:
    others = []
    for p in os.listdir("/proc"):
        if not p.isdigit() or int(p) in (1, os.getpid()):
            continue
        try:
            state = open("/proc/%s/stat" % p).read().rsplit(") ", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            others.append(int(p))
    print(json.dumps(others))
'''
EXEC_NOEXEC_SHEBANG = "#!/bin/sh\nread x\necho \"{\\\"shebang\\\":$x}\"\n"
EXEC_NOEXEC_PLAIN = "echo hello\n"


# ---------------------------------------------------------------------------
# shared checks
# ---------------------------------------------------------------------------

def is_ok(r):
    return (isinstance(r, dict) and r.get("ok") is True and isinstance(r.get("logs"), str)
            and isinstance(r.get("duration_us"), int))


def is_err(r, kind):
    return (isinstance(r, dict) and r.get("ok") is False and isinstance(r.get("error"), dict)
            and r["error"].get("kind") == kind and isinstance(r["error"].get("message"), str)
            and isinstance(r.get("logs"), str) and isinstance(r.get("duration_us"), int))


def check_socket(c):
    st = os.stat(c.sock_path)
    check(stat.S_ISSOCK(st.st_mode) and (st.st_mode & 0o777) == 0o666,
          "agent.sock is a socket with mode 0666 (ready in %.0f ms)" % c.ready_ms, oct(st.st_mode))
    leftovers = [n for n in os.listdir(c.sock_dir) if n != "agent.sock"]
    check(not leftovers, "no temporary socket left next to agent.sock", leftovers)


def check_bad_request(conn):
    conn.send_raw(b"this is not json")
    r = conn.recv()
    check(is_err(r, "bad_request"), "malformed request -> bad_request, connection stays usable", r)
    conn.send_raw(b'{"event": 1}')
    r = conn.recv()
    check(is_err(r, "bad_request"), "request without run_id -> bad_request", r)


def check_logs_truncated(r, what):
    logs = r.get("logs", "")
    n = len(logs.encode("utf-8"))
    check(is_ok(r) and logs.startswith("[truncated]\n") and n <= MAX_LOGS and "END-OF-SPAM" in logs,
          "%s: 200 KB of output -> last %d bytes kept, '[truncated]' prefix" % (what, n),
          {"ok": r.get("ok"), "len": n, "head": logs[:40]})


def check_no_leak(c, markers):
    out, err = c.logs()
    leaked_out = [m for m in markers if m in out]
    leaked_err = [m for m in markers if m in err]
    check(not leaked_out, "nothing the handler printed reached the container's stdout", leaked_out)
    check(not leaked_err, "nothing the handler printed reached the container's stderr either", leaked_err)


def bench(conn, event, what):
    req = {"run_id": "bench", "event": event,
           "context": {"run_id": "bench", "function": "adder", "version": 1,
                       "deadline_ms": int(time.time() * 1000) + 600000, "memory_mb": 128}}
    body = json.dumps(req, separators=(",", ":")).encode()
    frame = struct.pack(">I", len(body)) + body
    sock = conn.sock
    bad = 0

    def one():
        sock.sendall(frame)
        hdr = conn._recv_exact(4)
        return conn._recv_exact(struct.unpack(">I", hdr)[0])

    for _ in range(20):  # warm-up
        one()
    t0 = time.perf_counter()
    for _ in range(ROUNDS):
        resp = one()
        if not resp.startswith(b'{"ok":true'):
            bad += 1
    mean_us = (time.perf_counter() - t0) / ROUNDS * 1e6
    check(bad == 0, "%s: %d sequential requests on one connection, all ok" % (what, ROUNDS), "%d failed" % bad)
    print("        mean round trip: %.1f us" % mean_us)
    return mean_us


def check_load_failure(runtime, handler, files, what):
    c = Container(runtime, handler, files)
    try:
        conn = c.connect()
        rs = [conn.call({"n": i}) for i in range(3)]
        conn.close()
        conn = c.connect()
        rs.append(conn.call({"n": 4}))
        conn.close()
        check(all(is_err(r, "load") for r in rs),
              "%s (%s): every request answered with kind 'load'" % (what, handler), rs[0])
        print("        message: %s" % rs[0].get("error", {}).get("message"))
        check(c.running(), "%s: the agent keeps running" % what)
    finally:
        c.remove()


def check_deferred(runtime, filename, source, handler, event, expect):
    """A spare container: started with no code, given it, then told the handler."""
    c = Container(runtime, handler, {}, deferred=True)
    try:
        conn = c.connect()
        r = conn.call(event)
        check(is_err(r, "bad_request") and "init frame" in r["error"]["message"],
              "%s deferred: a call before the init frame is refused" % runtime, r)
        c.add_file(filename, source, 0o755 if runtime == "exec" else 0o644)
        conn.send_raw(json.dumps({"init": {"handler": handler, "function": "spare", "version": 3,
                                           "memory_mb": 128}}).encode("utf-8"))
        r = conn.recv()
        check(r.get("ok") is True, "%s deferred: the init frame loads the handler" % runtime, r)
        r = conn.call(event, function="spare", version=3)
        check(is_ok(r) and r.get("result") == expect,
              "%s deferred: the call runs the late-loaded handler" % runtime, r)
        conn.send_raw(json.dumps({"init": {"handler": handler}}).encode("utf-8"))
        r = conn.recv()
        check(is_err(r, "bad_request"), "%s deferred: a second init frame is refused" % runtime, r)
        conn.close()
    finally:
        c.remove()
    c = Container(runtime, handler, {}, deferred=True)
    try:
        conn = c.connect()
        conn.send_raw(json.dumps({"init": {"handler": handler}}).encode("utf-8"))
        r = conn.recv()
        check(is_err(r, "load"), "%s deferred: init of missing code answers a load error" % runtime, r)
        r = conn.call(event)
        check(is_err(r, "load"), "%s deferred: calls then answer the load error" % runtime, r)
        conn.close()
    finally:
        c.remove()


def check_init_env(runtime, filename, source, handler):
    """The init frame's env reaches the handler's environment; COLORFAAS_* names do not."""
    c = Container(runtime, handler, {}, deferred=True)
    try:
        conn = c.connect()
        c.add_file(filename, source, 0o755 if runtime == "exec" else 0o644)
        env = {"GREETING": "hello", "DB_PASSWORD": "s3cr3t", "COLORFAAS_FUNCTION": "forged"}
        conn.send_raw(json.dumps({"init": {"handler": handler, "function": "envfn", "version": 1,
                                           "memory_mb": 128, "env": env}}).encode("utf-8"))
        r = conn.recv()
        check(r.get("ok") is True, "%s init env: the init frame with env loads" % runtime, r)
        r = conn.call({}, function="envfn", version=1)
        res = r.get("result") if is_ok(r) else None
        check(type(res) is list and res[:2] == ["hello", "s3cr3t"] and res[2] != "forged",
              "%s init env: the handler sees env and secrets, not a forged COLORFAAS_ name" % runtime, r)
        conn.close()
    finally:
        c.remove()
    c = Container(runtime, handler, {}, deferred=True)
    try:
        conn = c.connect()
        conn.send_raw(json.dumps({"init": {"handler": handler, "env": ["X"]}}).encode("utf-8"))
        r = conn.recv()
        check(is_err(r, "bad_request"), "%s init env: a non-object env is refused" % runtime, r)
        conn.close()
    finally:
        c.remove()


def test_init_env():
    section("env and secrets in the init frame")
    check_init_env("python3", "envf.py", "import os\ndef handle(e, c):\n"
                   "    return [os.environ.get('GREETING'), os.environ.get('DB_PASSWORD'),"
                   " os.environ.get('COLORFAAS_FUNCTION')]\n", "envf.handle")
    check_init_env("node", "envf.js", "exports.handle = () => [process.env.GREETING,"
                   " process.env.DB_PASSWORD, process.env.COLORFAAS_FUNCTION];\n", "envf.handle")
    check_init_env("exec", "envf.sh", "#!/bin/sh\nprintf '[\"%s\", \"%s\", \"%s\"]'"
                   " \"$GREETING\" \"$DB_PASSWORD\" \"$COLORFAAS_FUNCTION\"\n", "envf.sh")


def test_deferred():
    section("deferred start (spare containers)")
    check_deferred("python3", "late.py", "def handle(e, c):\n    return [e, c.function, c.version]\n",
                   "late.handle", {"x": 1}, [{"x": 1}, "spare", 3])
    check_deferred("node", "late.js", "exports.handle = (e, c) => [e, c.function, c.version];\n",
                   "late.handle", {"x": 1}, [{"x": 1}, "spare", 3])
    check_deferred("exec", "late.sh", "#!/bin/sh\ncat\n", "late.sh", {"x": 1}, {"x": 1})


# ---------------------------------------------------------------------------
# per-runtime tests
# ---------------------------------------------------------------------------

RTT = {}


def test_python3():
    section("python3 (%s)" % IMAGES["python3"])
    c = Container("python3", "main.handle", {"main.py": PY_MAIN, "pkg/__init__.py": PY_PKG_INIT,
                                              "pkg/mod.py": PY_PKG_MOD})
    try:
        check_socket(c)
        conn = c.connect()
        r = conn.call({"op": "add", "a": 2, "b": 3})
        check(is_ok(r) and r["result"] == {"sum": 5}, "ok result {sum: 5}", r)
        logs = r.get("logs", "")
        check("log-marker-py 2 3" in logs and "stderr-marker-py" in logs and "logging-marker-py" in logs,
              "print / stderr / logging output captured in logs", logs)
        check("init-marker-py" in logs, "output of the module load shows in the first call's logs", logs)
        r2 = conn.call({"op": "add", "a": 1, "b": 1})
        check("init-marker-py" not in r2.get("logs", ""), "load output appears only once", r2)

        dl = int(time.time() * 1000) + 5000
        r = conn.call({"op": "ctx"}, run_id="run-ctx", deadline_ms=dl)
        res = r.get("result") or {}
        check(is_ok(r) and res.get("run_id") == "run-ctx" and res.get("function") == "adder"
              and res.get("version") == 1 and res.get("deadline_ms") == dl and res.get("memory_mb") == 128
              and 0 < res.get("remaining_ms", 0) <= 5000,
              "context has run_id/function/version/deadline_ms/memory_mb and remaining_ms()", r)
        check(res.get("cwd") == "/tmp" and res.get("uid") == AGENT_UID, "handler runs in /tmp as uid 10001", res)

        r = conn.call({"op": "div0"})
        check(is_err(r, "exception") and r["error"]["message"] == "ZeroDivisionError: division by zero",
              "exception -> kind 'exception', message 'ZeroDivisionError: division by zero'", r)
        logs = r.get("logs", "")
        check("before-div0" in logs and logs.rstrip().endswith("ZeroDivisionError: division by zero")
              and "Traceback" in logs and 'main.py", line' in logs and "agent.py" not in logs,
              "traceback (without agent frames) at the end of logs", logs)
        r = conn.call({"op": "exit"})
        check(is_err(r, "exception") and r["error"]["message"].startswith("SystemExit"),
              "sys.exit() in the handler is a failed run, not an agent exit", r)
        r = conn.call({"op": "nonjson"})
        check(is_err(r, "bad_result"), "non-JSON result (a set) -> bad_result", r)
        r = conn.call({"op": "big"})
        check(is_err(r, "bad_result") and r["error"]["message"] == "result too large (%d bytes > %d)"
              % (7 * 1024 * 1024 + 2, MAX_RESULT), "7 MiB result -> bad_result 'result too large (...)'", r)
        check_logs_truncated(conn.call({"op": "spam"}), "python3")
        r = conn.call({"op": "stream"})
        logs = r.get("logs", "")
        order = [logs.find(m) for m in ("chunk-one-py", "fd-one-py", "fd-two-py", "child-out-py", "chunk-two-py")]
        check(is_ok(r) and r.get("chunks", 0) >= 1 and -1 not in order and order == sorted(order),
              "log-stream mode: output is sent ahead of the answer in chunks; fd 1/2 writes and "
              "child processes' output land in the call's logs, in order", r)
        check_bad_request(conn)

        unicode_ev = {"s": "h\u00e9llo \u2603 \U0001F600", "n": [1, 2.5, None, True]}
        r = conn.call(unicode_ev)
        check(is_ok(r) and r["result"] == unicode_ev, "unicode / nested event echoed intact", r)

        RTT["python3"] = bench(conn, {"op": "echo", "a": 1}, "python3")
        conn.close()

        conn = c.connect()  # a new connection: same process, same module
        r = conn.call({"op": "state"})
        res = r.get("result") or {}
        check(is_ok(r) and res.get("loads") == 1 and res.get("calls", 0) > ROUNDS,
              "state persists across calls and connections; module loaded once", r)
        conn.close()
        check(c.running(), "the agent is still running after all of the above")
        check_no_leak(c, ["log-marker-py", "stderr-marker-py", "logging-marker-py", "before-div0",
                          "END-OF-SPAM", "init-marker-py", "fd-one-py", "fd-two-py", "child-out-py"])
    finally:
        c.remove()

    c = Container("python3", "pkg.mod.handle", {"pkg/__init__.py": PY_PKG_INIT, "pkg/mod.py": PY_PKG_MOD})
    try:
        conn = c.connect()
        r = conn.call({"x": 1})
        check(is_ok(r) and r["result"] == {"from": "pkg.mod", "event": {"x": 1}},
              "dotted handler 'pkg.mod.handle' (split at the last dot)", r)
        conn.close()
    finally:
        c.remove()
    check_load_failure("python3", "nope.handle", {"main.py": PY_MAIN}, "python3 missing module")
    check_load_failure("python3", "main.nope", {"main.py": PY_MAIN}, "python3 missing function")


def test_node():
    section("node (%s)" % IMAGES["node"])
    c = Container("node", "main.handle", {"main.js": NODE_MAIN})
    try:
        check_socket(c)
        conn = c.connect()
        r = conn.call({"op": "add", "a": 2, "b": 3})
        check(is_ok(r) and r["result"] == {"sum": 5}, "ok result {sum: 5} from an async handler", r)
        logs = r.get("logs", "")
        check("log-marker-node 2 3" in logs and "stderr-marker-node" in logs and "write-marker-node" in logs,
              "console.log / console.error / process.stdout.write captured", logs)
        check("init-marker-node" in logs, "output of the module load shows in the first call's logs", logs)

        dl = int(time.time() * 1000) + 5000
        r = conn.call({"op": "ctx"}, run_id="run-ctx", deadline_ms=dl)
        res = r.get("result") or {}
        check(is_ok(r) and res.get("run_id") == "run-ctx" and res.get("function") == "adder"
              and res.get("version") == 1 and res.get("deadline_ms") == dl and res.get("memory_mb") == 128
              and 0 < res.get("remaining_ms", 0) <= 5000,
              "context has run_id/function/version/deadline_ms/memory_mb and remainingMs()", r)
        check(res.get("cwd") == "/tmp" and res.get("uid") == AGENT_UID, "handler runs in /tmp as uid 10001", res)

        r = conn.call({"op": "throw", "x": 7})
        check(is_err(r, "exception") and r["error"]["message"] == "TypeError: bad input: 7",
              "exception -> kind 'exception', message 'TypeError: bad input: 7'", r)
        logs = r.get("logs", "")
        check("before-throw" in logs and "main.js" in logs and "agent.js" not in logs,
              "stack (without agent frames) in logs", logs)
        r = conn.call({"op": "asyncthrow"})
        check(is_err(r, "exception") and "thrown from a timer" in r["error"]["message"],
              "uncaught exception from a timer fails the call; agent survives", r)
        r = conn.call({"op": "nonjson"})
        check(is_err(r, "bad_result"), "non-JSON result (a BigInt) -> bad_result", r)
        r = conn.call({"op": "big"})
        check(is_err(r, "bad_result") and r["error"]["message"] == "result too large (%d bytes > %d)"
              % (7 * 1024 * 1024 + 2, MAX_RESULT), "7 MiB result -> bad_result 'result too large (...)'", r)
        check_logs_truncated(conn.call({"op": "spam"}), "node")
        r = conn.call({"op": "stream"})
        logs = r.get("logs", "")
        check(is_ok(r) and r.get("chunks", 0) >= 1
              and 0 <= logs.find("chunk-one-node") < logs.find("chunk-two-node"),
              "log-stream mode: output is sent ahead of the answer in chunks", r)
        check_bad_request(conn)
        unicode_ev = {"s": "h\u00e9llo \u2603 \U0001F600", "n": [1, 2.5, None, True]}
        r = conn.call(unicode_ev)
        check(is_ok(r) and r["result"] == unicode_ev, "unicode / nested event echoed intact", r)

        RTT["node"] = bench(conn, {"op": "echo", "a": 1}, "node")
        conn.close()
        conn = c.connect()
        r = conn.call({"op": "state"})
        res = r.get("result") or {}
        check(is_ok(r) and res.get("loads") == 1 and res.get("calls", 0) > ROUNDS,
              "state persists across calls and connections; module loaded once", r)
        conn.close()
        check(c.running(), "the agent is still running after all of the above")
        check_no_leak(c, ["log-marker-node", "stderr-marker-node", "write-marker-node", "before-throw",
                          "END-OF-SPAM", "init-marker-node"])
    finally:
        c.remove()

    c = Container("node", "lib/sync.handle", {"lib/sync.js": NODE_SYNC})
    try:
        conn = c.connect()
        r = conn.call({"x": 1})
        check(is_ok(r) and r["result"] == {"sync": True, "event": {"x": 1}, "fn": "adder"},
              "sync handler in a subdirectory ('lib/sync.handle')", r)
        conn.close()
    finally:
        c.remove()
    check_load_failure("node", "nope.handle", {"main.js": NODE_MAIN}, "node missing module")
    check_load_failure("node", "main.nope", {"main.js": NODE_MAIN}, "node missing function")


def test_exec():
    section("exec (%s)" % IMAGES["exec"])
    c = Container("exec", "bin/run", {"bin/run": (EXEC_RUN, 0o755), "fast.sh": (EXEC_FAST, 0o755)})
    try:
        check_socket(c)
        conn = c.connect()
        r = conn.call({"a": 2, "b": 3})
        check(is_ok(r) and r["result"] == {"echo": {"a": 2, "b": 3}}, "ok result: stdout JSON", r)
        check("log-marker-exec" in r.get("logs", ""), "stderr captured as logs", r)
        dl = int(time.time() * 1000) + 5000
        r = conn.call({"op": "env"}, run_id="run-env", deadline_ms=dl)
        check(is_ok(r) and r["result"] == {"run_id": "run-env", "function": "adder", "version": "1",
                                           "deadline_ms": str(dl), "memory_mb": "128", "cwd": "/tmp"},
              "COLORFAAS_* context variables set, cwd /tmp", r)
        r = conn.call({"op": "fail"})
        check(is_err(r, "exit") and r["error"]["message"] == "exited with code 3"
              and "failing-marker-exec" in r.get("logs", ""),
              "non-zero exit -> kind 'exit', 'exited with code 3', stderr in logs", r)
        r = conn.call({"op": "signal"})
        check(is_err(r, "exit") and r["error"]["message"] == "killed by signal 9",
              "killed by a signal -> kind 'exit', 'killed by signal 9'", r)
        r = conn.call({"op": "bad"})
        check(is_err(r, "bad_result"), "invalid JSON on stdout -> bad_result", r)
        r = conn.call({"op": "empty"})
        check(is_ok(r) and r["result"] is None, "empty stdout -> null result", r)
        r = conn.call({"op": "big"})
        check(is_err(r, "bad_result") and r["error"]["message"] == "result too large (7000000 bytes > %d)"
              % MAX_RESULT, "7 MB stdout -> bad_result 'result too large (...)'", r)
        check_logs_truncated(conn.call({"op": "spam"}), "exec")
        check_bad_request(conn)
        conn.close()
        check(c.running(), "the agent is still running after all of the above")
        check_no_leak(c, ["log-marker-exec", "failing-marker-exec", "END-OF-SPAM"])
    finally:
        c.remove()

    c = Container("exec", "fast.sh", {"fast.sh": (EXEC_FAST, 0o755)})
    try:
        conn = c.connect()
        RTT["exec"] = bench(conn, {"op": "echo", "a": 1}, "exec (/bin/sh 'exec cat' per request)")
        conn.close()
    finally:
        c.remove()

    c = Container("exec", "escape.py", {"escape.py": (EXEC_ESCAPE, 0o755)})
    try:
        conn = c.connect()
        r = conn.call({"op": "spawn"})
        check(is_ok(r) and r["result"] == "spawned", "exec: a call leaves a setsid grandchild behind", r)
        r = conn.call({"op": "list"})
        check(is_ok(r) and r["result"] == [], "exec: the next call finds no process left", r)
        conn.close()
    finally:
        c.remove()

    c = Container("exec", "run.sh", {"run.sh": (EXEC_NOEXEC_SHEBANG, 0o644)})
    try:
        conn = c.connect()
        r = conn.call(5)
        check(is_ok(r) and r["result"] == {"shebang": 5},
              "non-executable file with '#!' runs through its interpreter", r)
        conn.close()
    finally:
        c.remove()
    check_load_failure("exec", "bin/missing", {"bin/run": (EXEC_RUN, 0o755)}, "exec missing executable")
    check_load_failure("exec", "plain.txt", {"plain.txt": (EXEC_NOEXEC_PLAIN, 0o644)},
                       "exec non-executable without '#!'")


def observe_oom():
    section("memory limit: python handler allocating 500 MB under --memory 64m")
    c = Container("python3", "main.handle", {"main.py": PY_MAIN}, memory="64m")
    try:
        conn = c.connect()
        t0 = time.monotonic()
        try:
            r = conn.call({"op": "oom"})
            outcome = "agent answered: %s" % json.dumps(r)[:200]
        except (AgentError, OSError) as e:
            outcome = "connection dropped (%s)" % e
        conn.close()
        deadline = time.monotonic() + 15
        st = c.state()
        while st.get("Running") and time.monotonic() < deadline:
            time.sleep(0.1)
            st = c.state()
        print("        %s after %.2f s" % (outcome, time.monotonic() - t0))
        print("        docker inspect: Status=%s ExitCode=%s OOMKilled=%s"
              % (st.get("Status"), st.get("ExitCode"), st.get("OOMKilled")))
        check(not st.get("Running"), "the container is killed (memory limit enforced)", st)
        check(st.get("OOMKilled") is True, "docker inspect reports OOMKilled=true", st)
    finally:
        c.remove()


def main():
    if os.geteuid() != 0:
        print("test_agents: run as root (the agent's socket is reached through /proc/<pid>/root)")
        return 2
    for rt, image in IMAGES.items():
        p = subprocess.run(["docker", "image", "inspect", image], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, universal_newlines=True)
        if p.returncode != 0:
            print("test_agents: image %s is missing (run scripts/build-images.sh): %s" % (image, p.stderr.strip()))
            return 2
    t0 = time.monotonic()
    try:
        for fn in (test_python3, test_node, test_exec, test_deferred, test_init_env):
            try:
                fn()
            except Exception as e:  # a broken container must not stop the other runtimes' tests
                check(False, "%s raised %s: %s" % (fn.__name__, type(e).__name__, e))
        if os.environ.get("COLORFAAS_TEST_SKIP_OOM") != "1":
            try:
                observe_oom()
            except Exception as e:
                check(False, "observe_oom raised %s: %s" % (type(e).__name__, e))
    finally:
        _cleanup()
    print("\nmean round trip per request: %s" % ", ".join("%s %.1f us" % kv for kv in RTT.items()))
    print("%d checks passed, %d failed (%.1f s)" % (PASSES, len(FAILURES), time.monotonic() - t0))
    for f in FAILURES:
        print("  failed: %s" % f)
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
