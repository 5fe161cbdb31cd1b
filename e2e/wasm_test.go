package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/torbento/bento/internal/testutil"
)

// wasmPolicy offers both images, with room for Go modules (3-5 MB, which
// the runner compiles in 30-60 MB).
const wasmPolicy = "Image starlark, wasm\nMaxUploadSize 8 MB\nMaxMemory 128 MB\nMaxCPU 1\n"

// wasmFunction makes a function directory in a temporary directory: the
// manifest, and main.wasm built from src (a Go module's directory, or a C
// file) under the repository.
func wasmFunction(t testing.TB, src, manifest string) string {
	t.Helper()
	root := testutil.RepoRoot()
	dir := testutil.TempDir(t)
	out := filepath.Join(dir, "main.wasm")
	var cmd *exec.Cmd
	if strings.HasSuffix(src, ".c") {
		// Debian's clang, lld, wasi-libc and libclang-rt-dev-wasm32
		// (scripts/setup.sh --test).
		cmd = exec.Command("clang", "--target=wasm32-wasi", "-O2", "-Wall", "-Werror", "-I", filepath.Join(root, "sdk", "c"), "-o", out, filepath.Join(root, src))
	} else {
		cmd = exec.Command("go", "build", "-o", out, ".")
		cmd.Dir = filepath.Join(root, src)
		cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "GOFLAGS=-mod=mod")
	}
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building %s: %v\n%s", src, err, msg)
	}
	if err := os.WriteFile(filepath.Join(dir, "bento.toml"), []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestWasmImage deploys WebAssembly functions in Go and in C to a real
// bentod and runs the hostile wasm function's attacks against it: each
// is contained, and a neighbour keeps working. About 30 s (50 s with
// -race on a loaded machine), most of it the runner compiling the two Go
// modules (TestImageDefaults and TestDevWasm check that a policy without
// the image refuses it).
//
// It stays sequential: its compiling (seconds of both cores) in the
// parallel phase starved the tor networks there, and onion services
// there were not published in time (CI, 87b1434).
func TestWasmImage(t *testing.T) {
	d := startBentod(t, wasmPolicy+"TotalCPU 4\n")

	// The shipped Go example, built here with GOOS=wasip1.
	hello := wasmFunction(t, "functions/hello-wasm", mustRead(t, filepath.Join(fn("hello-wasm"), "bento.toml")))
	if r := bento(t, "", "check", hello); r.Code != 0 {
		t.Fatalf("bento check: %s", r)
	}
	start := time.Now()
	dep := deployCLI(t, d, hello)
	t.Logf("deployed a %d KB Go module in %v", fileSize(t, filepath.Join(hello, "main.wasm"))>>10, time.Since(start).Round(time.Millisecond))
	for i, want := range []string{"hello, ann! (greeting 1, from a wasm module)\n", "hello, bob! (greeting 2, from a wasm module)\n"} {
		name := []string{"ann", "bob"}[i]
		if r := bento(t, "", "invoke", d.Addr, dep.InvocationToken, name); r.Code != 0 || r.Stdout != want {
			t.Fatalf("invoke %d: %s, want %q", i, r, want)
		}
	}
	if r := bento(t, "", "logs", d.Addr, dep.ShutdownToken); r.Code != 0 || !strings.Contains(r.Stdout, "greeted ann") || !strings.Contains(r.Stdout, "greeted bob") {
		t.Errorf("the module's stderr is not in the instance log: %s", r)
	}

	// A second language: C with Debian's clang and wasi-libc.
	c := wasmFunction(t, "e2e/testdata/wasm/c-hello/main.c", cHelloManifest)
	cdep := deployCLI(t, d, c)
	for i, want := range []string{"hello, carol! (greeting 1, from C)\n", "hello, carol! (greeting 2, from C)\n"} {
		if r := bento(t, "", "invoke", d.Addr, cdep.InvocationToken, "carol"); r.Code != 0 || r.Stdout != want {
			t.Fatalf("C invoke %d: %s, want %q", i, r, want)
		}
	}

	// What is not a module is refused at deploy, by the runner in the
	// container (bentod compiles nothing), with the file named.
	bad := testutil.TempDir(t)
	os.WriteFile(filepath.Join(bad, "bento.toml"), []byte("name = \"bad\"\nimage = \"wasm\"\n"), 0o644)
	os.WriteFile(filepath.Join(bad, "main.wasm"), []byte("def main():\n    pass\n"), 0o644)
	if r := bento(t, "", "deploy", d.Addr, bad); r.Code == 0 || !strings.Contains(r.Stderr, "main.wasm: not a WebAssembly module") {
		t.Errorf("deploy of a non-module: %s", r)
	}

	// The attacks, one invocation each, on one service instance.
	hostile := wasmFunction(t, "e2e/testdata/wasm/hostile", `name = "hostile"
image = "wasm"
mode = "service"
apis = ["send", "log"]
[resources]
memory = "128 MB"
cpu = 1
cpu_time = "2 s"
output = "1 MB"
`)
	hdep := deployCLI(t, d, hostile)
	attacks := []imageAttack{
		{"loop", 6, "cpu time limit exceeded"},
		{"grow", 1, "fatal error: out of memory"}, // at the page limit, 60 MB
		{"flood", 6, "output limit exceeded"},
		{"read", 0, "read /etc/passwd: 0 bytes"},
		{"exec", 0, "exec: fork/exec /bin/sh: Not implemented on wasip1"},
		{"fork", 0, "fork: fork/exec /bento-runner: Not implemented on wasip1"},
		{"socket", 0, "socket: Not implemented on wasip1"},
		{"dial", 0, "dial: Not implemented on wasip1"},
		{"denied", 0, "fetch: http.fetch: "},
	}
	runImageAttacks(t, d, hdep.InvocationToken, dep.InvocationToken, attacks)
}

func mustRead(t testing.TB, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func fileSize(t testing.TB, p string) int64 {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}
