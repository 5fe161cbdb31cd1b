# driver.py: the program inside each container of image "python" (run by
# Debian's CPython as `python3 -I -S -B /bento/driver.py`). It does what
# bento-runner does for Starlark: reads the function's files from bentod
# over the host-API channel (fd 3; internal/wire framing, internal/proto
# messages), loads the function, runs each invocation in a thread of its
# own, and turns the function's host calls into requests that bentod
# checks and carries out. It holds no authority of its own. See
# docs/python.md.
#
# Written for Bento; the function API it gives (`api.send`, `api.recv`,
# `api.poll`, the return value) is the original Bento's.

# Imports are few and cheap: the interpreter starts within the
# function's CPU share, and every millisecond counts towards the cold
# start (socket, traceback and linecache load when first needed).
import _json
import errno
import io
import os
import struct
import sys
import threading
import types
from importlib.machinery import ModuleSpec

FD = 3
MAX_FRAME = 32 << 20  # wire.DefaultMaxFrame
MAX_HEADER = 1 << 20  # wire.MaxHeader
MAX_ERROR_MSG = 4 << 10  # proto.MaxErrorMsg
MAX_BACKTRACE = 8 << 10  # proto.MaxBacktrace
MAX_LOG_LINE = 4 << 10
SEND_CHUNK = 1 << 20

H_INIT, H_READY, H_INVOKE, H_CALL, H_REPLY, H_DONE, H_CANCEL = 64, 65, 66, 67, 68, 69, 70
HOST_API_VERSION = 1


class ProtocolError(Exception):
    pass


# JSON for the frames' headers with the C scanner and string encoder
# alone: the json package would import re, enum and functools (7 ms of
# CPU at every start). Return values are encoded by the json package,
# loaded when a function first returns something other than str or bytes.

def _json_constant(name):
    raise ValueError("%s is not allowed in a header" % name)


class _ScanContext:
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(_json_constant)
    memo = None


_scan = _json.make_scanner(_ScanContext())


def json_loads(b):
    s = b.decode("utf-8") if isinstance(b, (bytes, bytearray, memoryview)) else b
    try:
        v, end = _scan(s, 0)
    except StopIteration:
        raise ValueError("not JSON") from None
    if s[end:].strip():
        raise ValueError("extra data after JSON")
    return v


