#!/usr/bin/env python3
"""Color FaaS runtime agent for the ``python3`` and ``exec`` runtimes.

The agent runs as the container's entrypoint. It loads the function's handler
once, then serves invocation requests from the worker over a Unix socket.

Protocol (both directions): a 4-byte big-endian unsigned length, then that many
bytes of UTF-8 JSON.

  request:  {"run_id": str, "event": <JSON>, "context": {"run_id": str,
             "function": str, "version": int, "deadline_ms": int,
             "memory_mb": int}}
  success:  {"ok": true, "result": <JSON>, "logs": str, "duration_us": int}
  failure:  {"ok": false, "error": {"kind": "exception"|"exit"|"bad_result"|
             "load"|"bad_request", "message": str}, "logs": str,
             "duration_us": int}

Environment:
  COLORFAAS_RUNTIME     "python3" (default) or "exec"
  COLORFAAS_HANDLER     python3: "module.function" (split at the last dot);
                        exec: path of an executable, relative to the code dir
  COLORFAAS_FUNCTION, COLORFAAS_VERSION, COLORFAAS_MEMORY_MB
                        defaults for request context fields
  COLORFAAS_CODE_DIR    default /code            (override for local testing)
  COLORFAAS_SOCKET_DIR  default /run/colorfaas   (override for local testing)
  COLORFAAS_EXEC_CWD    default /tmp             (exec runtime working dir)
  COLORFAAS_DEFERRED    "1": start without a handler (a spare container) and
                        load it when the first frame, an init frame, names it
  COLORFAAS_LOG_STREAM  "1": log-stream mode (what the worker uses), below

Log-stream mode: while a call (or the module load) runs, what it printed is
also sent ahead of the answer as log chunk frames, each at most 20 ms after it
was printed, so the worker keeps the logs of a run it kills (timeout, memory):

  log chunk: a 4-byte big-endian length with its top bit set (0x80000000 |
             n), then n raw bytes of output (UTF-8, possibly cut anywhere);
             the answer's "logs" then holds only what was not sent yet.

Also fds 1 and 2 become a pipe the agent reads, so output of C code, child
processes and os.write lands in the call's logs, and nothing reaches the
container's own output (`docker logs`); output between calls is dropped.
An exec call ends by killing every other process in the container (setsid
escapees included).

Deferred start (how the worker keeps spare containers ready before it knows
which function they will serve): the agent listens at once; the worker then
puts the code under the code dir and sends

  init:     {"init": {"handler": str, "function": str, "version": int,
             "memory_mb": int, "env": {str: str}}}
            ("env", optional: the function's variables and secrets, set in the
            agent's environment before the handler loads; COLORFAAS_* names and
            values with NUL are ignored)
  answer:   {"ok": true, "logs": str, "duration_us": int}, or a failure frame
            of kind "load" (later requests answer the same load error)

Requests before the init frame, and a second init frame, get "bad_request".

The socket is bound under a temporary name and renamed to ``agent.sock`` only
once the agent is ready, so the worker never connects to a half-ready agent.
One connection is served at a time, requests sequentially, until EOF.
"""

import io
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
import traceback

RUNTIME = os.environ.get("COLORFAAS_RUNTIME", "python3")
HANDLER = os.environ.get("COLORFAAS_HANDLER", "")
CODE_DIR = os.environ.get("COLORFAAS_CODE_DIR", "/code")
SOCKET_DIR = os.environ.get("COLORFAAS_SOCKET_DIR", "/run/colorfaas")
SOCKET_NAME = "agent.sock"

LOG_CAP = 65536                    # bytes of logs kept per call (incl. marker)
TRUNC_MARK = "[truncated]\n"
MAX_RESULT = 6 * 1024 * 1024       # 6 MiB, encoded result
MAX_REQUEST = 64 * 1024 * 1024     # frames above this are refused
DEADLINE_GRACE_MS = 1000           # exec: kill the child this long after the deadline
MAX_MESSAGE = 4096                 # characters of an error message kept
LOG_STREAM = os.environ.get("COLORFAAS_LOG_STREAM") == "1"
FLUSH_S = 0.02                     # log-stream mode: a chunk leaves at most this long after it was printed
LOG_FRAME = 0x80000000             # length-header bit of a log chunk frame (raw bytes, not JSON)

