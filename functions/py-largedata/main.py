# One api.send of size bytes (100 MB by default) of random data; the
# driver carries it to bentod in pieces.
import os


def main(size=100 * 1000 * 1000):
    data = os.urandom(int(size))
    n = api.send(data)
    return "\nsent %d bytes\n" % n
