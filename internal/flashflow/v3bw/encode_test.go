package v3bw

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata/golden.v3bw")

// base is 2023-11-14T22:13:20Z.
var base = time.Unix(1700000000, 0).UTC()

const testMasterKey = "LeON2lVdD3LaboQz5MFKYH3NcFLQbH/y4PfG8nwwXIs"

func goldenInput() (Header, []Relay) {
	h := Header{
		Software:         "bento",
		SoftwareVersion:  "0.1.0-test",
		GeneratorStarted: base.Add(-26 * time.Hour),
		FileCreated:      base.Add(90 * time.Second),
		Extra:            map[string]string{"ff_bwauth": "test1", "ff_measurers": "3"},
	}
	relays := []Relay{
		{ // unsorted input, lower case, capped at the advertised bandwidth
			NodeID: "ffeeddccbbaa99887766554433221100ffeeddcc", Nick: "capped",
			Bandwidth: 52_345_678, Advertised: 10_485_760, MeasuredAt: base.Add(-2 * time.Hour),
			Extra: map[string]string{"ff_clamped_seconds": "2"},
		},
		{ // the newest result: the file's timestamp
			NodeID: "68A483E05A2ABDCA6DA5A3EF8DB5177638A27F80", MasterKeyEd25519: testMasterKey, Nick: "Test",
			Bandwidth: 12_499_500, Advertised: 100_000_000, MeasuredAt: base,
		},
		{ // the oldest result; under 500 bytes/s rounds to 0, written as 1
			NodeID:    "0123456789ABCDEF0123456789ABCDEF01234567",
			Bandwidth: 499, MeasuredAt: base.Add(-6 * 24 * time.Hour),
		},
		{ // diagnostic line: newer MeasuredAt, but it does not count
			NodeID: "96C15995F30895689291F455587BD94CA427B6FC", Nick: "Test2", Unmeasured: true,
			MeasuredAt: base.Add(time.Minute),
		},
		{ // sub-second times are truncated
			NodeID: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", Bandwidth: 1500, Advertised: 1999,
			MeasuredAt: base.Add(-time.Hour + 700*time.Millisecond),
			Extra:      map[string]string{"ff_median_bytes": "1500", "a-b": "x/y+z=w"},
		},
	}
	return h, relays
}

func TestEncodeGolden(t *testing.T) {
	h, relays := goldenInput()
	got, err := Encode(h, relays)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join("testdata", "golden.v3bw")
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("Encode output differs from %s (run with -update to rewrite):\n--- got\n%s--- want\n%s", path, got, want)
	}
	if !bytes.HasSuffix(got, []byte("\n")) {
		t.Error("output does not end in a newline")
	}
	// Encode must not reorder or change its input.
	_, again := goldenInput()
	if fmt.Sprint(again) != fmt.Sprint(relays) {
		t.Error("Encode modified its input")
	}
}

