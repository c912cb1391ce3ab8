//! The hostile functions of `hostile.rs`: each one attack on the worker, its agent or the host.

pub const IMPORT_LOOP: &str =
    "print('importing forever')\nwhile True:\n    pass\n\ndef handle(e, c):\n    return 1\n";

pub const TIMER_TAMPER: &str = r#"
import sys, time
def handle(e, c):
    sys.modules['__main__']._perf_ns = lambda: 0
    time.sleep(1.5)
    return 'slept'
"#;

pub const FORK_BOMB: &str = r#"
import os
def handle(e, c):
    print('forking')
    while True:
        try:
            os.fork()
        except OSError:
            pass
"#;

pub const MEMORY_HOG: &str = r#"
import time
def handle(e, c):
    print('about to allocate')
    time.sleep(0.3)
    blocks = []
    while True:
        blocks.append(b'x' * (16 * 1024 * 1024))
"#;

pub const GIGABYTE_OUT: &str = r#"
import os, sys
def handle(e, c):
    chunk = b'o' * (1 << 20)
    for _ in range(512):
        os.write(1, chunk)
    text = 'p' * (1 << 20)
    for _ in range(512):
        sys.stdout.write(text)
    print('END-OF-GIGABYTE')
    return 'done'
"#;

pub const FLOOD_AFTER_RETURN: &str = r#"
import os, threading
started = []
def flood():
    chunk = b'z' * 65536
    while True:
        os.write(2, chunk)
def handle(e, c):
    if not started:
        started.append(1)
        threading.Thread(target=flood, daemon=True).start()
    return 'returned'
"#;

pub const BIG_RESULT: &str = "def handle(e, c):\n    return 'x' * 100_000_000\n";

pub const DEEP_JSON: &str =
    "def handle(e, c):\n    x = []\n    for _ in range(e['depth']):\n        x = [x]\n    return x\n";

/// Writes a forged answer (or garbage) straight onto the agent's socket, then hangs.
pub const FORGE: &str = r#"
import base64, sys, time
def handle(e, c):
    sys.modules['__main__']._conn.sendall(base64.b64decode(e['bytes']))
    time.sleep(30)
"#;

/// Closes the agent's connection to the worker, then hangs.
pub const HANG_UP: &str = r#"
import socket, sys, time
def handle(e, c):
    sys.modules['__main__']._conn.shutdown(socket.SHUT_RDWR)
    time.sleep(30)
"#;

pub const HUGE_ERROR: &str = "def handle(e, c):\n    raise ValueError('e' * 10_000_000)\n";

pub const WRITE_EVERYWHERE: &str = r#"
import os
def handle(e, c):
    out = {}
    try:
        with open('/run/colorfaas/fill', 'wb') as f:
            for _ in range(1024):
                f.write(b'r' * 1024)
                f.flush()
        out['run'] = 'wrote 1 MB'
    except OSError:
        out['run'] = os.path.getsize('/run/colorfaas/fill')
    for path in ('/code/planted', '/planted', '/run/colorfaas/agent.sock'):
        try:
            with open(path, 'w') as f:
                f.write('x')
            out[path] = 'written'
        except OSError as err:
            out[path] = type(err).__name__
    n = 0
    try:
        with open('/tmp/fill', 'wb') as f:
            while True:
                f.write(b't' * (1 << 20))
                f.flush()
                n += 1
    except OSError:
        pass
    out['tmp_mb'] = n
    return out
"#;

pub const SPIN_AFTER_RETURN: &str = r#"
import threading, time
state = {'n': 0}
def spin():
    while True:
        state['n'] += 1
def handle(e, c):
    if e.get('start'):
        threading.Thread(target=spin, daemon=True).start()
        time.sleep(0.05)
    return state['n']
"#;

pub const EXEC_ESCAPE: &str = r#"#!/usr/bin/python3
import json, os, sys, time
event = sys.stdin.read()
if 'spawn' in event:
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            for fd in (0, 1, 2):
                os.close(fd)
            while True:
                time.sleep(0.01)
        os._exit(0)
    os.wait()
    print(json.dumps('spawned'))
else:
    others = []
    for p in os.listdir('/proc'):
        if not p.isdigit() or int(p) in (1, os.getpid()):
            continue
        try:
            state = open('/proc/%s/stat' % p).read().rsplit(') ', 1)[1].split()[0]
        except OSError:
            continue
        if state != 'Z':
            others.append(int(p))
    print(json.dumps(others))
"#;

/// Sleeps when asked (leaving a mark in its /tmp first), else answers at once.
pub const SLEEPER: &str = r#"
import time
def handle(e, c):
    if e.get('sleep'):
        print('going to sleep')
        open('/tmp/asleep', 'w').close()
        time.sleep(e['sleep'])
    return 'awake'
"#;
