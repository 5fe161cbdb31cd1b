package compat

import (
	"bytes"
	"net"
	"testing"

	proto "github.com/torbento/bento/internal/compat"
)

// The JSON is Python's json.dumps's, byte for byte.
func TestPythonJSON(t *testing.T) {
	got := string(asciiJSON([][2]string{{"name", "héllo"}, {"code", "def f():\n\treturn '<a & \"b\">' + '😀'\n"}}))
	want := `{"name": "h\u00e9llo", "code": "def f():\n\treturn '<a & \"b\">' + '\ud83d\ude00'\n"}`
	if got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
}

func TestConversation(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	c := New(a)
	go func() {
		r := proto.NewReader(b, false)
		f, _ := r.Read()
		if f.Type == proto.TStore {
			b.Write(proto.AppendResponse(nil, proto.TStore, false, []byte("tok")))
		}
		f, _ = r.Read()
		b.Write(proto.AppendResponse(nil, f.Type, true, []byte("invalid token")))
		f, _ = r.Read()
		b.Write(proto.AppendMessage(nil, proto.MOutput, string(f.Payload), []byte("out")))
		b.Close()
	}()
	if tok, err := c.Store("f", "code"); err != nil || tok != "tok" {
		t.Fatalf("store: %q %v", tok, err)
	}
	if _, err := c.Execute("f()", "bad"); err == nil || err.Error() != "server: invalid token" {
		t.Fatalf("execute: %v", err)
	}
	id := "0123456789abcdef0123456789abcdef0123"
	c.Open(id)
	data, typ, err := c.RecvOutput()
	if err != nil || typ != Output || !bytes.Equal(data, []byte("out")) {
		t.Fatalf("recv: %q %d %v", data, typ, err)
	}
	if _, _, err := c.RecvOutput(); err == nil {
		t.Fatal("recv after the server closed: no error")
	}
}