func TestEncodeRoundTrip(t *testing.T) {
	h, relays := goldenInput()
	b, err := Encode(h, relays)
	if err != nil {
		t.Fatal(err)
	}
	f, err := Decode(b)
	if err != nil {
		t.Fatalf("Decode(Encode()): %v\n%s", err, b)
	}
	if f.Version != SpecVersion || f.Terminator != Terminator {
		t.Errorf("version %q terminator %q", f.Version, f.Terminator)
	}
	if !f.Timestamp.Equal(base) {
		t.Errorf("Timestamp %v, want the newest MeasuredAt %v", f.Timestamp, base)
	}
	wantHeader := map[string]string{
		"version":            SpecVersion,
		"software":           "bento",
		"software_version":   "0.1.0-test",
		"file_created":       "2023-11-14T22:14:50",
		"generator_started":  "2023-11-13T20:13:20",
		"earliest_bandwidth": "2023-11-08T22:13:20",
		"latest_bandwidth":   "2023-11-14T22:13:20",
		"ff_bwauth":          "test1",
		"ff_measurers":       "3",
	}
	if fmt.Sprint(f.Header) != fmt.Sprint(wantHeader) {
		t.Errorf("Header = %v\nwant %v", f.Header, wantHeader)
	}
	wantOrder := "[version software software_version file_created generator_started earliest_bandwidth latest_bandwidth ff_bwauth ff_measurers]"
	if fmt.Sprint(f.HeaderOrder) != wantOrder {
		t.Errorf("HeaderOrder = %v", f.HeaderOrder)
	}

	type want struct {
		id         string
		bw         uint64
		vote, unm  bool
		keys       map[string]string
		lineNumber int
	}
	wants := []want{
		{"0123456789ABCDEF0123456789ABCDEF01234567", 1, true, false, map[string]string{
			"bw": "1", "node_id": "$0123456789ABCDEF0123456789ABCDEF01234567",
			"measured_at": "1699481600", "time": "2023-11-08T22:13:20"}, 12},
		{"68A483E05A2ABDCA6DA5A3EF8DB5177638A27F80", 12500, true, false, map[string]string{
			"bw": "12500", "node_id": "$68A483E05A2ABDCA6DA5A3EF8DB5177638A27F80",
			"master_key_ed25519": testMasterKey, "nick": "Test",
			"measured_at": "1700000000", "time": "2023-11-14T22:13:20"}, 13},
		{"96C15995F30895689291F455587BD94CA427B6FC", 1, false, true, map[string]string{
			"bw": "1", "node_id": "$96C15995F30895689291F455587BD94CA427B6FC", "nick": "Test2",
			"measured_at": "1700000060", "time": "2023-11-14T22:14:20", "unmeasured": "1", "vote": "0"}, 14},
		{"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", 1, true, false, map[string]string{
			"bw": "1", "node_id": "$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "bw_uncapped": "2",
			"measured_at": "1699996400", "time": "2023-11-14T21:13:20",
			"ff_median_bytes": "1500", "a-b": "x/y+z=w"}, 15},
		{"FFEEDDCCBBAA99887766554433221100FFEEDDCC", 10485, true, false, map[string]string{
			"bw": "10485", "node_id": "$FFEEDDCCBBAA99887766554433221100FFEEDDCC", "nick": "capped",
			"bw_uncapped": "52346", "ff_clamped_seconds": "2",
			"measured_at": "1699992800", "time": "2023-11-14T20:13:20"}, 16},
	}
	if len(f.Relays) != len(wants) {
		t.Fatalf("%d relays, want %d", len(f.Relays), len(wants))
	}
	for i, w := range wants {
		r := f.Relays[i]
		if r.NodeID != w.id || r.BW != w.bw || r.Vote != w.vote || r.Unmeasured != w.unm || r.LineNo != w.lineNumber {
			t.Errorf("relay %d: got %s bw=%d vote=%v unmeasured=%v line %d, want %+v",
				i, r.NodeID, r.BW, r.Vote, r.Unmeasured, r.LineNo, w)
		}
		if fmt.Sprint(r.Keys) != fmt.Sprint(w.keys) {
			t.Errorf("relay %d keys:\n got %v\nwant %v", i, r.Keys, w.keys)
		}
	}
	for i, line := range strings.SplitAfter(string(b), "\n") {
		if line != "" && !strings.HasSuffix(line, "\n") {
			t.Errorf("line %d does not end in a newline", i+1)
		}
	}
}

