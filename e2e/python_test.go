package e2e

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/torbento/bento/client"
	"github.com/torbento/bento/internal/testutil"
)

// pythonPolicy offers the python image beside Starlark, with room for
// the 100 MB output of py-largedata and a loopback destination for the
// Browser.
const pythonPolicy = "Image starlark, python\nAllowAPI send,recv,log,time,sleep,random,storage,exit,net\nDestinationPolicy accept 127.0.0.1:*\nMaxMemory 384 MB\nMaxCPU 1\nMaxOutput 128 MB\nMaxInFlight 600 MB\nMaxDaemonMemory 2 GB\nTotalCPU 4\n"

// needPython fails under CI and skips elsewhere without Debian's python3
// and python3-requests (bash scripts/setup.sh --test installs them).
func needPython(t *testing.T) {
	t.Helper()
	for _, p := range []string{"/usr/bin/python3", "/usr/lib/python3/dist-packages/requests"} {
		if _, err := os.Stat(p); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s is missing: bash scripts/setup.sh --test installs python3 and python3-requests", p)
			}
			t.Skipf("%s is missing (bash scripts/setup.sh --test installs it)", p)
		}
	}
}

// pyFunction writes a python function (bento.toml, main.py) to a
// temporary directory.
func pyFunction(t *testing.T, manifest, code string) string {
	t.Helper()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "bento.toml"), []byte(manifest), 0o644)
	os.WriteFile(filepath.Join(dir, "main.py"), []byte(code), 0o644)
	return dir
}