def json_dumps(v):
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int):
        return int.__repr__(v)
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError("%r is not JSON" % v)
        return float.__repr__(v)
    if isinstance(v, str):
        return _json.encode_basestring_ascii(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(json_dumps(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(_json.encode_basestring_ascii(str(k)) + ":" + json_dumps(x) for k, x in v.items()) + "}"
    raise TypeError("%s is not JSON" % type(v).__name__)


class Conn:
    """Frames on a file descriptor: u32 length, u8 type, u32 header
    length, JSON header, body. Reads are bounded; writes serialized."""

    def __init__(self, fd, max_frame=MAX_FRAME):
        self.fd = fd
        self.max_frame = max_frame
        self.wlock = threading.Lock()

    def _read_into(self, buf):
        mv = memoryview(buf)
        pos = 0
        while pos < len(mv):
            n = os.readv(self.fd, [mv[pos:]])
            if n == 0:
                if pos == 0:
                    raise EOFError("host connection closed")
                raise ProtocolError("host connection closed within a frame")
            pos += n

    def read(self):
        head = bytearray(4)
        self._read_into(head)
        (n,) = struct.unpack(">I", head)
        if n < 5:
            raise ProtocolError("frame length %d is shorter than a frame header" % n)
        if n > self.max_frame:
            raise ProtocolError("frame of %d bytes exceeds the %d-byte limit" % (n, self.max_frame))
        p = bytearray(n)
        self._read_into(p)
        typ = p[0]
        (hl,) = struct.unpack(">I", p[1:5])
        if hl > MAX_HEADER or hl > n - 5:
            raise ProtocolError("header length %d does not fit a %d-byte frame" % (hl, n))
        try:
            hdr = json_loads(bytes(p[5:5 + hl])) if hl else {}
        except (ValueError, RecursionError) as e:
            raise ProtocolError("frame type %d: bad header: %s" % (typ, e)) from None
        if not isinstance(hdr, dict):
            raise ProtocolError("frame type %d: header is not a JSON object" % typ)
        body = bytes(memoryview(p)[5 + hl:])
        return typ, hdr, body

    def send(self, typ, hdr, body=b""):
        h = json_dumps(hdr).encode() if hdr is not None else b""
        pre = struct.pack(">IBI", 1 + 4 + len(h) + len(body), typ, len(h)) + h
        with self.wlock:
            self._write_all(pre)
            if body:
                self._write_all(body)

    def _write_all(self, b):
        mv = memoryview(b)
        while mv:
            n = os.write(self.fd, mv)
            mv = mv[n:]


class Error(Exception):
    """A host call bentod refused or that failed: the message says why."""


class Cancelled(BaseException):
    """Raised in an invocation that bentod stopped (a limit reached)."""


class _Slot:
    __slots__ = ("event", "reply")

    def __init__(self):
        self.event = threading.Event()
        self.reply = None


class Driver:
    def __init__(self, conn):
        self.conn = conn
        self.init = {}
        self.files = {}
        self.fn = None
        self.lock = threading.Lock()
        self.next_id = 0
        self.pending = {}
        self.cancelled = {}  # inv -> reason
        self.threads = {}  # inv -> thread ident
        self.lost = None
        self.read_error = None
        self.ready = False
        self.early_log = []  # lines printed while loading, sent after ready
        self.local = threading.local()
        self.inputs = {}  # inv -> input api.poll() took ahead of api.recv()

    # --- host calls ---

    def inv(self):
        return getattr(self.local, "inv", 0)

    def max_body(self):
        return int(self.init.get("max_body") or 0)

    def call(self, name, args=None, bulk=b"", inv=None):
        if inv is None:
            inv = self.inv()
        if not self.ready:
            raise Error("%s: host calls are not available while the function loads (call it from the function)" % name)
        mb = self.max_body()
        if mb > 0 and len(bulk) > mb:
            raise Error("%s: %d bytes of data, more than the %d a host call may carry here" % (name, len(bulk), mb))
        slot = _Slot()
        with self.lock:
            if inv in self.cancelled:
                raise Cancelled(self.cancelled[inv])
            if self.lost is not None:
                raise Error("host connection lost: %s" % self.lost)
            self.next_id += 1
            cid = self.next_id
            self.pending[cid] = slot
        msg = {"id": cid, "inv": inv, "name": name}
        if args is not None:
            msg["args"] = args
        self.conn.send(H_CALL, msg, bulk)
        while not slot.event.wait(0.25):
            with self.lock:
                reason = self.cancelled.get(inv)
            if reason is not None:
                raise Cancelled(reason)
        rep = slot.reply
        if rep is None:
            raise Error("host connection lost")
        hdr, body = rep
        if hdr.get("error"):
            raise Error(hdr["error"])
        return hdr.get("result") or {}, body

    def _fail(self, why):
        with self.lock:
            self.lost = why
            pending, self.pending = self.pending, {}
        for slot in pending.values():
            slot.event.set()

    # --- loading ---

    def load(self):
        """Loads the entry file; returns None or a FuncError dict."""
        sys.meta_path.insert(0, _BundleFinder(self))
        entry = self.init.get("entry") or "main.py"
        fname = self.init.get("function") or "main"
        src = self.files.get(entry)
        if src is None:
            return {"file": entry, "msg": "no file %r in the function bundle" % entry}
        mod = types.ModuleType(entry[:-3] if entry.endswith(".py") else entry)
        mod.__file__ = entry
        mod.api = API(self)
        sys.modules[mod.__name__] = mod
        try:
            code = compile(src, entry, "exec", dont_inherit=True)
            exec(code, mod.__dict__)
        except BaseException as e:
            try:
                return self.func_error(e)
            except Exception:
                return {"file": entry, "msg": "%s (its message could not be read)" % type(e).__name__}
        fn = mod.__dict__.get(fname)
        if fn is None:
            return {"file": entry, "msg": "no function %r defined (set \"function\" in bento.toml)" % fname}
        if not callable(fn):
            return {"file": entry, "msg": "%r is a %s, not a function" % (fname, type(fn).__name__)}
        self.fn = fn
        return None

    def func_error(self, e):
        """A FuncError for exception e: where in the function's own code
        it happened (a SyntaxError's place, or the innermost frame of a
        bundle file), its message and a backtrace of the function's frames."""
        import linecache
        import traceback
        for name, data in self.files.items():
            if name.endswith(".py") and name not in linecache.cache:
                text = data.decode("utf-8", "replace")
                linecache.cache[name] = (len(text), None, text.splitlines(True), name)
        if isinstance(e, SyntaxError) and e.filename in self.files:
            fe = {"file": e.filename, "line": e.lineno or 0, "col": e.offset or 0,
                  "msg": "%s: %s" % (type(e).__name__, e.msg)}
            return _truncate(fe)
        if isinstance(e, Cancelled):
            msg = str(e)
        else:
            msg = "".join(traceback.format_exception_only(type(e), e)).strip()
        fe = {"msg": msg}
        frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename in self.files]
        if frames:
            last = frames[-1]
            fe["file"], fe["line"] = last.filename, last.lineno or 0
            if getattr(last, "colno", None) is not None:
                fe["col"] = last.colno + 1
            fe["backtrace"] = "Traceback (most recent call last):\n" + "".join(traceback.format_list(frames)) + msg
        return _truncate(fe)

    # --- invocations ---

    def invoke(self, inv, a):
        self.local.inv = inv
        with self.lock:
            self.threads[inv] = threading.get_ident()
        done = {"inv": inv}
        body = b""
        try:
            if a is None:
                a = []
            if not isinstance(a, list):
                done["error"] = {"msg": "bad invocation arguments: want a JSON array"}
            else:
                try:
                    v = self.fn(*a)
                    _flush_output()
                except BaseException as e:  # the function's error, whatever it is
                    try:
                        done["error"] = self.func_error(e)
                    except Exception:  # its __str__ failed, say
                        done["error"] = {"msg": "%s (its message could not be read)" % type(e).__name__}
                else:
                    if v is None:
                        done["none"] = True
                    else:
                        try:
                            body = encode_value(v)
                        except Exception as e:
                            done["error"] = {"msg": "return value: %s" % e}
                        else:
                            mb = self.max_body()
                            if mb > 0 and len(body) > mb:
                                done["error"] = {"msg": "output limit exceeded: the return value has %d bytes, more than the %d one piece of output may have here" % (len(body), mb)}
                                body = b""
        except Cancelled as e:  # arrived between the function's end and here
            done = {"inv": inv, "error": {"msg": str(e)}}
            body = b""
        finally:
            with self.lock:
                self.threads.pop(inv, None)
                self.inputs.pop(inv, None)
        try:
            self.conn.send(H_DONE, done, body)
        except OSError:
            pass
        with self.lock:
            self.cancelled.pop(inv, None)

    def cancel(self, inv, reason):
        with self.lock:
            if inv not in self.threads:
                return
            self.cancelled[inv] = reason or "cancelled"
            ident = self.threads[inv]
        # Best effort: raise Cancelled in the invocation's thread at its
        # next bytecode (a thread blocked in a host call sees it when the
        # call returns; bentod ends the container soon after anyway).
        try:
            import ctypes
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(_cancel_class(reason)))
        except Exception:
            pass

    # --- the loop ---

    def serve(self):
        typ, hdr, body = self.conn.read()
        if typ != H_INIT:
            raise ProtocolError("first frame has type %d, want init" % typ)
        self.init = hdr
        if hdr.get("version") != HOST_API_VERSION:
            raise ProtocolError("host API version %r not supported" % hdr.get("version"))
        self.files = unpack_files(hdr.get("files") or [], body)
        err = self.load()
        self.conn.send(H_READY, {"error": err} if err else {})
        if err:
            # bentod reads the error and ends the container.
            try:
                while True:
                    self.conn.read()
            except (EOFError, ProtocolError, OSError):
                return
        self.ready = True
        reader = threading.Thread(target=self.read_loop, name="bento-host", daemon=True)
        reader.start()
        early, self.early_log = self.early_log, None
        for line in early:
            try:
                self.call("log", {"msg": line}, inv=0)
            except Exception:
                break
        reader.join()
        if self.read_error is not None:
            raise self.read_error

    def read_loop(self):
        try:
            while True:
                typ, hdr, body = self.conn.read()
                if typ == H_INVOKE:
                    inv = int(hdr.get("inv") or 0)
                    threading.Thread(target=self.invoke, args=(inv, hdr.get("args")), name="inv%d" % inv, daemon=True).start()
                elif typ == H_CANCEL:
                    self.cancel(int(hdr.get("inv") or 0), str(hdr.get("reason") or ""))
                elif typ == H_REPLY:
                    with self.lock:
                        slot = self.pending.pop(int(hdr.get("id") or 0), None)
                    if slot is not None:
                        slot.reply = (hdr, body)
                        slot.event.set()
                else:
                    raise ProtocolError("unexpected frame type %d" % typ)
        except EOFError as e:
            self._fail(str(e))
        except BaseException as e:
            self._fail(str(e))
            self.read_error = e if isinstance(e, ProtocolError) else ProtocolError(str(e))


def _cancel_class(reason):
    # PyThreadState_SetAsyncExc takes a class: one whose instances carry
    # the reason.
    return type("Cancelled", (Cancelled,), {"__init__": lambda self, *a: Cancelled.__init__(self, reason)})


def _truncate(fe):
    def cut(s, n):
        b = s.encode("utf-8", "replace")
        if len(b) <= n:
            return s
        return b[:n].decode("utf-8", "ignore") + "…"
    fe["msg"] = cut(fe.get("msg", ""), MAX_ERROR_MSG)
    if "backtrace" in fe:
        fe["backtrace"] = cut(fe["backtrace"], MAX_BACKTRACE)
    if "file" in fe:
        fe["file"] = cut(fe["file"], 256)
    return fe


def valid_name(n):
    return isinstance(n, str) and n != "" and "/" not in n and not n.startswith(".") and "\x00" not in n and len(n) <= 255


def unpack_files(entries, body):
    """Splits body by entries as proto.UnpackFiles does."""
    if not isinstance(entries, list) or len(entries) > 64:
        raise ProtocolError("bundle has too many files")
    files = {}
    off = 0
    for e in entries:
        if not isinstance(e, dict):
            raise ProtocolError("bad file entry")
        name, size = e.get("name"), e.get("size")
        if not valid_name(name):
            raise ProtocolError("bundle file name %r is not allowed" % (name,))
        if name in files:
            raise ProtocolError("bundle file %r appears twice" % name)
        if not isinstance(size, int) or size < 0 or size > len(body) - off:
            raise ProtocolError("bundle file %r: size %r exceeds the data sent" % (name, size))
        files[name] = body[off:off + size]
        off += size
    if off != len(body):
        raise ProtocolError("bundle: %d bytes of data follow the last file" % (len(body) - off))
    return files


def encode_value(v):
    """A return value as output: str and bytes as they are, anything else
    as JSON."""
    if isinstance(v, str):
        return v.encode("utf-8")
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v)
    import json
    return json.dumps(v, separators=(",", ":")).encode()