func TestEncodeBandwidth(t *testing.T) {
	tests := []struct {
		bw, adv  uint64
		want     uint64
		uncapped string
	}{
		{0, 0, 1, ""},
		{499, 0, 1, ""},
		{500, 0, 1, ""},
		{1499, 0, 1, ""},
		{1500, 0, 2, ""},
		{999_999, 0, 1000, ""},
		{1_000_000, 2_000_000, 1000, ""},
		{2_000_000, 2_000_000, 2000, ""},
		{2_000_499, 2_000_000, 2000, ""},
		{2_000_500, 2_000_000, 2000, "2001"},
		{2_000_500, 2_000_999, 2000, "2001"}, // the cap rounds down
		{5_000_000, 1, 1, "5000"},            // cap is at least 1
		{5_000_000, 999, 1, "5000"},
		{1<<64 - 1, 0, 18446744073709552, ""},
		{1<<64 - 1, 1<<64 - 1, 18446744073709551, "18446744073709552"},
	}
	for _, tc := range tests {
		b, err := Encode(Header{}, []Relay{{NodeID: strings.Repeat("A", 40), Bandwidth: tc.bw, Advertised: tc.adv, MeasuredAt: base}})
		if err != nil {
			t.Fatal(err)
		}
		f, err := Decode(b)
		if err != nil {
			t.Fatal(err)
		}
		r := f.Relays[0]
		if r.BW != tc.want || r.Keys["bw_uncapped"] != tc.uncapped {
			t.Errorf("Bandwidth %d Advertised %d: bw=%d bw_uncapped=%q, want %d %q",
				tc.bw, tc.adv, r.BW, r.Keys["bw_uncapped"], tc.want, tc.uncapped)
		}
	}
	if KB(1499) != 1 || KB(1500) != 2 || KB(0) != 1 {
		t.Error("KB rounding")
	}
}

func TestEncodeTimestamp(t *testing.T) {
	times := []time.Duration{-50 * time.Hour, -time.Hour, -70 * time.Hour, -3 * time.Hour}
	var relays []Relay
	for i, d := range times {
		relays = append(relays, Relay{NodeID: fmt.Sprintf("%040X", i+1), Bandwidth: 1e6, MeasuredAt: base.Add(d)})
	}
	// An unmeasured relay's newer time does not count.
	relays = append(relays, Relay{NodeID: fmt.Sprintf("%040X", 99), Unmeasured: true, MeasuredAt: base})
	b, err := Encode(Header{FileCreated: base}, relays)
	if err != nil {
		t.Fatal(err)
	}
	newest, oldest := base.Add(-time.Hour), base.Add(-70*time.Hour)
	if first, _, _ := strings.Cut(string(b), "\n"); first != fmt.Sprint(newest.Unix()) {
		t.Errorf("first line %q, want %d", first, newest.Unix())
	}
	f, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if f.Header["latest_bandwidth"] != newest.Format(DateTimeLayout) ||
		f.Header["earliest_bandwidth"] != oldest.Format(DateTimeLayout) {
		t.Errorf("latest %s earliest %s", f.Header["latest_bandwidth"], f.Header["earliest_bandwidth"])
	}
	if f.Stale(base) {
		t.Error("fresh file reported stale")
	}
}

