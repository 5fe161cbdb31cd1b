package main

import (
	"bytes"
	"github.com/torbento/bento/internal/testutil"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/torbento/bento/internal/proto"
	"github.com/torbento/bento/internal/wire"
)

// TestErrorsTable runs every row of docs/errors.md marked unit with the
// real command line, and checks its message and exit status; a row
// without a case here, or a case without a row, fails.
func TestErrorsTable(t *testing.T) {
	fn := func(t *testing.T, manifest, code string) string {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "bento.toml"), []byte(manifest), 0o644)
		os.WriteFile(filepath.Join(dir, "main.star"), []byte(code), 0o644)
		return dir
	}
	closedPort := func(t *testing.T) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		return addr
	}
	const server = "127.0.0.1:9" // never contacted by these rows
	cases := map[string]func(t *testing.T) []string{
		"unknown-command":  func(t *testing.T) []string { return []string{"frobnicate"} },
		"misspelt-command": func(t *testing.T) []string { return []string{"deplyo"} },
		"missing-argument": func(t *testing.T) []string { return []string{"deploy", server} },
		"unknown-flag":     func(t *testing.T) []string { return []string{"invoke", server, "bento-inv-x", "-1"} },
		"bad-flag-value":   func(t *testing.T) []string { return []string{"policy", server, "--timeout", "5"} },
		"not-a-function":   func(t *testing.T) []string { return []string{"deploy", server, t.TempDir()} },
		"bad-manifest": func(t *testing.T) []string {
			return []string{"check", fn(t, "name = \"a\"\napis = [\"send\", \"exec\"]\n", "def main():\n    pass\n")}
		},
		"code-does-not-compile": func(t *testing.T) []string {
			return []string{"check", fn(t, "name = \"a\"\n", "def main():\n    return 1 +\n")}
		},
		"undefined-name": func(t *testing.T) []string {
			return []string{"check", fn(t, "name = \"a\"\n", "def main():\n    return nope\n")}
		},
		"policy-check-code": func(t *testing.T) []string {
			return []string{"policy", server, "--check", fn(t, "name = \"a\"\n", "def main(:\n")}
		},
		"shutdown-token-to-invoke":     func(t *testing.T) []string { return []string{"invoke", server, "bento-sd-x"} },
		"invocation-token-to-shutdown": func(t *testing.T) []string { return []string{"shutdown", server, "bento-inv-x"} },
		"server-unreachable":           func(t *testing.T) []string { return []string{"policy", closedPort(t)} },
		"cleartext-refused":            func(t *testing.T) []string { return []string{"policy", "192.0.2.1:8888"} },
		"compat-pin": func(t *testing.T) []string {
			return []string{"compat", server + "#sha256:0000000000000000000000000000000000000000000000000000000000000000", "f.py", "f()"}
		},
		"bad-pin": func(t *testing.T) []string { return []string{"policy", "192.0.2.1:8888#sha256:0123"} },
		"pin-onion": func(t *testing.T) []string {
			return []string{"policy", "2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wid.onion:8888#sha256:" + strings.Repeat("ab", 32)}
		},
		"pin-mismatch": func(t *testing.T) []string {
			return []string{"policy", startPolicyServer(t).addr + "#sha256:" + strings.Repeat("ab", 32)}
		},
		"invocation-token-to-update": func(t *testing.T) []string { return []string{"update", server, "bento-inv-x", t.TempDir()} },
		"store-unknown-instance": func(t *testing.T) []string {
			withStateDir(t)
			return []string{"forget", "i-nope"}
		},
		"store-damaged": func(t *testing.T) []string {
			path := withStateDir(t)
			os.MkdirAll(filepath.Dir(path), 0o700)
			os.WriteFile(path, []byte("{nonsense"), 0o600)
			return []string{"ls"}
		},
		"server-too-old": func(t *testing.T) []string { return []string{"logs", oldServer(t), "bento-inv-x"} },
		"new-not-empty": func(t *testing.T) []string {
			return []string{"new", fn(t, "name = \"a\"\n", "")}
		},
		"new-unknown-template": func(t *testing.T) []string {
			return []string{"new", filepath.Join(t.TempDir(), "x"), "--template", "nope"}
		},
		"dev-refused": func(t *testing.T) []string {
			return []string{"dev", fn(t, "name = \"greedy\"\n[resources]\nmemory = \"1 GB\"\n", "def main():\n    pass\n")}
		},
		"dev-bad-policy": func(t *testing.T) []string {
			return []string{"dev", "--policy", filepath.Join(t.TempDir(), "nope"), fn(t, "name = \"a\"\n", "def main():\n    pass\n")}
		},
		"dev-bad-storage": func(t *testing.T) []string {
			file := filepath.Join(t.TempDir(), "file")
			os.WriteFile(file, nil, 0o644)
			return []string{"dev", "--storage", file, fn(t, "name = \"a\"\n", "def main():\n    pass\n")}
		},
		"dev-fails-to-load": func(t *testing.T) []string {
			return []string{"dev", fn(t, "name = \"a\"\n", "x = 1 // 0\ndef main():\n    pass\n")}
		},
		"dev-not-emulated": func(t *testing.T) []string {
			rc := filepath.Join(t.TempDir(), "bentorc")
			os.WriteFile(rc, []byte("AllowAPI tor.fetch\nTorSocksPort 127.0.0.1:9\nDestinationPolicy accept 127.0.0.1:80\n"), 0o644)
			return []string{"dev", "--policy", rc, fn(t, "name = \"a\"\napis = [\"tor.fetch\"]\ndestinations = [\"accept 127.0.0.1:80\"]\n", "def main():\n    tor.fetch(\"http://127.0.0.1/\")\n")}
		},
		"shard-too-few-boxes": func(t *testing.T) []string {
			return []string{"shard", "put", tempFile(t, "x"), "-n", "3", "--boxes", "127.0.0.1:9,127.0.0.2:9"}
		},
		"shard-same-box": func(t *testing.T) []string {
			return []string{"shard", "put", tempFile(t, "x"), "--boxes", "127.0.0.1:9,127.0.0.2:9,127.0.0.1:9"}
		},
		"shard-manifest-exists": func(t *testing.T) []string {
			f := tempFile(t, "x")
			os.WriteFile(f+".shard", nil, 0o600)
			return []string{"shard", "put", f, "--boxes", "127.0.0.1:9,127.0.0.2:9"}
		},
		"shard-share-too-large": func(t *testing.T) []string {
			f := tempFile(t, "")
			os.Truncate(f, 17<<20) // sparse
			return []string{"shard", "put", f, "-k", "1", "--boxes", "127.0.0.1:9,127.0.0.2:9"}
		},
		"shard-get-onto-manifest": func(t *testing.T) []string {
			m := shardManifest(t, "127.0.0.1:9", "127.0.0.2:9", "127.0.0.3:9")
			return []string{"shard", "get", m, "-o", m}
		},
		"shard-put-fails": func(t *testing.T) []string {
			return []string{"shard", "put", tempFile(t, "x"), "--boxes", closedPort(t) + "," + closedPort(t) + "," + closedPort(t)}
		},
		"shard-bad-manifest": func(t *testing.T) []string {
			return []string{"shard", "get", tempFile(t, `{"version": 1, "n": 300}`), "-o", filepath.Join(t.TempDir(), "out")}
		},
		"shard-too-few": func(t *testing.T) []string {
			return []string{"shard", "get", shardManifest(t, closedPort(t), closedPort(t), closedPort(t)), "-o", filepath.Join(t.TempDir(), "out")}
		},
	}
	seen := map[string]bool{}
	for _, row := range testutil.ErrorRows(t, "errors.md") {
		if row.Test != "unit" {
			continue
		}
		seen[row.ID] = true
		mk, ok := cases[row.ID]
		if !ok {
			t.Errorf("docs/errors.md row %s has no case in TestErrorsTable", row.ID)
			continue
		}
		t.Run(row.ID, func(t *testing.T) {
			args := mk(t)
			var out, errb bytes.Buffer
			code := run(args, strings.NewReader(""), &out, &errb)
			if code != row.Exit || !testutil.MessageIn(errb.String(), row.Message) {
				t.Errorf("bento %s: exit %d, stderr:\n%s\nwant exit %d and a line %q", strings.Join(args, " "), code, errb.String(), row.Exit, row.Message)
			}
			// With --json where it is taken, the same message as JSON.
			if args[0] == "check" || args[0] == "policy" {
				errb.Reset()
				if code := run(append(args, "--json"), strings.NewReader(""), &out, &errb); code != row.Exit || !strings.HasPrefix(errb.String(), `{"code":`+strconv.Itoa(row.Exit)+`,"error":`) {
					t.Errorf("bento %s --json: exit %d, stderr %q", strings.Join(args, " "), code, errb.String())
				}
			}
		})
	}
	for id := range cases {
		if !seen[id] {
			t.Errorf("TestErrorsTable case %s is not a unit row of docs/errors.md", id)
		}
	}
}

// oldServer is a server that speaks bentod 0.2's protocol: a welcome
// without features (and nothing else).
func oldServer(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				conn := wire.NewConn(c)
				if f, err := conn.Read(); err == nil {
					f.Release()
					conn.Send(proto.TWelcome, proto.Welcome{Version: 1, Server: "bentod/0.2"}, nil)
				}
				if f, err := conn.Read(); err == nil {
					f.Release()
					conn.Send(proto.TError, proto.Error{Code: proto.CodeBadRequest, Message: "unexpected frame type"}, nil)
				}
			}()
		}
	}()
	return ln.Addr().String()
}
