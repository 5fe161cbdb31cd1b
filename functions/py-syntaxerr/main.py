# The error is on line 6: a call never closed.


def main():
    api.send("this line is fine\n")
    api.send("this one is not\n"
    return 0