def as_bytes(fn, data):
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise TypeError("%s: want str or bytes, got %s" % (fn, type(data).__name__))


class _BundleFinder:
    """Imports the bundle's other .py files as top-level modules."""

    def __init__(self, d):
        self.d = d

    def find_spec(self, fullname, path=None, target=None):
        if "." not in fullname and fullname + ".py" in self.d.files:
            return ModuleSpec(fullname, self, origin=fullname + ".py")
        if fullname in ("socket", "urllib3.util.connection"):
            # Patch socket's and urllib3's connection functions once they
            # have loaded.
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    spec.loader = _PatchingLoader(spec.loader)
                    return spec
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        name = module.__name__ + ".py"
        module.__file__ = name
        module.api = API(self.d)
        exec(compile(self.d.files[name], name, "exec", dont_inherit=True), module.__dict__)


class _PatchingLoader:
    def __init__(self, inner):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        self.inner.exec_module(module)
        module.create_connection = create_connection

    def __getattr__(self, name):
        return getattr(self.inner, name)


# --- the function's output and log ---

class _LogWriter(io.TextIOBase):
    """sys.stdout and sys.stderr: whole lines go to the function's log
    (the log host call), each cut at MAX_LOG_LINE bytes."""

    def __init__(self, d, name):
        self.d = d
        self.name = name
        self.buf = ""
        self.lock = threading.Lock()

    def writable(self):
        return True

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError("write() argument must be str, not %s" % type(s).__name__)
        lines = []
        with self.lock:
            self.buf += s
            while "\n" in self.buf or len(self.buf) > MAX_LOG_LINE:
                i = self.buf.find("\n")
                if i < 0 or i > MAX_LOG_LINE:
                    lines.append(self.buf[:MAX_LOG_LINE])
                    self.buf = self.buf[MAX_LOG_LINE:]
                else:
                    lines.append(self.buf[:i])
                    self.buf = self.buf[i + 1:]
        for line in lines:
            self._emit(line)
        return len(s)

    def flush(self):
        with self.lock:
            line, self.buf = self.buf, ""
        if line:
            self._emit(line)

    def _emit(self, line):
        d = self.d
        if not d.ready:
            if d.early_log is not None and len(d.early_log) < 64:
                d.early_log.append(line[:MAX_LOG_LINE])
            return
        d.call("log", {"msg": line})