func TestEncodeErrors(t *testing.T) {
	ok := func() Relay {
		return Relay{NodeID: strings.Repeat("A", 40), Bandwidth: 1e6, MeasuredAt: base}
	}
	with := func(f func(*Relay)) []Relay {
		r := ok()
		f(&r)
		return []Relay{ok2(), r}
	}
	longExtra := map[string]string{}
	for i := range 10 {
		longExtra[fmt.Sprintf("ff_k%d", i)] = strings.Repeat("x", 100)
	}
	manyExtra := map[string]string{}
	for i := range 47 { // plus version, software, earliest and latest
		manyExtra[fmt.Sprintf("k%02d", i)] = "v"
	}
	tests := []struct {
		name   string
		h      Header
		relays []Relay
		field  string // RelayError/HeaderError field, or "" with sentinel
		is     error
		want   string
	}{
		{"no relays", Header{}, nil, "", ErrNoResults, "no relay results"},
		{"only unmeasured", Header{}, []Relay{{NodeID: strings.Repeat("A", 40), Unmeasured: true}}, "", ErrNoResults, ""},
		{"short id", Header{}, with(func(r *Relay) { r.NodeID = strings.Repeat("A", 39) }), "NodeID", nil, "40 hex"},
		{"dollar id", Header{}, with(func(r *Relay) { r.NodeID = "$" + strings.Repeat("A", 40) }), "NodeID", nil, "40 hex"},
		{"non-hex id", Header{}, with(func(r *Relay) { r.NodeID = strings.Repeat("G", 40) }), "NodeID", nil, "40 hex"},
		{"duplicate id", Header{}, with(func(r *Relay) { r.NodeID = strings.Repeat("b", 40) }), "NodeID", nil, "duplicate of relay 0"},
		{"bad master key", Header{}, with(func(r *Relay) { r.MasterKeyEd25519 = testMasterKey + "=" }), "MasterKeyEd25519", nil, "unpadded base64"},
		{"short master key", Header{}, with(func(r *Relay) { r.MasterKeyEd25519 = "YWJj" }), "MasterKeyEd25519", nil, "32-byte"},
		{"long nick", Header{}, with(func(r *Relay) { r.Nick = strings.Repeat("n", 20) }), "Nick", nil, "1-19"},
		{"nick space", Header{}, with(func(r *Relay) { r.Nick = "a b" }), "Nick", nil, "1-19"},
		{"nick underscore", Header{}, with(func(r *Relay) { r.Nick = "a_b" }), "Nick", nil, "1-19"},
		{"no MeasuredAt", Header{}, with(func(r *Relay) { r.MeasuredAt = time.Time{} }), "MeasuredAt", nil, "missing"},
		{"MeasuredAt 1970", Header{}, with(func(r *Relay) { r.MeasuredAt = time.Unix(0, 0) }), "MeasuredAt", nil, "outside"},
		{"MeasuredAt 2200", Header{}, with(func(r *Relay) { r.MeasuredAt = time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC) }), "MeasuredAt", nil, "outside"},
		{"MeasuredAt future", Header{FileCreated: base.Add(-MaxClockSkew - time.Second)}, with(func(*Relay) {}), "MeasuredAt", nil, "after FileCreated"},
		{"stale", Header{FileCreated: base.Add(MaxAge + time.Second)}, with(func(*Relay) {}), "", ErrStale, "older than 3 days"},
		{"extra reserved", Header{}, with(func(r *Relay) { r.Extra = map[string]string{"bw": "1"} }), "Extra[bw]", nil, "written by Encode"},
		{"extra vote", Header{}, with(func(r *Relay) { r.Extra = map[string]string{"vote": "0"} }), "Extra[vote]", nil, "written by Encode"},
		{"extra bad key", Header{}, with(func(r *Relay) { r.Extra = map[string]string{"a.b": "1"} }), "Extra[a.b]", nil, "[A-Za-z0-9_-]+"},
		{"extra empty key", Header{}, with(func(r *Relay) { r.Extra = map[string]string{"": "1"} }), "Extra[]", nil, "[A-Za-z0-9_-]+"},
		{"extra space", Header{}, with(func(r *Relay) { r.Extra = map[string]string{"k": "a b"} }), "Extra[k]", nil, "printable"},
		{"extra newline", Header{}, with(func(r *Relay) { r.Extra = map[string]string{"k": "a\nbw=1"} }), "Extra[k]", nil, "printable"},
		{"extra empty", Header{}, with(func(r *Relay) { r.Extra = map[string]string{"k": ""} }), "Extra[k]", nil, "non-empty"},
		{"extra non-ASCII", Header{}, with(func(r *Relay) { r.Extra = map[string]string{"k": "é"} }), "Extra[k]", nil, "printable"},
		{"extra header keyword", Header{}, with(func(r *Relay) { r.Extra = map[string]string{"software": "x"} }), "Extra[software]", nil, "header keyword"},
		{"extra header key of file", Header{Extra: map[string]string{"ff_x": "1"}}, with(func(r *Relay) { r.Extra = map[string]string{"ff_x": "2"} }), "Extra[ff_x]", nil, "header key"},
		{"extra too long", Header{}, with(func(r *Relay) { r.Extra = map[string]string{"k": strings.Repeat("x", MaxLineLen)} }), "Extra", nil, "more than"},
		{"software space", Header{Software: "bento 1"}, with(func(*Relay) {}), "Software", nil, "without spaces"},
		{"version newline", Header{SoftwareVersion: "1\n2"}, with(func(*Relay) {}), "SoftwareVersion", nil, "printable"},
		{"header extra reserved", Header{Extra: map[string]string{"version": "2"}}, with(func(*Relay) {}), "Extra[version]", nil, "Header field"},
		{"header extra timestamp", Header{Extra: map[string]string{"timestamp": "2"}}, with(func(*Relay) {}), "Extra[timestamp]", nil, "Header field"},
		{"header extra relay keyword", Header{Extra: map[string]string{"nick": "x"}}, with(func(*Relay) {}), "Extra[nick]", nil, "relay line keyword"},
		{"header extra bad key", Header{Extra: map[string]string{"a=b": "x"}}, with(func(*Relay) {}), "Extra[a=b]", nil, "[A-Za-z0-9_-]+"},
		{"header extra space", Header{Extra: map[string]string{"k": "a b"}}, with(func(*Relay) {}), "Extra[k]", nil, "without spaces"},
		{"header too long", Header{Extra: longExtra}, with(func(*Relay) {}), "Extra", nil, "at most 1024"},
		{"too many headers", Header{Extra: manyExtra}, with(func(*Relay) {}), "Extra", nil, "at most 50"},
		{"started after created", Header{GeneratorStarted: base.Add(time.Hour), FileCreated: base}, with(func(*Relay) {}), "GeneratorStarted", nil, "after FileCreated"},
		{"created 1970", Header{FileCreated: time.Unix(0, 0)}, with(func(*Relay) {}), "FileCreated", nil, "outside"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := Encode(tc.h, tc.relays)
			if err == nil {
				t.Fatalf("no error; output:\n%s", b)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %v is not %v", err, tc.is)
			}
			if tc.field == "" {
				return
			}
			var re *RelayError
			var he *HeaderError
			switch {
			case errors.As(err, &re):
				if re.Field != tc.field || re.Index != 1 {
					t.Errorf("RelayError field %q index %d, want %q index 1", re.Field, re.Index, tc.field)
				}
			case errors.As(err, &he):
				if he.Field != tc.field {
					t.Errorf("HeaderError field %q, want %q", he.Field, tc.field)
				}
			default:
				t.Errorf("error %T %v is neither a RelayError nor a HeaderError", err, err)
			}
		})
	}
}

