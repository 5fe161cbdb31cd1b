# Greets whoever invokes it, as the original Bento's hello function does:
# through the api object Bento gives the function's module.


def main(name="world"):
    api.send("hello, %s!\n" % name)
    return "sent from a Python function\n"
