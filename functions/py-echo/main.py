# Echoes every message the client sends until one is "stop", polling for
# input between waits as an interactive function would.
import time


def main():
    echoed = 0
    while True:
        if not api.poll():
            time.sleep(0.05)
            continue
        msg = api.recv()
        if msg == b"":
            return "input ended after %d messages\n" % echoed
        for line in msg.split(b"\n"):
            if line.strip() == b"stop":
                return "stopped after %d messages\n" % echoed
            if line:
                api.send(b"echo: " + line + b"\n")
                echoed += 1
