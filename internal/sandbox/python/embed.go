// Package python holds the python image's driver (driver.py): the program
// Debian's CPython runs in each python container, speaking the host API on
// fd 3 as bento-runner does (docs/python.md). bentod writes it into the
// containers' root; bento dev runs it on the author's machine.
package python

import _ "embed"

// Driver is driver.py's source.
//
//go:embed driver.py
var Driver []byte
