# A hostile python function: each attack named by the invocation's
# argument tries to leave the sandbox or exhaust it, and reports what
# happened (e2e TestPythonImage, docs/SECURITY.md).
import os
import socket
import subprocess
import threading


def _try(name, f):
    try:
        got = f()
    except BaseException as e:
        return "%s: %s: %s\n" % (name, type(e).__name__, e)
    return "%s: succeeded: %r\n" % (name, got)


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _threads():
    n = 0
    stop = threading.Event()
    try:
        while n < 10000:
            threading.Thread(target=stop.wait, daemon=True).start()
            n += 1
    finally:
        stop.set()
    return n


def _lease():
    # A write lease on a file its user owns: with a rootless bentod that
    # user owns the shared root (/bento-runner, /bento/driver.py), and
    # the lease would stall every other container's start for 45 s. Here
    # a file of its own /tmp stands for them.
    import fcntl
    with open("/tmp/lease", "wb"):
        pass
    with open("/tmp/lease", "rb") as f:
        return fcntl.fcntl(f, fcntl.F_SETLEASE, fcntl.F_WRLCK)


def _oob():
    # Out-of-band data on an AF_UNIX socket: the kernel's path of
    # CVE-2025-38236.
    a, b = socket.socketpair()
    try:
        return a.send(b"!", socket.MSG_OOB)
    finally:
        a.close()
        b.close()


# Counters of the whole host's activity, which no namespace divides:
# softirqs counts the relay's packets per CPU as they come.
HOST_COUNTERS = ["/proc/softirqs", "/proc/vmstat", "/proc/zoneinfo", "/proc/buddyinfo",
                 "/proc/pressure/cpu", "/proc/pressure/io", "/proc/locks", "/proc/swaps",
                 "/proc/sys/fs/file-nr", "/proc/sys/fs/inode-nr", "/proc/sys/fs/dentry-state",
                 "/proc/loadavg", "/proc/meminfo", "/proc/stat", "/proc/uptime", "/proc/interrupts"]


class Contained(Exception):
    pass


def _sysinfo():
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(128)
    if libc.sysinfo(buf) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return int.from_bytes(buf.raw[:8], "little")  # uptime


def _hostinfo():
    leaked = []
    for p in HOST_COUNTERS:
        try:
            if _read(p).strip():
                leaked.append(p)
        except OSError:
            pass
    try:
        leaked.append("sysinfo: up %d s" % _sysinfo())
    except OSError:
        pass
    if leaked:
        return leaked
    raise Contained("nothing of the host's activity is readable")


def _scmrights():
    # A descriptor sent over an AF_UNIX socket (to itself: a cycle for
    # the kernel's garbage collector).
    a, b = socket.socketpair()
    try:
        return socket.send_fds(a, [b"x"], [a.fileno(), b.fileno()])
    finally:
        a.close()
        b.close()


ATTACKS = {
    "fork": lambda: os.fork(),
    "subprocess": lambda: subprocess.run(["/usr/bin/python3", "-c", "print(1)"], capture_output=True),
    "spawn": lambda: os.posix_spawn("/usr/bin/python3", ["python3", "-c", "1"], {}),
    "passwd": lambda: _read("/etc/passwd"),
    "environ": lambda: _read("/proc/self/environ"),
    "root": lambda: os.listdir("/root"),
    "writeroot": lambda: open("/usr/lib/evil", "w"),
    "exec": lambda: os.execv("/bin/sh", ["sh", "-c", "id"]),
    "hostroot": lambda: sorted(os.listdir("/")),
    "raw": lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0),
    "inet": lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM),
    "inet6": lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM),
    "netlink": lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0),
    "connect": lambda: socket.create_connection(("127.0.0.1", 22), timeout=2),
    "lease": _lease,
    "oob": _oob,
    "hostinfo": _hostinfo,
    "scmrights": _scmrights,
    "threads": _threads,
}


def main(attack):
    if attack == "membomb":
        hog = []
        while True:
            hog.append(bytearray(16 << 20))
    if attack == "cpubomb":
        while True:
            pass
    if attack == "flood":
        chunk = b"x" * 65536
        while True:
            api.send(chunk)
    return _try(attack, ATTACKS[attack])