def _flush_output():
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except Exception:
            pass


# --- the bento module ---

DRIVER = None


def _d():
    return DRIVER


def send(data):
    """Sends data (str or bytes) to the invoking client; returns its length."""
    b = as_bytes("send", data)
    mb = _d().max_body()
    step = min(mb, SEND_CHUNK) if mb > 0 else SEND_CHUNK
    mv = memoryview(b)
    if not b:
        _d().call("send", None, b"")
    for i in range(0, len(b), step):
        _d().call("send", None, mv[i:i + step])
    return len(b)


def recv(timeout=None):
    """Returns the client's next input (bytes), or None at the end of its
    input or after timeout seconds."""
    d = _d()
    with d.lock:
        q = d.inputs.get(d.inv())
        if q:
            item = q.pop(0)
            return item
    args = {}
    if timeout is not None:
        args["timeout"] = float(timeout)
    res, body = d.call("recv", args)
    if res.get("eof") or res.get("timeout"):
        return None
    return body


def _poll():
    d = _d()
    inv = d.inv()
    with d.lock:
        if d.inputs.get(inv):
            return True
    res, body = d.call("recv", {"poll": True})
    if res.get("timeout"):
        return False
    with d.lock:
        d.inputs.setdefault(inv, []).append(None if res.get("eof") else body)
    return True


