package v3bw

import (
	"bytes"
	"errors"
	"math"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// FuzzDecode checks that Decode and DecodeLenient never panic, agree with
// each other, return well-formed values, and that relays Decode accepts
// survive an Encode/Decode round trip.
func FuzzDecode(f *testing.F) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.v3bw"))
	if err != nil || len(files) == 0 {
		f.Fatalf("no seed files: %v", err)
	}
	for _, name := range files {
		f.Add(readTestdata(f, filepath.Base(name)))
	}
	for _, line := range torGoodLines {
		f.Add([]byte("1700000000\n" + line))
	}
	for _, tc := range torBadLines {
		f.Add([]byte("1700000000\nversion=1.5.0\n=====\n" + tc.line))
	}
	f.Add([]byte("1700000000\nversion=1.4.0\n====\nbw=1 node_id=$" + strings.Repeat("ab", 20) + " vote=0 unmeasured=1\n"))

	f.Fuzz(func(t *testing.T, b []byte) {
		strict, err := Decode(b)
		lenient, warnings, lerr := DecodeLenient(b)
		if lerr == nil {
			checkFile(t, lenient)
		} else if err == nil {
			t.Fatalf("Decode accepted what DecodeLenient rejected: %v", lerr)
		}
		if err != nil {
			var le *LineError
			if !errors.As(err, &le) && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("error %v is neither a LineError nor ErrTooLarge", err)
			}
			return
		}
		checkFile(t, strict)
		if len(warnings) != 0 || len(lenient.Relays) != len(strict.Relays) {
			t.Fatalf("strict accepted, lenient warned %v / found %d relays, strict %d",
				warnings, len(lenient.Relays), len(strict.Relays))
		}
		roundTrip(t, strict)
	})
}

func checkFile(t *testing.T, f *File) {
	t.Helper()
	if ts := f.Timestamp.Unix(); ts < 1 || ts > MaxTimestamp {
		t.Fatalf("Timestamp %d out of range", ts)
	}
	if len(f.Header) > len(f.HeaderOrder) {
		t.Fatalf("Header has %d keys, HeaderOrder %d", len(f.Header), len(f.HeaderOrder))
	}
	last := 1
	for _, r := range f.Relays {
		if !isHex40(r.NodeID) || strings.ToUpper(r.NodeID) != r.NodeID {
			t.Fatalf("line %d: NodeID %q", r.LineNo, r.NodeID)
		}
		if r.BW > MaxBW {
			t.Fatalf("line %d: BW %d", r.LineNo, r.BW)
		}
		if r.LineNo <= last {
			t.Fatalf("line numbers not increasing: %d after %d", r.LineNo, last)
		}
		last = r.LineNo
	}
}

// roundTrip turns decoded lines back into Relays, encodes them and checks
// that decoding the result gives the same relays.
func roundTrip(t *testing.T, f *File) {
	t.Helper()
	var relays []Relay
	for _, l := range f.Relays {
		if l.BW > math.MaxUint64/1000 {
			continue
		}
		r := Relay{NodeID: l.NodeID, Bandwidth: l.BW * 1000, MeasuredAt: f.Timestamp, Unmeasured: !l.Vote}
		if v := l.Keys[keyNick]; isNick(v) {
			r.Nick = v
		}
		if v := l.Keys[keyMasterKey]; isMasterKey(v) {
			r.MasterKeyEd25519 = v
		}
		if v, ok := parseDigits(l.Keys[keyMeasuredAt], MaxTimestamp); ok && v > 0 {
			r.MeasuredAt = time.Unix(int64(v), 0)
		}
		for k, v := range l.Keys {
			if isKey(k) && isValue(v) && !reservedRelayKeys[k] && !specHeaderKeys[k] {
				if r.Extra == nil {
					r.Extra = map[string]string{}
				}
				r.Extra[k] = v
			}
		}
		relays = append(relays, r)
	}
	enc, err := Encode(Header{}, relays)
	var re *RelayError
	switch {
	case errors.Is(err, ErrNoResults), errors.Is(err, ErrTooLarge):
		return
	case errors.As(err, &re) && re.Field == "Extra":
		return // the rewritten line got longer than MaxLineLen
	case err != nil:
		t.Fatalf("Encode of decoded relays: %v", err)
	}
	enc2, err := Encode(Header{}, relays)
	if err != nil || !bytes.Equal(enc, enc2) {
		t.Fatalf("Encode is not deterministic: %v", err)
	}
	g, err := Decode(enc)
	if err != nil {
		t.Fatalf("Decode(Encode()): %v\n%s", err, enc)
	}
	if len(g.Relays) != len(relays) {
		t.Fatalf("round trip: %d relays, want %d", len(g.Relays), len(relays))
	}
	byID := map[string]Relay{}
	for _, r := range relays {
		byID[r.NodeID] = r
	}
	for _, l := range g.Relays {
		r, ok := byID[l.NodeID]
		if !ok {
			t.Fatalf("round trip: unknown relay %s", l.NodeID)
		}
		wantBW := KB(r.Bandwidth)
		if r.Unmeasured {
			wantBW = 1
		}
		if l.BW != wantBW || l.Vote == r.Unmeasured || l.Unmeasured != r.Unmeasured {
			t.Fatalf("round trip %s: bw=%d vote=%v unmeasured=%v, want bw=%d unmeasured=%v",
				l.NodeID, l.BW, l.Vote, l.Unmeasured, wantBW, r.Unmeasured)
		}
		if l.Keys[keyNick] != r.Nick || l.Keys[keyMasterKey] != r.MasterKeyEd25519 {
			t.Fatalf("round trip %s: nick/master key changed", l.NodeID)
		}
		for k, v := range r.Extra {
			if l.Keys[k] != v {
				t.Fatalf("round trip %s: %s=%q, want %q", l.NodeID, k, l.Keys[k], v)
			}
		}
	}
}