_HDR = struct.Struct(">I")
_pack = _HDR.pack
_unpack_from = _HDR.unpack_from
_perf_ns = time.perf_counter_ns
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
_loads = json.loads

# The real stderr, for the agent's own diagnostics (goes to `docker logs`;
# in log-stream mode only until the agent is serving, then nowhere).
_real_err = sys.stderr
_diag_on = True


def _diag(msg):
    if not _diag_on:
        return
    try:
        _real_err.write("colorfaas-agent: %s\n" % msg)
        _real_err.flush()
    except Exception:
        pass


# ---------------------------------------------------------------------------
# Log capture
# ---------------------------------------------------------------------------

# Guards the capture buffers (handler threads, the pump and the main thread all
# add to them). Re-entrant: a signal handler that prints may interrupt an add.
_lock = threading.RLock()
# Held while a log chunk is sent, and while a call ends: no chunk of a call can
# follow that call's answer on the socket.
_send_lock = threading.Lock()
_monotonic = time.monotonic


class _Capture(object):
    """Keeps the tail of what a call wrote and has not been sent yet; bounded
    memory. `since` is when the oldest unsent byte arrived (0: nothing unsent)."""

    __slots__ = ("buf", "cut", "since")

    def __init__(self):
        self.buf = bytearray()
        self.cut = False
        self.since = 0.0

    def add(self, data, wake=True):
        if isinstance(data, str):
            data = data.encode("utf-8", "replace")
        first = False
        with _lock:
            buf = self.buf
            if not buf and _wake_w >= 0:
                self.since = _monotonic()
                first = True
            buf += data
            if len(buf) > 2 * LOG_CAP:
                del buf[: len(buf) - LOG_CAP]
                self.cut = True
        if first and wake:
            _wake_pump()

    def _take(self):
        """The unsent bytes and whether some were cut before them; forgets them."""
        with _lock:
            buf, cut = self.buf, self.cut
            self.buf = bytearray()
            self.cut = False
            self.since = 0.0
        return buf, cut

    def chunk(self):
        """The unsent tail as raw bytes for a log frame (the worker decodes)."""
        buf, cut = self._take()
        if not cut and len(buf) <= LOG_CAP:
            return bytes(buf)
        return TRUNC_MARK.encode() + bytes(buf[len(TRUNC_MARK) - LOG_CAP:])

    def text(self):
        """The unsent tail as text (all of it unless logs are streamed)."""
        buf, cut = self._take()
        if not buf:
            return ""
        if not cut and len(buf) <= LOG_CAP:
            return buf.decode("utf-8", "replace")
        keep = LOG_CAP - len(TRUNC_MARK)
        tail = bytes(buf[-keep:])
        # Drop a partial UTF-8 sequence at the cut; keep everything else valid.
        i = 0
        while i < len(tail) and i < 4 and (tail[i] & 0xC0) == 0x80:
            i += 1
        return TRUNC_MARK + tail[i:].decode("utf-8", "replace")


# The capture of the call in progress (or of the module load); None between calls.
_current = None
# The worker's connection (log-stream mode sends log chunks on it).
_conn = None
# Write end of the pump's wake-up pipe (-1: no pump).
_wake_w = -1


def _end_capture():
    """Ends the capture of the call in progress; after this no chunk of it is sent."""
    global _current
    with _send_lock:
        _current = None


def _route(data):
    cap = _current
    if cap is not None:
        cap.add(data)
    elif not LOG_STREAM:
        # Output between calls (background threads): the agent's stderr,
        # never the container's stdout.
        try:
            if isinstance(data, str):
                _real_err.write(data)
            else:
                _real_err.buffer.write(data)
        except Exception:
            pass
    # Log-stream mode: output between calls belongs to no run and is dropped.


def _wake_pump():
    try:
        os.write(_wake_w, b"\0")
    except OSError:
        pass


def _send_chunk(cap):
    """Sends what `cap` has not sent yet as a log frame, if it is still current."""
    with _send_lock:
        conn = _conn
        if cap is not _current or conn is None:
            return
        data = cap.chunk()
        if data:
            try:
                conn.sendall(_pack(LOG_FRAME | len(data)) + data)
            except OSError:
                pass


