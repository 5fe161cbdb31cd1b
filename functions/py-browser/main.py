# Browser: the client names a URL and a padding; the function fetches the
# page on this box, compresses it and pads the result with random bytes
# to a multiple of padding bytes, so that what travels back to the client
# says little about which page it was.
import os
import struct
import zlib

import requests


def main(url, padding=0):
    page = requests.get(url, timeout=10)
    page.raise_for_status()
    packed = zlib.compress(page.content)
    # The client finds the page by the length in front of it.
    framed = struct.pack(">I", len(packed)) + packed
    padding = int(padding)
    if padding > 0 and len(framed) % padding:
        framed += os.urandom(padding - len(framed) % padding)
    api.send(framed)