def log(*args):
    msg = " ".join(a if isinstance(a, str) else repr(a) for a in args)
    _d().call("log", {"msg": msg})


def time():
    return float(_d().call("time")[0].get("now", 0))


def ends_at():
    return float(_d().call("ends_at")[0].get("at", 0))


def sleep(seconds):
    if not isinstance(seconds, (int, float)) or seconds < 0:
        raise ValueError("sleep: want a non-negative number of seconds")
    _d().call("sleep", {"seconds": float(seconds)})


def random(n):
    return _d().call("random", {"n": int(n)})[1]


def exit():
    _d().call("exit")


def source(name):
    b = _d().files.get(name)
    if b is None:
        raise Error("source: no file %r in the function bundle" % name)
    return b.decode("utf-8", "replace")


def _storage_put(key, value):
    _d().call("storage.put", {"key": key}, as_bytes("storage.put", value))


def _storage_get(key):
    res, body = _d().call("storage.get", {"key": key})
    return body if res.get("found") else None


def _storage_delete(key):
    _d().call("storage.delete", {"key": key})


def _storage_keys():
    b = _d().call("storage.keys")[1]
    keys = []
    while b:
        if len(b) < 2:
            raise Error("storage.keys: truncated reply")
        n = struct.unpack(">H", b[:2])[0]
        if len(b) < 2 + n:
            raise Error("storage.keys: truncated reply")
        keys.append(b[2:2 + n].decode("utf-8", "replace"))
        b = b[2 + n:]
    return keys


class Response:
    """What http.fetch and tor.fetch return."""

    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def __repr__(self):
        return "Response(status=%d, %d bytes)" % (self.status, len(self.body))


def _fetcher(call):
    def fetch(url, method="GET", headers=None, body=None, timeout=None, raise_error=True):
        a = {"url": url, "method": method}
        if headers:
            a["headers"] = {str(k): str(v) for k, v in headers.items()}
        if timeout is not None:
            a["timeout"] = float(timeout)
        try:
            res, rbody = _d().call(call, a, as_bytes("fetch body", body) if body is not None else b"")
        except Error:
            if raise_error:
                raise
            return None
        return Response(int(res.get("status", 0)), res.get("headers") or {}, rbody)
    return fetch


class ControlReply:
    def __init__(self, res):
        self.status = int(res.get("status", 0))
        self.ok = 200 <= self.status < 300
        self.lines = list(res.get("lines") or [])
        self.data = {int(k): v for k, v in (res.get("data") or {}).items()}


