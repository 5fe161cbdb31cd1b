# Sends a numbered line every interval seconds, count times: output that
# reaches the client while the function still runs, and survives a
# disconnect (reattach and nothing is lost).
import time


def main(count=5, interval=0.5):
    for i in range(int(count)):
        api.send("tick %d\n" % i)
        time.sleep(float(interval))
    return "done after %d ticks\n" % int(count)
