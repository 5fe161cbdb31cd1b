package torlink

import (
	"io"
	"log/slog"
	"testing"

	"github.com/torbento/bento/internal/policy"
	"github.com/torbento/bento/internal/torctl"
)

func event(text string) *torctl.Reply {
	return &torctl.Reply{Status: 650, Lines: []torctl.Line{{Status: 650, Sep: ' ', Text: text}}}
}

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// TestWaitUploaded: a service is announced only when every HSDir tor
// started uploading to has answered and one took the descriptor.
func TestWaitUploaded(t *testing.T) {
	p := policy.Default()
	p.TorControlPort = "127.0.0.1:9051"
	l, err := New(p, "127.0.0.1:8888", "127.0.0.1:8888", slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	var seen []string
	l.Subscribe([]string{"CIRC"}, func(r *torctl.Reply) { seen = append(seen, r.Lines[0].Text) })
	id := "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyz2345"
	ch := l.WaitUploaded(id)
	for _, e := range []string{
		"HS_DESC UPLOAD " + id + " UNKNOWN $AAAA~a DESCID",
		"HS_DESC UPLOAD " + id + " UNKNOWN $BBBB~b DESCID",
		"HS_DESC UPLOAD " + id + " UNKNOWN $CCCC~c DESCID",
		"HS_DESC UPLOADED " + id + " UNKNOWN $AAAA~a",
		"HS_DESC FAILED " + id + " UNKNOWN $BBBB~b REASON=UPLOAD_REJECTED",
		"HS_DESC UPLOADED otherserviceotherserviceotherserviceotherserviceotherse UNKNOWN $CCCC~c",
	} {
		l.dispatch(event(e))
		if closed(ch) {
			t.Fatalf("announced after %q, before every HSDir answered", e)
		}
	}
	l.dispatch(event("HS_DESC UPLOADED " + id + " UNKNOWN $CCCC~c"))
	if !closed(ch) {
		t.Fatal("not announced after every HSDir answered")
	}
	if len(seen) != 7 {
		t.Fatalf("subscribers saw %d events, want all 7", len(seen))
	}
	// Services no one waits for are not followed (no state kept).
	if len(l.uploads) != 0 || len(l.uploaded) != 0 {
		t.Fatalf("state left: %d uploads, %d waiters", len(l.uploads), len(l.uploaded))
	}
	ch2 := l.WaitUploaded("x")
	l.StopWaiting("x")
	if closed(ch2) || len(l.uploaded) != 0 {
		t.Fatal("StopWaiting did not forget the waiter")
	}
}
