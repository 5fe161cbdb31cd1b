package main

import (
	"strings"
	"testing"
	"time"
)

func TestProgress(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	var b strings.Builder
	p := newProgress(&b, true, "uploading", 4<<20)
	p.nowFunc, p.start = clock, now
	p.add(100 << 10) // below progressMin: nothing yet
	if b.Len() != 0 {
		t.Fatalf("drawn below %d bytes: %q", progressMin, b.String())
	}
	now = now.Add(time.Second)
	p.add(1948 << 10) // half
	p.add(1 << 10)    // within 100 ms: not redrawn
	now = now.Add(time.Second)
	p.add(2047 << 10) // all of it: drawn at once
	p.finish()
	got := b.String()
	want := "\r\x1b[Kbento: uploading [###############               ]  50% 2 MB of 4 MB, 2 MB/s" +
		"\r\x1b[Kbento: uploading [##############################] 100% 4 MB of 4 MB, 2 MB/s" +
		"\r\x1b[Kbento: uploading [##############################] 100% 4 MB of 4 MB, 2 MB/s\n"
	if got != want {
		t.Errorf("progress:\n%q\nwant\n%q", got, want)
	}
	// A download: bytes and rate, no total.
	b.Reset()
	d := newProgress(&b, true, "received", 0)
	d.nowFunc, d.start = clock, now.Add(-2*time.Second)
	d.add(3 << 20)
	d.finish()
	if !strings.Contains(b.String(), "bento: received 3 MB, 1 MB/s") {
		t.Errorf("download progress: %q", b.String())
	}
	// Off (not a terminal, or --json): nothing, ever.
	b.Reset()
	off := newProgress(&b, false, "uploading", 1<<30)
	off.add(1 << 30)
	off.finish()
	if b.Len() != 0 {
		t.Errorf("progress drawn while off: %q", b.String())
	}
}