def _tor_control(command):
    return ControlReply(_d().call("tor.control", {"command": command})[0])


def _tor_event(timeout=10):
    res = _d().call("tor.event", {"timeout": float(timeout)})[0]
    return ControlReply(res) if res.get("status") else None


def _tor_listen(port):
    return _d().call("tor.listen", {"port": int(port)})[0].get("onion", "")


def _tor_accept(timeout=0):
    res = _d().call("tor.accept", {"timeout": float(timeout)})[0]
    return None if res.get("timeout") else int(res.get("conn", 0))


def _stream_dial(call):
    def dial(host, port, timeout=60, raise_error=True, circuit=""):
        a = {"host": host, "port": int(port), "timeout": float(timeout)}
        if call == "tor.dial":
            a["circuit"] = circuit
        try:
            return int(_d().call(call, a)[0].get("conn", 0))
        except Error:
            if raise_error:
                raise
            return None
    return dial


def _stream_read(call):
    def read(conn, n=65536, timeout=0):
        res, body = _d().call(call, {"conn": int(conn), "n": int(n), "timeout": float(timeout)})
        if res.get("timeout"):
            return None
        return body
    return read


def _stream_write(call):
    def write(conn, data):
        _d().call(call, {"conn": int(conn)}, as_bytes("write", data))
    return write


def _stream_close(call):
    def close(conn):
        _d().call(call, {"conn": int(conn)})
    return close


def _tor_splice(a, b):
    _d().call("tor.splice", {"a": int(a), "b": int(b)})


def _remote_deploy(server, manifest, files):
    res = _d().call("bento.deploy", {"server": server, "manifest": manifest, "files": {str(k): str(v) for k, v in files.items()}})[0]
    return types.SimpleNamespace(instance=res.get("instance", ""), invocation_token=res.get("invocation_token", ""), shutdown_token=res.get("shutdown_token", ""))


def _remote_invoke(server, token, args=None, input=None):
    return _d().call("bento.invoke", {"server": server, "token": token, "args": list(args or [])},
                     as_bytes("invoke input", input) if input is not None else b"")[1]


def _remote_shutdown(server, token):
    _d().call("bento.shutdown", {"server": server, "token": token})


def _remote_choose(manifest):
    return _d().call("bento.choose", {"manifest": manifest})[0].get("server", "")


def _module(name, doc, **members):
    m = types.ModuleType(name, doc)
    m.__dict__.update(members)
    sys.modules[name] = m
    return m


def make_bento_module():
    b = _module("bento", "Bento's host API (docs/python.md).", send=send, recv=recv, log=log, time=time,
                ends_at=ends_at, sleep=sleep, random=random, exit=exit, source=source, Error=Error,
                Cancelled=Cancelled, Response=Response)
    b.__path__ = []  # a package: `from bento import storage` and `import bento.storage` work
    b.storage = _module("bento.storage", "Private key/value storage.", put=_storage_put, get=_storage_get,
                        delete=_storage_delete, keys=_storage_keys)
    b.http = _module("bento.http", "HTTP(S) through bentod's destination checks.", fetch=_fetcher("http.fetch"))
    b.tor = _module("bento.tor", "Tor through bentod's firewall.", fetch=_fetcher("tor.fetch"),
                    control=_tor_control, event=_tor_event, listen=_tor_listen, accept=_tor_accept,
                    dial=_stream_dial("tor.dial"), read=_stream_read("tor.read"), write=_stream_write("tor.write"),
                    close=_stream_close("tor.close"), splice=_tor_splice)
    b.remote = _module("bento.remote", "Functions on other Bento servers.", deploy=_remote_deploy,
                       invoke=_remote_invoke, shutdown=_remote_shutdown, choose=_remote_choose)
    b.net = _module("bento.net", "Direct TCP streams through bentod's destination checks.",
                    dial=_stream_dial("net.dial"), read=_stream_read("net.read"), write=_stream_write("net.write"),
                    close=_stream_close("net.close"))
    return b


class API:
    """The original Bento's function API, given to a function's module as
    the global `api`."""

    def __init__(self, d):
        self._d = d

    def send(self, data):
        """Sends data (str or bytes) to the client; returns its length."""
        return send(data)

    def recv(self):
        """Waits for the client's next message; b"" once its input ended."""
        b = recv()
        return b if b is not None else b""

    def poll(self):
        """Whether client input is waiting (api.recv() will not block)."""
        return _poll()