def _pump(out_r, wake_r):
    """Log-stream mode: reads what is written to fds 1 and 2 (C code, child
    processes, os.write) into the current capture, and sends each capture's new
    output to the worker at most FLUSH_S after it was printed, so a run killed
    for its timeout or memory keeps what it printed."""
    import select
    poller = select.poll()
    poller.register(out_r, select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    while True:
        cap = _current
        timeout = None
        if cap is not None and cap.since:
            timeout = max(0, int((cap.since + FLUSH_S - _monotonic()) * 1000) + 1)
        try:
            events = poller.poll(timeout)
        except InterruptedError:
            continue
        for fd, _ev in events:
            try:
                data = os.read(fd, 65536)
            except OSError:
                continue
            if fd == out_r and data:
                cap = _current
                if cap is not None:
                    cap.add(data, False)
        cap = _current
        if cap is not None and cap.since and _monotonic() - cap.since >= FLUSH_S:
            _send_chunk(cap)


def _start_pump():
    """Log-stream mode: fds 1 and 2 become a pipe the pump reads, so nothing a
    function writes ever reaches the container's own output (`docker logs`)."""
    global _wake_w, _diag_on
    out_r, out_w = os.pipe()
    wake_r, _wake_w = os.pipe()
    os.set_blocking(_wake_w, False)
    os.dup2(out_w, 1)
    os.dup2(out_w, 2)
    os.close(out_w)
    _diag_on = False
    threading.Thread(target=_pump, args=(out_r, wake_r), name="colorfaas-log-pump",
                     daemon=True).start()


class _BinaryStream(io.RawIOBase):
    """sys.stdout.buffer / sys.stderr.buffer replacement."""

    def writable(self):
        return True

    def write(self, b):
        b = bytes(b)
        _route(b)
        return len(b)

    def fileno(self):
        return 2


class _TextStream(io.TextIOBase):
    """Installed permanently as sys.stdout and sys.stderr, so that even streams
    captured at import time (e.g. logging.StreamHandler) end up in the logs of
    the call in progress."""

    def __init__(self, name):
        super().__init__()
        self._name = name
        self._buffer = _BinaryStream()

    @property
    def name(self):
        return self._name

    @property
    def encoding(self):
        return "utf-8"

    @property
    def errors(self):
        return "replace"

    @property
    def buffer(self):
        return self._buffer

    @property
    def line_buffering(self):
        return False

    def writable(self):
        return True

    def readable(self):
        return False

    def isatty(self):
        return False

    def fileno(self):
        # Child processes that inherit "our" stdout write to the agent's
        # stderr (docker logs), never to the container's stdout.
        return 2

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError("write() argument must be str, not %s" % type(s).__name__)
        _route(s)
        return len(s)

    def flush(self):
        pass


def _install_streams():
    # fd 1 -> fd 2: nothing reaches the container's stdout, even from
    # subprocesses or C extensions writing to fd 1 directly.
    try:
        os.dup2(2, 1)
    except OSError:
        pass
    sys.stdout = _TextStream("<stdout>")
    sys.stderr = _TextStream("<stderr>")


# ---------------------------------------------------------------------------
# Framing helpers
# ---------------------------------------------------------------------------

def _frame(body):
    return _pack(len(body)) + body


def _error_frame(kind, message, logs="", duration_us=0):
    body = _dumps({
        "ok": False,
        "error": {"kind": kind, "message": message},
        "logs": logs,
        "duration_us": duration_us,
    }).encode("utf-8", "replace")
    return _frame(body)


def _ok_frame(result_json, logs, duration_us):
    body = b"".join((
        b'{"ok":true,"result":', result_json,
        b',"logs":', _dumps(logs).encode("utf-8", "replace"),
        b',"duration_us":', str(duration_us).encode("ascii"), b"}",
    ))
    return _frame(body)


def _exc_message(e):
    name = type(e).__name__
    try:
        text = str(e)
    except Exception:
        text = "<unprintable>"
    msg = "%s: %s" % (name, text) if text else name
    if len(msg) > MAX_MESSAGE:
        msg = msg[:MAX_MESSAGE] + "... [message truncated]"
    return msg


def _too_large(n):
    return "result too large (%d bytes > %d)" % (n, MAX_RESULT)


# ---------------------------------------------------------------------------
# Context
# ---------------------------------------------------------------------------

_ENV_FUNCTION = os.environ.get("COLORFAAS_FUNCTION", "")


def _env_int(name, default=0):
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


_ENV_VERSION = _env_int("COLORFAAS_VERSION")
_ENV_MEMORY = _env_int("COLORFAAS_MEMORY_MB")


class Context(object):
    """The `context` argument of a python3 handler."""

    __slots__ = ("run_id", "function", "version", "deadline_ms", "memory_mb")

    def __init__(self, run_id, function, version, deadline_ms, memory_mb):
        self.run_id = run_id
        self.function = function
        self.version = version
        self.deadline_ms = deadline_ms
        self.memory_mb = memory_mb

    def remaining_ms(self):
        """Milliseconds left before the run's deadline (never negative)."""
        left = self.deadline_ms - int(time.time() * 1000)
        return left if left > 0 else 0

    # AWS Lambda spelling, for handlers ported from Lambda.
    get_remaining_time_in_millis = remaining_ms

    @property
    def function_name(self):
        return self.function

    def __repr__(self):
        return "Context(run_id=%r, function=%r, version=%r, deadline_ms=%r, memory_mb=%r)" % (
            self.run_id, self.function, self.version, self.deadline_ms, self.memory_mb)


def _parse_request(payload):
    """Returns (run_id, event, Context) or raises ValueError."""
    try:
        req = _loads(payload)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError("request is not valid JSON: %s" % e)
    if type(req) is not dict:
        raise ValueError("request must be a JSON object")
    run_id = req.get("run_id")
    if type(run_id) is not str:
        raise ValueError("request.run_id must be a string")
    c = req.get("context")
    if c is None:
        c = {}
    elif type(c) is not dict:
        raise ValueError("request.context must be an object")
    function = c.get("function", _ENV_FUNCTION)
    version = c.get("version", _ENV_VERSION)
    deadline_ms = c.get("deadline_ms", 0)
    memory_mb = c.get("memory_mb", _ENV_MEMORY)
    if type(function) is not str:
        raise ValueError("context.function must be a string")
    for name, v in (("version", version), ("deadline_ms", deadline_ms), ("memory_mb", memory_mb)):
        if type(v) is not int:
            raise ValueError("context.%s must be an integer" % name)
    ctx_run_id = c.get("run_id", run_id)
    if type(ctx_run_id) is not str:
        raise ValueError("context.run_id must be a string")
    return run_id, req.get("event"), Context(ctx_run_id, function, version, deadline_ms, memory_mb)


# ---------------------------------------------------------------------------
# python3 runtime
# ---------------------------------------------------------------------------

class _LoadError(Exception):
    pass


class PythonRuntime(object):
    def __init__(self, handler):
        self.fn = None
        self.load_error = None      # (message, logs)
        self.pending_logs = ""      # output of the module load, shown with the first call
        self.asyncio = None
        self._load(handler)

    def _load(self, handler):
        global _current
        cap = _Capture()
        _current = cap
        try:
            mod_name, _, fn_name = handler.rpartition(".")
            if not mod_name or not fn_name:
                raise _LoadError("invalid handler %r: expected module.function" % handler)
            if CODE_DIR not in sys.path:
                sys.path.insert(0, CODE_DIR)
            import importlib
            try:
                mod = importlib.import_module(mod_name)
            except BaseException as e:
                cap.add(traceback.format_exc())
                raise _LoadError("cannot import module %r: %s" % (mod_name, _exc_message(e)))
            try:
                fn = getattr(mod, fn_name)
            except AttributeError:
                raise _LoadError("module %r has no attribute %r" % (mod_name, fn_name))
            if not callable(fn):
                raise _LoadError("%r is not callable" % handler)
            code = getattr(fn, "__code__", None)
            if code is not None and code.co_flags & 0x80:  # CO_COROUTINE: async def
                import asyncio
                self.asyncio = asyncio
            self.fn = fn
        except _LoadError as e:
            self.load_error = str(e)
        finally:
            _end_capture()
        self.pending_logs = cap.text()
        if self.load_error is not None:
            _diag("load error: %s" % self.load_error)

    def handle(self, payload):
        global _current
        try:
            _run_id, event, ctx = _parse_request(payload)
        except ValueError as e:
            return _error_frame("bad_request", str(e))
        if self.load_error is not None:
            return _error_frame("load", self.load_error, self.pending_logs)

        cap = _Capture()
        _current = cap
        if self.pending_logs:
            cap.add(self.pending_logs)
            self.pending_logs = ""
        fn = self.fn
        t0 = _perf_ns()
        try:
            result = fn(event, ctx)
            if type(result).__name__ == "coroutine" and hasattr(result, "send"):
                if self.asyncio is None:
                    import asyncio
                    self.asyncio = asyncio
                result = self.asyncio.run(result)
            duration_us = (_perf_ns() - t0) // 1000
        except BaseException as e:
            duration_us = (_perf_ns() - t0) // 1000
            _end_capture()
            try:
                tb = e.__traceback__
                if tb is not None and tb.tb_frame.f_code is PythonRuntime.handle.__code__:
                    tb = tb.tb_next  # hide the agent's own frame
                cap.add("".join(traceback.format_exception(type(e), e, tb)))
            except Exception:
                pass
            return _error_frame("exception", _exc_message(e), cap.text(), duration_us)
        finally:
            _end_capture()

        try:
            result_json = _dumps(result).encode("utf-8")
        except (TypeError, ValueError, OverflowError, RecursionError, UnicodeEncodeError) as e:
            return _error_frame("bad_result", "result is not JSON-serializable: %s" % _exc_message(e),
                                cap.text(), duration_us)
        if len(result_json) > MAX_RESULT:
            return _error_frame("bad_result", _too_large(len(result_json)), cap.text(), duration_us)
        return _ok_frame(result_json, cap.text(), duration_us)


# ---------------------------------------------------------------------------
# exec runtime
# ---------------------------------------------------------------------------

def _reject_constant(name):
    raise ValueError("%s is not valid JSON" % name)


class ExecRuntime(object):
    def __init__(self, handler):
        import select
        import subprocess
        self.handler = handler
        self.select = select
        self.subprocess = subprocess
        self.cmd = None
        self.load_error = None
        self.pending_logs = ""
        self.cwd = os.environ.get("COLORFAAS_EXEC_CWD", "/tmp")
        self.base_env = dict(os.environ)
        self.base_env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        self.base_env.setdefault("HOME", "/tmp")
        self.have_pidfd = hasattr(os, "pidfd_open")
        try:
            self.cmd = self._resolve(handler)
        except _LoadError as e:
            self.load_error = str(e)
            _diag("load error: %s" % self.load_error)

    @staticmethod
    def _resolve(handler):
        if not handler:
            raise _LoadError("no handler configured (COLORFAAS_HANDLER is empty)")
        if handler.startswith("/"):
            handler = handler.lstrip("/")
        root = os.path.realpath(CODE_DIR)
        path = os.path.realpath(os.path.join(root, handler))
        if path != root and not path.startswith(root + os.sep):
            raise _LoadError("handler %r points outside the code package" % handler)
        if not os.path.exists(path):
            raise _LoadError("handler %r not found in the code package" % handler)
        if not os.path.isfile(path):
            raise _LoadError("handler %r is not a regular file" % handler)
        if os.access(path, os.X_OK):
            return [path]
        # Not executable (archives can lose mode bits): use the shebang line.
        try:
            with open(path, "rb") as f:
                head = f.read(512)
        except OSError as e:
            raise _LoadError("cannot read handler %r: %s" % (handler, e))
        if head.startswith(b"#!"):
            line = head[2:].split(b"\n", 1)[0].rstrip(b"\r").strip()
            if not line:
                raise _LoadError("handler %r has an empty shebang line" % handler)
            parts = line.split(None, 1)  # like Linux: interpreter + one optional argument
            interp = parts[0].decode("utf-8", "replace")
            if not (os.path.isfile(interp) and os.access(interp, os.X_OK)):
                raise _LoadError("handler %r: interpreter %r not found in the runtime image" % (handler, interp))
            cmd = [interp]
            if len(parts) > 1:
                cmd.append(parts[1].strip().decode("utf-8", "replace"))
            cmd.append(path)
            return cmd
        if head.startswith(b"\x7fELF"):
            # A dynamically linked binary can be started through the loader.
            for ld in ("/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1"):
                if os.path.exists(ld):
                    return [ld, path]
        raise _LoadError("handler %r is not executable (and has no #! line)" % handler)

    def handle(self, payload):
        try:
            run_id, event, ctx = _parse_request(payload)
        except ValueError as e:
            return _error_frame("bad_request", str(e))
        if self.load_error is not None:
            return _error_frame("load", self.load_error, self.pending_logs)
        try:
            stdin_bytes = _dumps(event).encode("utf-8")
        except (TypeError, ValueError, UnicodeEncodeError) as e:
            return _error_frame("bad_request", "event cannot be encoded: %s" % e)

        env = self.base_env.copy()
        env["COLORFAAS_RUN_ID"] = ctx.run_id
        env["COLORFAAS_FUNCTION"] = ctx.function
        env["COLORFAAS_VERSION"] = str(ctx.version)
        env["COLORFAAS_DEADLINE_MS"] = str(ctx.deadline_ms)
        env["COLORFAAS_MEMORY_MB"] = str(ctx.memory_mb)

        global _current
        cap = _Capture()
        _current = cap
        try:
            status, out, out_len, duration_us = self._run(stdin_bytes, env, ctx.deadline_ms, cap)
        except OSError as e:
            _end_capture()
            return _error_frame("load", "cannot execute %s: %s" % (self.handler, _exc_message(e)), cap.text())
        finally:
            _end_capture()
            self._kill_strays()

        if status != 0:
            if out:
                cap.add(out)
            if status < 0:
                msg = "killed by signal %d" % -status
            else:
                msg = "exited with code %d" % status
            return _error_frame("exit", msg, cap.text(), duration_us)
        if out_len > MAX_RESULT:
            return _error_frame("bad_result", _too_large(out_len), cap.text(), duration_us)
        try:
            text = out.decode("utf-8").strip()
        except UnicodeDecodeError:
            return _error_frame("bad_result", "stdout is not valid UTF-8", cap.text(), duration_us)
        if not text:
            result_json = b"null"
        else:
            try:
                _loads(text, parse_constant=_reject_constant)
            except ValueError as e:
                cap.add(out)
                return _error_frame("bad_result", "stdout is not valid JSON: %s" % e, cap.text(), duration_us)
            result_json = text.encode("utf-8")
        return _ok_frame(result_json, cap.text(), duration_us)

    def _run(self, stdin_bytes, env, deadline_ms, cap):
        """Runs the executable once; returns (status, stdout, stdout_len, duration_us).
        status: exit code, or -signal."""
        select = self.select
        sp = self.subprocess
        t0 = _perf_ns()
        p = sp.Popen(self.cmd, stdin=sp.PIPE, stdout=sp.PIPE, stderr=sp.PIPE, cwd=self.cwd,
                     env=env, close_fds=True, start_new_session=True)
        fin, fout, ferr = p.stdin.fileno(), p.stdout.fileno(), p.stderr.fileno()
        out = bytearray()
        out_len = 0
        poller = select.poll()
        POLLIN = select.POLLIN | select.POLLHUP | select.POLLERR
        for fd in (fin, fout, ferr):
            os.set_blocking(fd, False)
        poller.register(fout, POLLIN)
        poller.register(ferr, POLLIN)
        stdin_open = True
        view = memoryview(stdin_bytes)
        written = 0
        if len(view):
            poller.register(fin, select.POLLOUT | select.POLLERR)
        else:
            p.stdin.close()
            stdin_open = False
        pidfd = -1
        if self.have_pidfd:
            try:
                pidfd = os.pidfd_open(p.pid)
                poller.register(pidfd, select.POLLIN)
            except OSError:
                pidfd = -1
        open_pipes = {fout, ferr}
        exited = False
        kill_at = deadline_ms + DEADLINE_GRACE_MS if deadline_ms > 0 else 0
        killed = False
        io_done = False

        def consume(fd, data):
            nonlocal out_len
            if fd == fout:
                out_len += len(data)
                if out_len <= MAX_RESULT:
                    out.extend(data)
            else:
                cap.add(data)

        try:
            while open_pipes and not exited:
                timeout = None
                if kill_at and not killed:
                    timeout = min(max(0, kill_at - int(time.time() * 1000)), 60000)
                if pidfd < 0:
                    timeout = 50 if timeout is None else min(timeout, 50)
                events = poller.poll(timeout)
                if not events:
                    if kill_at and not killed and int(time.time() * 1000) >= kill_at:
                        self._killpg(p.pid)
                        killed = True
                    if pidfd < 0:
                        try:
                            exited = os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None
                        except ChildProcessError:
                            exited = True
                    continue
                for fd, _ev in events:
                    if fd == fin:
                        try:
                            written += os.write(fin, view[written:written + 65536])
                        except BlockingIOError:
                            continue
                        except OSError:  # EPIPE: the program does not read its stdin
                            written = len(view)
                        if written >= len(view):
                            poller.unregister(fin)
                            p.stdin.close()
                            stdin_open = False
                    elif fd == pidfd:
                        exited = True
                        poller.unregister(pidfd)
                    elif fd in open_pipes:
                        try:
                            data = os.read(fd, 65536)
                        except BlockingIOError:
                            continue
                        if data:
                            consume(fd, data)
                        else:
                            poller.unregister(fd)
                            open_pipes.discard(fd)
            # The program exited but something (a background child) still holds
            # the pipes: take what is already buffered and stop.
            for fd in list(open_pipes):
                budget = 2 * MAX_RESULT
                while budget > 0:
                    try:
                        data = os.read(fd, 65536)
                    except (BlockingIOError, OSError):
                        break
                    if not data:
                        break
                    budget -= len(data)
                    consume(fd, data)
            io_done = True
        finally:
            if not io_done:  # the I/O loop failed: do not wait for the program
                self._killpg(p.pid)
                kill_at = 0
            # Wait for the program itself to exit, without reaping it: while it
            # is a zombie its pid (= its process group id) cannot be reused, and
            # its exit status can no longer be changed by the kill below.
            if not self._wait_exited(p.pid, pidfd, kill_at, exited):
                self._killpg(p.pid)  # past the deadline
                self._wait_exited(p.pid, pidfd, 0, False)
            self._killpg(p.pid)  # stragglers left in the program's session
            if stdin_open:
                try:
                    p.stdin.close()
                except OSError:
                    pass
            p.stdout.close()
            p.stderr.close()
            status = p.wait()
            if pidfd >= 0:
                os.close(pidfd)
        duration_us = (_perf_ns() - t0) // 1000
        return status, bytes(out), out_len, duration_us

    def _wait_exited(self, pid, pidfd, kill_at, exited):
        """Blocks until `pid` has exited (not reaped) or, when kill_at is set,
        until that time; True if it exited."""
        if exited:
            return True
        while True:
            timeout = None
            if kill_at:
                timeout = kill_at - int(time.time() * 1000)
                if timeout <= 0:
                    return False
            if pidfd >= 0:
                if self.select.select([pidfd], [], [], None if timeout is None else min(timeout, 60000) / 1000.0)[0]:
                    return True
                continue
            try:
                info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
            except ChildProcessError:
                return True
            if info is not None:
                return True
            time.sleep(0.001)

    @staticmethod
    def _killpg(pgid):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass

    @classmethod
    def _kill_strays(cls):
        """Nothing a call started outlives it: as the container's PID 1 the
        agent kills every other process in it (children that left the
        program's session with setsid included), then reaps them."""
        if os.getpid() != 1:
            cls._reap_orphans()  # not in a container (local testing): never kill(-1)
            return
        try:
            os.kill(-1, signal.SIGKILL)
        except OSError:
            pass
        deadline = _monotonic() + 1.0
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except OSError:  # ChildProcessError: none left
                return
            if pid == 0:
                if _monotonic() > deadline:
                    return
                time.sleep(0.0005)

    @staticmethod
    def _reap_orphans():
        # The agent is PID 1 in the container: reap re-parented orphans.
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except OSError:
                return
            if pid == 0:
                return


# ---------------------------------------------------------------------------
# Server
# ---------------------------------------------------------------------------

def _serve_connection(conn, handle):
    buf = bytearray(1 << 16)
    mv = memoryview(buf)
    start = end = 0
    recv_into = conn.recv_into
    sendall = conn.sendall
    while True:
        # header
        while end - start < 4:
            if start and len(buf) - end < 4:
                n = end - start
                buf[0:n] = buf[start:end]
                start, end = 0, n
            n = recv_into(mv[end:])
            if not n:
                return
            end += n
        (length,) = _unpack_from(buf, start)
        if length > MAX_REQUEST:
            sendall(_error_frame("bad_request", "request too large (%d bytes > %d)" % (length, MAX_REQUEST)))
            return
        need = start + 4 + length
        if need > len(buf):
            n = end - start
            if 4 + length > len(buf):
                mv.release()
                nbuf = bytearray(4 + length)
                nbuf[0:n] = buf[start:end]
                buf = nbuf
                mv = memoryview(buf)
            else:
                buf[0:n] = buf[start:end]
            start, end = 0, n
            need = 4 + length
        while end < need:
            n = recv_into(mv[end:])
            if not n:
                return
            end += n
        payload = bytes(mv[start + 4:need])
        start = need
        if start == end:
            start = end = 0
            if len(buf) > (1 << 20):  # drop a buffer grown for one big request
                mv.release()
                buf = bytearray(1 << 16)
                mv = memoryview(buf)
        try:
            resp = handle(payload)
        except Exception as e:  # never expected; keep serving
            resp = _error_frame("bad_request", "agent error: %s" % _exc_message(e))
        sendall(resp)


def _listen():
    os.makedirs(SOCKET_DIR, exist_ok=True)
    final = os.path.join(SOCKET_DIR, SOCKET_NAME)
    tmp = os.path.join(SOCKET_DIR, ".%s.%d.tmp" % (SOCKET_NAME, os.getpid()))
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(tmp)
    os.chmod(tmp, 0o666)
    srv.listen(16)
    os.rename(tmp, final)  # atomic: the worker only ever sees a ready socket
    return srv


def _on_term(signum, frame):
    try:
        os.unlink(os.path.join(SOCKET_DIR, SOCKET_NAME))
    except OSError:
        pass
    os._exit(0)


def _new_runtime(handler):
    if RUNTIME == "exec":
        return ExecRuntime(handler)
    return PythonRuntime(handler)


class Deferred(object):
    """A spare agent: no handler until the init frame names one."""

    def __init__(self):
        self.rt = None

    def handle(self, payload):
        rt = self.rt
        if rt is not None:
            if payload[:8] == b'{"init":':
                return _error_frame("bad_request", "the agent is already initialised")
            return rt.handle(payload)
        try:
            req = _loads(payload)
        except (ValueError, UnicodeDecodeError) as e:
            return _error_frame("bad_request", "request is not valid JSON: %s" % e)
        init = req.get("init") if type(req) is dict else None
        if type(init) is not dict:
            return _error_frame("bad_request", "the agent waits for an init frame first")
        handler = init.get("handler")
        if type(handler) is not str:
            return _error_frame("bad_request", "init.handler must be a string")
        global _ENV_FUNCTION, _ENV_VERSION, _ENV_MEMORY, HANDLER
        if type(init.get("function")) is str:
            _ENV_FUNCTION = init["function"]
        for name in ("version", "memory_mb"):
            if type(init.get(name)) is int:
                if name == "version":
                    _ENV_VERSION = init[name]
                else:
                    _ENV_MEMORY = init[name]
        env = init.get("env")
        if env is not None and type(env) is not dict:
            return _error_frame("bad_request", "init.env must be an object")
        HANDLER = handler
        os.environ["COLORFAAS_HANDLER"] = handler
        for name, value in (env or {}).items():
            if (type(name) is str and type(value) is str and name and "=" not in name
                    and "\0" not in name and "\0" not in value
                    and not name.startswith("COLORFAAS_")):
                os.environ[name] = value
        t0 = _perf_ns()
        import importlib
        importlib.invalidate_caches()  # the code dir was filled after start
        rt = _new_runtime(handler)
        self.rt = rt
        duration_us = (_perf_ns() - t0) // 1000
        if rt.load_error is not None:
            return _error_frame("load", rt.load_error, getattr(rt, "pending_logs", ""), duration_us)
        return _frame(_dumps({"ok": True, "logs": "", "duration_us": duration_us}).encode("utf-8"))


def main():
    # As PID 1 the agent would ignore SIGTERM without a handler.
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, _on_term)
    _install_streams()
    if LOG_STREAM:
        _start_pump()
    if RUNTIME not in ("exec", "python3", "python"):
        _diag("unknown COLORFAAS_RUNTIME %r" % RUNTIME)
        sys.exit(2)
    if os.environ.get("COLORFAAS_DEFERRED") == "1":
        rt = Deferred()
    else:
        rt = _new_runtime(HANDLER)
    srv = _listen()
    handle = rt.handle
    global _conn
    while True:
        try:
            conn, _ = srv.accept()
        except InterruptedError:
            continue
        _conn = conn
        try:
            _serve_connection(conn, handle)
        except OSError:
            pass  # the worker went away mid-frame; accept the next connection
        finally:
            _conn = None
            try:
                conn.close()
            except OSError:
                pass


if __name__ == "__main__":
    main()