func ok2() Relay {
	return Relay{NodeID: strings.Repeat("B", 40), Bandwidth: 2e6, MeasuredAt: base.Add(-time.Minute)}
}

func TestEncodeLimits(t *testing.T) {
	// Exactly 50 header lines and a vote header just within 1024 bytes
	// are fine, and Decode accepts the result.
	extra := map[string]string{}
	for i := range 44 { // plus 6 standard lines (FileCreated and GeneratorStarted set)
		extra[fmt.Sprintf("k%02d", i)] = "v"
	}
	h := Header{FileCreated: base, GeneratorStarted: base, Extra: extra}
	b, err := Encode(h, []Relay{ok2()})
	if err != nil {
		t.Fatal(err)
	}
	f, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(f.HeaderOrder) != MaxHeaderLines {
		t.Errorf("%d header lines", len(f.HeaderOrder))
	}

	// A vote header of exactly MaxVoteHeaderLen bytes.
	h = Header{Extra: map[string]string{"k": "v"}}
	b, err = Encode(h, []Relay{ok2()})
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	n := len("timestamp=") + len(lines[0])
	for _, l := range lines[1:] {
		if l == Terminator {
			break
		}
		n += 1 + len(l)
	}
	h.Extra["k"] = strings.Repeat("v", 1+MaxVoteHeaderLen-n)
	b, err = Encode(h, []Relay{ok2()})
	if err != nil {
		t.Fatalf("vote header of exactly %d bytes: %v", MaxVoteHeaderLen, err)
	}
	if _, err := Decode(b); err != nil {
		t.Fatal(err)
	}
	h.Extra["k"] += "v"
	if _, err := Encode(h, []Relay{ok2()}); err == nil {
		t.Errorf("vote header of %d bytes accepted", MaxVoteHeaderLen+1)
	}
}