# --- the network: sockets that are checked host calls ---

_SHIM = []


def _shim_socket_class():
    """One end of a socketpair whose other end the driver relays to a
    net.* stream. TCP options (TCP_NODELAY, keep-alive) mean nothing on it
    and are ignored."""
    if not _SHIM:
        import socket

        class ShimSocket(socket.socket):
            def setsockopt(self, level, opt, *value):
                if level == socket.IPPROTO_TCP:
                    return None
                try:
                    return super().setsockopt(level, opt, *value)
                except OSError:
                    return None
        _SHIM.append(ShimSocket)
    return _SHIM[0]


_DEFAULT = object()


def create_connection(address, timeout=_DEFAULT, source_address=None, *args, **kw):
    """socket.create_connection for functions: bentod dials (net.dial,
    checked against the manifest's and the operator's destination
    policies) and the driver relays the bytes."""
    import socket
    if timeout is socket._GLOBAL_DEFAULT_TIMEOUT:
        timeout = _DEFAULT
    host, port = address[0], address[1]
    t = timeout if isinstance(timeout, (int, float)) and timeout > 0 else 30.0
    d = _d()
    inv = d.inv()
    try:
        res, _ = d.call("net.dial", {"host": str(host), "port": int(port), "timeout": float(t)})
    except Error as e:
        raise ConnectionRefusedError(errno.ECONNREFUSED, "%s:%s: %s" % (host, port, e)) from None
    conn = int(res.get("conn", 0))
    ours, theirs = socket.socketpair()
    s = _shim_socket_class()(socket.AF_UNIX, socket.SOCK_STREAM, 0, fileno=theirs.detach())
    if timeout is not _DEFAULT:
        s.settimeout(timeout)
    threading.Thread(target=_pump_up, args=(d, inv, conn, ours), daemon=True).start()
    threading.Thread(target=_pump_down, args=(d, inv, conn, ours), daemon=True).start()
    return s


def _pump_up(d, inv, conn, sock):
    d.local.inv = inv
    try:
        while True:
            b = sock.recv(65536)
            if not b:
                break
            d.call("net.write", {"conn": conn}, b, inv=inv)
    except (OSError, Error, Cancelled):
        pass
    finally:
        try:
            d.call("net.close", {"conn": conn}, inv=inv)
        except (Error, Cancelled, OSError):
            pass
        try:
            sock.close()
        except OSError:
            pass


def _pump_down(d, inv, conn, sock):
    d.local.inv = inv
    try:
        while True:
            res, body = d.call("net.read", {"conn": conn, "n": 65536, "timeout": 30.0}, inv=inv)
            if res.get("timeout"):
                continue
            if res.get("eof") or not body:
                break
            sock.sendall(body)
    except (OSError, Error, Cancelled):
        pass
    try:
        sock.shutdown(1)  # SHUT_WR
    except OSError:
        pass


def _inherit_invocation():
    """Threads a function starts during an invocation belong to it: their
    api.send reaches the same client (the original Bento's Proxy sends
    from threads of its own)."""
    start = threading.Thread.start

    def start_in_invocation(self):
        inv = getattr(DRIVER.local, "inv", 0)
        if inv:
            run = self.run

            def run_in_invocation():
                DRIVER.local.inv = inv
                run()
            self.run = run_in_invocation
        start(self)
    threading.Thread.start = start_in_invocation


def main():
    global DRIVER
    os.environ.clear()  # no proxy settings, nothing of the host
    sys.path[:] = [p for p in sys.path if p.startswith("/usr/lib/python3")] + ["/usr/lib/python3/dist-packages"]
    d = Driver(Conn(FD))
    DRIVER = d
    make_bento_module()
    _inherit_invocation()
    if "socket" in sys.modules:  # loaded at start-up after all
        sys.modules["socket"].create_connection = create_connection
    sys.stdout = _LogWriter(d, "stdout")
    sys.stderr = _LogWriter(d, "stderr")
    sys.stdin = io.StringIO("")
    try:
        d.serve()
    except (EOFError, ProtocolError) as e:
        sys.__stderr__.write("bento driver: %s\n" % e)
        os._exit(1)
    os._exit(0)


if __name__ == "__main__":
    main()
