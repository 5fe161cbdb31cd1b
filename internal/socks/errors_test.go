package socks

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	p := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(p, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (run go test -update to write it)", err)
	}
	if got != string(want) {
		t.Errorf("output differs from %s (go test -update rewrites it):\n--- got\n%s--- want\n%s", p, got, want)
	}
}

// allCodes are the codes tor sends (socks5_status.h), and an unknown one.
var allCodes = []byte{0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0xF0, 0xF1, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7, 0x2A}

func TestErrorMessages(t *testing.T) {
	var b strings.Builder
	onion := "vww6ybal4bd7szmgncyruucpgfkqahzddi37ktceo3ah7ngmcopnpyyd.onion:8888"
	for _, code := range allCodes {
		for _, target := range []string{onion, "example.com:8888"} {
			e := &Error{Code: code, Target: target}
			msg := e.Error()
			if strings.Contains(msg, "does not send") != (code == 0x2A) {
				t.Errorf("code 0x%02X: %s", code, msg)
			}
			if !strings.Contains(msg, target) || !strings.Contains(msg, fmt.Sprintf("0x%02X", code)) {
				t.Errorf("code 0x%02X: the message names neither target nor code: %s", code, msg)
			}
			fmt.Fprintf(&b, "%s\n", msg)
		}
	}
	golden(t, "errors.golden", b.String())
}

func TestTransient(t *testing.T) {
	onion := "vww6ybal4bd7szmgncyruucpgfkqahzddi37ktceo3ah7ngmcopnpyyd.onion:8888"
	transient := map[byte]bool{0xF0: true, 0xF2: true, 0xF7: true}
	for _, code := range allCodes {
		for _, target := range []string{onion, "VWW6YBAL4BD7SZMGNCYRUUCPGFKQAHZDDI37KTCEO3AH7NGMCOPNPYYD.ONION:1", "example.com:8888", "10.0.0.1:8888"} {
			want := transient[code] || code == CodeHostUnreachable && strings.Contains(strings.ToLower(target), ".onion")
			if got := (&Error{Code: code, Target: target}).Transient(); got != want {
				t.Errorf("code 0x%02X to %s: Transient() = %v, want %v", code, target, got, want)
			}
		}
	}
}
