package main

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/torbento/bento/client"
)

// progress draws one line on a terminal (stderr), redrawn in place at
// most ten times a second: an upload's share sent, or a download's bytes
// and rate. It draws nothing unless enabled.
type progress struct {
	w       io.Writer
	on      bool
	label   string
	total   int64 // 0: unknown (a download)
	mu      sync.Mutex
	done    int64
	start   time.Time
	last    time.Time
	drawn   bool
	nowFunc func() time.Time
}

// progressMin is the least an upload or download must be before a bar is
// worth drawing.
const progressMin = 256 << 10

func newProgress(w io.Writer, on bool, label string, total int64) *progress {
	p := &progress{w: w, on: on, label: label, total: total, nowFunc: time.Now}
	p.start = p.nowFunc()
	return p
}

// add counts n more bytes and redraws when it is time.
func (p *progress) add(n int) {
	if !p.on {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done += int64(n)
	now := p.nowFunc()
	if p.done < progressMin && !p.drawn || now.Sub(p.last) < 100*time.Millisecond && (p.total == 0 || p.done < p.total) {
		return
	}
	p.last = now
	p.drawn = true
	fmt.Fprintf(p.w, "\r\x1b[K%s", p.line(now))
}

// finish ends the line, if one was drawn.
func (p *progress) finish() {
	if !p.on {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.drawn {
		fmt.Fprintf(p.w, "\r\x1b[K%s\n", p.line(p.nowFunc()))
	}
}

func (p *progress) line(now time.Time) string {
	rate := ""
	if el := now.Sub(p.start).Seconds(); el > 0.2 {
		rate = fmt.Sprintf(", %s/s", size(int64(float64(p.done)/el)))
	}
	if p.total <= 0 {
		return fmt.Sprintf("bento: %s %s%s", p.label, size(p.done), rate)
	}
	frac := min(float64(p.done)/float64(p.total), 1)
	const width = 30
	fill := int(frac * width)
	return fmt.Sprintf("bento: %s [%s%s] %3.0f%% %s of %s%s", p.label, strings.Repeat("#", fill), strings.Repeat(" ", width-fill), frac*100, size(p.done), size(p.total), rate)
}

// uploadProgress shows an upload's progress on stderr when stderr is a
// terminal (and not with --json), and is otherwise silent.
func (c *cli) uploadProgress(cl *client.Client, fn *client.Function) *progress {
	var total int64 = int64(len(fn.Manifest))
	for _, b := range fn.Files {
		total += int64(len(b))
	}
	p := newProgress(c.stderr, c.stderrTerminal && !c.json, "uploading", total)
	cl.OnSent = p.add
	return p
}
