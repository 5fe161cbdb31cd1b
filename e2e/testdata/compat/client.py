# A client of the original Bento's protocol (breakerspace/bento, branch
# main) in Python, framing its requests and reading its answers as the
# original's client library does: struct ">BI" requests, ">BBI"
# responses, ">BI" messages carrying the 36-character function id, and
# json.dumps payloads. Written for TestCompat; usage:
#
#   python3 client.py HOST PORT FILE
import json
import socket
import struct
import sys


def recv_exact(conn, n):
    data = bytearray()
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("connection closed")
        data.extend(chunk)
    return bytes(data)


def request(conn, kind, payload):
    conn.sendall(struct.pack(">BI", kind, len(payload)) + payload)


def response(conn):
    kind, err, n = struct.unpack(">BBI", recv_exact(conn, 6))
    return kind, err, recv_exact(conn, n).decode()


def message(conn):
    kind, n = struct.unpack(">BI", recv_exact(conn, 5))
    data = recv_exact(conn, n)
    return kind, data[:36].decode(), data[36:]


def main():
    host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    conn = socket.create_connection((host, port), timeout=30)
    with open(path) as f:
        code = f.read()
    request(conn, 0x0, json.dumps({"name": "echo", "code": code}).encode())
    kind, err, token = response(conn)
    assert (kind, err) == (0x0, 0), token
    call = "echo('py', 7, {'k': ['client']})"
    request(conn, 0x1, json.dumps({"call": call, "token": token}).encode())
    kind, err, fid = response(conn)
    assert (kind, err) == (0x1, 0), fid
    request(conn, 0x2, fid.encode())
    seen = []
    for send in (b"ping", b"stop", None, None):
        kind, mid, data = message(conn)
        assert mid == fid, (mid, fid)
        seen.append("%d:%s" % (kind, data.decode()))
        if send is not None:
            conn.sendall(struct.pack(">BI", 0x7, 36 + len(send)) + fid.encode() + send)
    request(conn, 0x3, fid.encode())
    print("|".join(seen))


if __name__ == "__main__":
    main()
