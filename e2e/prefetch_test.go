package e2e

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/torbento/bento/client"
)

// testPrefetch: the Prefetch function downloads a resource while its user
// is offline; when the connection breaks in the middle of a chunk it
// resumes with a Range request from the last byte it stored (not from the
// start), and serves the resource back, in pieces, byte for byte.
func testPrefetch(t *testing.T) {
	body := make([]byte, 1_500_000)
	rand.Read(body)
	var mu sync.Mutex
	var ranges []string
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		ranges = append(ranges, r.Header.Get("Range"))
		n := len(ranges)
		mu.Unlock()
		if n == 3 {
			// The connection breaks half-way through this chunk.
			var start, end int
			fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &start, &end)
			end = min(end, len(body)-1)
			c, brw, err := w.(http.Hijacker).Hijack()
			if err != nil {
				return
			}
			fmt.Fprintf(brw, "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes %d-%d/%d\r\nContent-Length: %d\r\n\r\n", start, end, len(body), end-start+1)
			brw.Write(body[start : start+(end-start)/2])
			brw.Flush()
			c.Close()
			return
		}
		http.ServeContent(w, r, "resource", time.Time{}, bytes.NewReader(body))
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	url := "http://" + ln.Addr().String() + "/resource"

	d := startBentod(t, "AllowAPI send,recv,log,time,sleep,random,storage,exit,http.fetch\nDestinationPolicy accept 127.0.0.1:*\nMaxLifetime 2 hours\n")
	dep := deployCLI(t, d, fn("prefetch"), "--destinations", "accept "+ln.Addr().String())
	cl := client.New(d.Addr)
	s, err := cl.Invoke(ctx(t), dep.InvocationToken, "fetch", url, 262144)
	if err != nil {
		t.Fatal(err)
	}
	s.Close() // the user goes offline; the download goes on
	var status string
	deadline := time.Now().Add(90 * time.Second)
	for !strings.Contains(status, "complete") {
		if time.Now().After(deadline) {
			t.Fatalf("not complete after 90 s: %q; requests %q", status, ranges)
		}
		time.Sleep(500 * time.Millisecond)
		out, err := cl.Call(ctx(t), dep.InvocationToken, "status")
		if err != nil {
			t.Fatal(err)
		}
		status = string(out)
	}
	if want := fmt.Sprintf("have %d of %d bytes, complete", len(body), len(body)); status != want {
		t.Errorf("status %q, want %q", status, want)
	}
	mu.Lock()
	got := append([]string(nil), ranges...)
	mu.Unlock()
	if len(got) < 4 || got[2] != got[3] || got[2] == "bytes=0-262143" || !strings.HasPrefix(got[2], "bytes=524288-") {
		t.Errorf("requests %q: want the broken third range requested again, from where the stored bytes end", got)
	}
	for _, r := range got[3:] {
		if strings.HasPrefix(r, "bytes=0-") {
			t.Errorf("the download restarted from the beginning: %q", got)
		}
	}
	// Back in pieces, at a time of the user's choosing.
	var back []byte
	for off := 0; off < len(body); off += 100_000 {
		n := min(100_000, len(body)-off)
		out, err := cl.Call(ctx(t), dep.InvocationToken, "get", off, n)
		if err != nil {
			t.Fatalf("get %d %d: %v", off, n, err)
		}
		back = append(back, out...)
	}
	if !bytes.Equal(back, body) {
		t.Fatalf("got %d bytes back, not the %d fetched", len(back), len(body))
	}
	if _, err := cl.Call(ctx(t), dep.InvocationToken, "get", len(body)-10, 20); err == nil || !strings.Contains(err.Error(), "not stored") {
		t.Errorf("get beyond the end: %v", err)
	}
}