// TestPythonImage runs the original Bento's test functions, written in its
// API for the python image (functions/py-*), through the real binaries,
// and the hostile python function's attacks: each contained. One bentod.
func TestPythonImage(t *testing.T) {
	needPython(t)
	d := startBentod(t, pythonPolicy)

	t.Run("hello", func(t *testing.T) {
		start := time.Now()
		r := bento(t, "", "run", d.Addr, fn("py-hello"), "ann")
		if r.Code != 0 || r.Stdout != "hello, ann!\nsent from a Python function\n" {
			t.Fatalf("py-hello: %s", r)
		}
		t.Logf("deploy and first invocation in %v", time.Since(start).Round(time.Millisecond))
	})

	t.Run("syntax-error", func(t *testing.T) {
		r := bento(t, "", "deploy", d.Addr, fn("py-syntaxerr"))
		if r.Code == 0 || !strings.Contains(r.Stderr, "main.py:6:") || !strings.Contains(r.Stderr, "SyntaxError") {
			t.Fatalf("py-syntaxerr deployed, or without its line: %s", r)
		}
	})

	t.Run("runtime-error", func(t *testing.T) {
		dir := pyFunction(t, "name = \"boom\"\nimage = \"python\"\napis = [\"send\"]\n", "def helper(x):\n    return {}[x]\n\n\ndef main():\n    api.send('before\\n')\n    return helper('missing')\n")
		r := bento(t, "", "run", d.Addr, dir)
		if r.Code != 1 || r.Stdout != "before\n" || !strings.Contains(r.Stderr, "main.py:2:") || !strings.Contains(r.Stderr, "KeyError: 'missing'") {
			t.Fatalf("a runtime error: %s", r)
		}
	})

	t.Run("periodic-reattach", func(t *testing.T) {
		// Output comes while the function runs and survives a disconnect:
		// the rest is read after reattaching, nothing lost or repeated.
		dep := deployCLI(t, d, fn("py-periodic"))
		cl := client.New(d.Addr)
		s, err := cl.Invoke(ctx(t), dep.InvocationToken, 8, 0.2)
		if err != nil {
			t.Fatal(err)
		}
		var got []byte
		start := time.Now()
		for !bytes.Contains(got, []byte("tick 1\n")) {
			data, exit, err := s.Recv()
			if err != nil || exit != nil {
				t.Fatalf("early end: %v %v", exit, err)
			}
			got = append(got, data...)
		}
		if time.Since(start) > 5*time.Second {
			t.Errorf("the first ticks took %v: output is not streamed", time.Since(start))
		}
		offset := s.Offset
		s.Close()
		time.Sleep(500 * time.Millisecond)
		r := bento(t, "", "attach", d.Addr, dep.InvocationToken, s.ID, "--offset", fmt.Sprint(offset))
		if r.Code != 0 {
			t.Fatalf("attach: %s", r)
		}
		got = append(got, r.Stdout...)
		var want strings.Builder
		for i := 0; i < 8; i++ {
			fmt.Fprintf(&want, "tick %d\n", i)
		}
		want.WriteString("done after 8 ticks\n")
		if string(got) != want.String() {
			t.Fatalf("output after reattach:\n%q\nwant\n%q", got, want.String())
		}
	})

	t.Run("echo-until-stop", func(t *testing.T) {
		r := bento(t, "one\ntwo\nstop\nnever\n", "run", "-i", d.Addr, fn("py-echo"))
		if r.Code != 0 || !strings.HasPrefix(r.Stdout, "echo: one\necho: two\n") || !strings.HasSuffix(r.Stdout, "stopped after 2 messages\n") || strings.Contains(r.Stdout, "never") {
			t.Fatalf("py-echo: %s", r)
		}
	})

	t.Run("100MB", func(t *testing.T) {
		start := time.Now()
		out := filepath.Join(t.TempDir(), "out")
		f, err := os.Create(out)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(filepath.Join(testutil.Binaries(t), "bento"), "run", d.Addr, fn("py-largedata"))
		var errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = f, &errb
		err = cmd.Run()
		f.Close()
		if err != nil {
			t.Fatalf("py-largedata: %v: %s", err, errb.String())
		}
		st, _ := os.Stat(out)
		const want = 100*1000*1000 + len("\nsent 100000000 bytes\n")
		if st.Size() != int64(want) {
			t.Fatalf("py-largedata sent %d bytes, want %d: %s", st.Size(), want, errb.String())
		}
		t.Logf("100 MB in %v", time.Since(start).Round(time.Millisecond))
	})

	t.Run("browser", func(t *testing.T) {
		page := bytes.Repeat([]byte("<p>a page fetched through bentod</p>\n"), 200)
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(page) })}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
		port := ln.Addr().(*net.TCPAddr).Port
		// The shipped Browser, its destinations narrowed to this page.
		m := strings.Replace(mustRead(t, filepath.Join(fn("py-browser"), "bento.toml")), `destinations = ["accept *:80", "accept *:443"]`, fmt.Sprintf(`destinations = ["accept 127.0.0.1:%d"]`, port), 1)
		dir := pyFunction(t, m, mustRead(t, filepath.Join(fn("py-browser"), "main.py")))
		r := bento(t, "", "run", d.Addr, dir, fmt.Sprintf("http://127.0.0.1:%d/index.html", port), "65536")
		if r.Code != 0 {
			t.Fatalf("py-browser: %s", r)
		}
		out := []byte(r.Stdout)
		if len(out) != 65536 {
			t.Fatalf("py-browser sent %d bytes, want them padded to 65536", len(out))
		}
		n := binary.BigEndian.Uint32(out)
		zr, err := zlib.NewReader(bytes.NewReader(out[4 : 4+n]))
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(zr)
		if err != nil || !bytes.Equal(got, page) {
			t.Fatalf("the page unpacked: %v, %d bytes, want %d", err, len(got), len(page))
		}
		// A destination the manifest does not accept: requests fails with
		// bentod's refusal.
		other, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer other.Close()
		r = bento(t, "", "run", d.Addr, dir, "http://127.0.0.1:"+strconv.Itoa(other.Addr().(*net.TCPAddr).Port)+"/", "0")
		if r.Code != 1 || !strings.Contains(r.Stderr, "rejected by the manifest's destinations") || !strings.Contains(r.Stderr, "main.py:13:") {
			t.Fatalf("py-browser outside its destinations: %s", r)
		}
	})
}
