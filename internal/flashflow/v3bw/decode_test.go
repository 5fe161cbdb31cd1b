package v3bw

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDecodeFixtures(t *testing.T) {
	tests := []struct {
		file        string
		ts          int64
		version     string
		terminator  string
		headers     int
		relays      int
		voting      int
		firstID     string
		firstBW     uint64
		headerCheck map[string]string
	}{
		{file: "spec-a1-torflow.v3bw", ts: 1523911758, version: "1.0.0", relays: 2, voting: 2,
			firstID: "68A483E05A2ABDCA6DA5A3EF8DB5177638A27F80", firstBW: 760},
		{file: "spec-a2-sbws-0.1.0.v3bw", ts: 1523911758, version: "1.1.0", terminator: "====", headers: 7, relays: 2, voting: 2,
			firstID: "68A483E05A2ABDCA6DA5A3EF8DB5177638A27F80", firstBW: 380,
			headerCheck: map[string]string{"software": "sbws", "latest_bandwidth": "2018-04-16T20:49:18"}},
		{file: "spec-a3-sbws-1.0.3.v3bw", ts: 1523911758, version: "1.2.0", terminator: "=====", headers: 12, relays: 2, voting: 2,
			firstID: "68A483E05A2ABDCA6DA5A3EF8DB5177638A27F80", firstBW: 38000,
			headerCheck: map[string]string{"number_eligible_relays": "6000"}},
		{file: "spec-a3.1-not-enough-relays.v3bw", ts: 1540496079, version: "1.2.0", terminator: "=====", headers: 12},
		{file: "spec-a4-sbws-1.0.4-headers.v3bw", ts: 1523911758, version: "1.2.0", terminator: "=====", headers: 14,
			headerCheck: map[string]string{"destinations_countries": "TH,ZZ", "scanner_country": "SN"}},
		{file: "spec-a5-sbws-1.1.0.v3bw", ts: 1523911758, version: "1.4.0", terminator: "=====", headers: 23, relays: 2, voting: 0,
			firstID: "DC4D609F95A52614D1E69C752168AF1FCAE0B05F", firstBW: 1,
			headerCheck: map[string]string{"time_to_report_half_network": "57273"}},
		{file: "torflow-1.0.0.v3bw", ts: 1700000000, version: "1.0.0", relays: 5, voting: 5,
			firstID: "00A077F0E2F7714A6FFBD184C0AAAEC34E9EBF31", firstBW: 17104},
		{file: "sbws-1.4.0.v3bw", ts: 1712345678, version: "1.4.0", terminator: "=====", headers: 25, relays: 6, voting: 4,
			firstID: "6CE9B65BDBBF6B0D4F55B1F377C49E2F426BDA36", firstBW: 50053,
			headerCheck: map[string]string{"tor_version": "0.4.8.10"}},
		{file: "golden.v3bw", ts: 1700000000, version: SpecVersion, terminator: "=====", headers: 9, relays: 5, voting: 4,
			firstID: "0123456789ABCDEF0123456789ABCDEF01234567", firstBW: 1,
			headerCheck: map[string]string{"software": "bento", "ff_bwauth": "test1"}},
	}
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			b := readTestdata(t, tc.file)
			f, err := Decode(b)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			lf, warnings, err := DecodeLenient(b)
			if err != nil || len(warnings) != 0 {
				t.Fatalf("DecodeLenient: %v, warnings %v", err, warnings)
			}
			if len(lf.Relays) != len(f.Relays) {
				t.Errorf("lenient found %d relays, strict %d", len(lf.Relays), len(f.Relays))
			}
			if got := f.Timestamp.Unix(); got != tc.ts {
				t.Errorf("Timestamp = %d, want %d", got, tc.ts)
			}
			if f.Timestamp.Location() != time.UTC {
				t.Errorf("Timestamp not UTC")
			}
			if f.Version != tc.version {
				t.Errorf("Version = %q, want %q", f.Version, tc.version)
			}
			if f.Terminator != tc.terminator {
				t.Errorf("Terminator = %q, want %q", f.Terminator, tc.terminator)
			}
			if len(f.HeaderOrder) != tc.headers || len(f.Header) != tc.headers {
				t.Errorf("%d header lines (%d keys), want %d: %v", len(f.HeaderOrder), len(f.Header), tc.headers, f.HeaderOrder)
			}
			if tc.headers > 0 && (f.HeaderOrder[0] != "version" || f.Header["version"] != tc.version) {
				t.Errorf("first header %q, version header %q", f.HeaderOrder[0], f.Header["version"])
			}
			for k, v := range tc.headerCheck {
				if f.Header[k] != v {
					t.Errorf("Header[%s] = %q, want %q", k, f.Header[k], v)
				}
			}
			if len(f.Relays) != tc.relays {
				t.Fatalf("%d relays, want %d", len(f.Relays), tc.relays)
			}
			voting := 0
			for _, r := range f.Relays {
				if r.Vote {
					voting++
				}
				if r.Unmeasured != (r.Keys["unmeasured"] == "1") {
					t.Errorf("line %d: Unmeasured %v but unmeasured=%q", r.LineNo, r.Unmeasured, r.Keys["unmeasured"])
				}
				if !isHex40(r.NodeID) || strings.ToUpper(r.NodeID) != r.NodeID {
					t.Errorf("line %d: NodeID %q", r.LineNo, r.NodeID)
				}
			}
			if voting != tc.voting {
				t.Errorf("%d voting relays, want %d", voting, tc.voting)
			}
			if tc.relays > 0 {
				r := f.Relays[0]
				if r.NodeID != tc.firstID || r.BW != tc.firstBW {
					t.Errorf("first relay %s bw=%d, want %s bw=%d", r.NodeID, r.BW, tc.firstID, tc.firstBW)
				}
				wantLine := 2 + tc.headers
				if tc.terminator != "" {
					wantLine++
				}
				if r.LineNo != wantLine {
					t.Errorf("first relay LineNo %d, want %d", r.LineNo, wantLine)
				}
			}
		})
	}
}

// torNodeID is the fingerprint tor's own tests use (lower case).
const torNodeID = "557365204145532d32353620696e73746561642e"

// Relay lines tor's parser accepts (after tor's test_dir_measured_bw_kb).
var torGoodLines = []string{
	"node_id=$" + torNodeID + " bw=1024\n",
	"node_id=$" + torNodeID + "\t  bw=1024 \n",
	" node_id=$" + torNodeID + "  bw=1024\n",
	"\tnoise\tnode_id=$" + torNodeID + "  bw=1024 junk=007\n",
	"misc=junk node_id=$" + torNodeID + "  bw=1024 junk2=007\n",
	"bw=1024 node_id=$" + torNodeID + "\n",
	"foo=bar bw=1024 node_id=$" + torNodeID + "\n",
	"bw=1024 foo=bar node_id=$" + torNodeID + "\n",
	"node_id=$" + torNodeID + " bw=1024 vote=1\n",
	"node_id=$" + torNodeID + " bw=1024 unmeasured=1\n",
	"node_id=$" + torNodeID + " bw=1024 vote=1unmeasured=1\n",
	"node_id=$" + torNodeID + " bw=1024 unmeasured=0\n",
	"node_id=$" + strings.ToUpper(torNodeID) + " bw=01024\n",
}

func TestDecodeTorGoodLines(t *testing.T) {
	for _, line := range torGoodLines {
		for _, pos := range []string{"header", "body"} {
			t.Run(fmt.Sprintf("%s/%q", pos, line), func(t *testing.T) {
				prefix := "1700000000\n"
				wantLine := 2
				if pos == "body" {
					prefix += "version=1.5.0\n=====\n"
					wantLine = 4
				}
				b := []byte(prefix + line)
				f, err := Decode(b)
				if err != nil {
					t.Fatalf("Decode: %v", err)
				}
				if len(f.Relays) != 1 {
					t.Fatalf("%d relays", len(f.Relays))
				}
				r := f.Relays[0]
				if r.NodeID != strings.ToUpper(torNodeID) || r.BW != 1024 || !r.Vote || r.LineNo != wantLine {
					t.Errorf("got %+v", r)
				}
				if strings.Contains(line, " unmeasured=1") != r.Unmeasured {
					t.Errorf("Unmeasured = %v", r.Unmeasured)
				}
				_, warnings, err := DecodeLenient(b)
				if err != nil || len(warnings) != 0 {
					t.Errorf("DecodeLenient: %v %v", err, warnings)
				}
			})
		}
	}
}

// Lines tor's parser rejects (after tor's test_dir_measured_bw_kb), with
// what Decode must say about them.
var torBadLines = []struct {
	line, want string
}{
	{"node_id=None bw=1024\n", `invalid node_id "None"`},
	{"node_id=$None bw=1024\n", `invalid node_id "$None"`},
	{"node_id=$" + torNodeID + " bw=None\n", `invalid bw "None"`},
	{"node_id=$" + torNodeID + " bw=1024.0\n", `invalid bw "1024.0"`},
	{"node_id=$" + torNodeID + " bw=.1024\n", `invalid bw ".1024"`},
	{"node_id=$" + torNodeID + " bw=1.024\n", `invalid bw "1.024"`},
	{"node_id=$" + torNodeID + " bw=1024 bw=0\n", "duplicate bw="},
	{"node_id=$" + torNodeID + " bw=1024 bw=None\n", "duplicate bw="},
	{"node_id=$" + torNodeID + " bw=-1024\n", `invalid bw "-1024"`},
	{"node_id=$" + torNodeID + " bw=+1024\n", `invalid bw "+1024"`},
	{"node_id=$" + torNodeID + " bw=9223372036854775808\n", `invalid bw`},
	{"node_id=$" + torNodeID + " node_id=$" + torNodeID + " bw=1\n", "duplicate node_id="},
	{"node_i", "newline"},
	{"node_i\n", "missing node_id"},
	{"node_id=", "newline"},
	{"node_id=\n", "missing node_id"},
	{"node_id=$" + torNodeID + " bw=", "newline"},
	{"node_id=$" + torNodeID + " bw=1024", "does not end in a newline"},
	{"node_id=$" + torNodeID + " bw=\n", `invalid bw ""`},
	{"node_id=$557365204145532d32353620696e7374", "newline"},
	{"node_id=$557365204145532d32353620696e7374\n", "invalid node_id"},
	{"\n", "empty line"},
	{" \n ", "empty line"},
	{" \n\n", "empty line"},
	{"\t\n", "empty line"},
	{" node_id= ", "newline"},
	{"node_id==$" + torNodeID + " bw==1024\n", `invalid bw "=1024"`},
	{"node_id=$55736520414552d32353620696e73746561642e bw=1024\n", "want \"$\" and 40 hex digits"},
	{"node_id=" + torNodeID + " bw=1024\n", "want \"$\" and 40 hex digits"},
	{"node_id= $" + torNodeID + " bw=0.23\n", `invalid bw "0.23"`},
	{"node_id=$" + torNodeID + "0 bw=1024\n", "invalid node_id"},
	{"node_id=$" + torNodeID + "\x00 bw=1024\n", "NUL byte"},
	{"bw=1024 node_id=$" + torNodeID + "\x00\n", "NUL byte"},
	{"bw=1024\n", "missing node_id"},
	{"node_id=$" + torNodeID + " \n", "missing bw="},
	{"rtt=300 success=1\n", "missing node_id"},
	{"==\n", "missing node_id"},
	{"======\n", "missing node_id"},
}

func TestDecodeTorBadLines(t *testing.T) {
	good := "node_id=$" + strings.Repeat("AB", 20) + " bw=7\n"
	for _, tc := range torBadLines {
		// In the header (right after the timestamp) and in the body.
		for _, pos := range []string{"header", "body"} {
			t.Run(fmt.Sprintf("%s/%q", pos, tc.line), func(t *testing.T) {
				prefix := "1700000000\n"
				n := 2
				if pos == "body" {
					prefix += "version=1.5.0\n=====\n" + good
					n = 5
				}
				b := []byte(prefix + tc.line)
				_, err := Decode(b)
				var le *LineError
				if !errors.As(err, &le) {
					t.Fatalf("Decode error = %v, want a *LineError", err)
				}
				if le.Line != n {
					t.Errorf("error at line %d, want %d: %v", le.Line, n, err)
				}
				if pos == "body" && !strings.Contains(err.Error(), tc.want) {
					t.Errorf("error %q does not contain %q", err, tc.want)
				}

				// Lenient: tor drops the line and keeps the rest.
				f, warnings, err := DecodeLenient(b)
				if err != nil {
					t.Fatalf("DecodeLenient: %v", err)
				}
				if len(warnings) == 0 || warnings[0].Line != n {
					t.Errorf("warnings = %v, want one at line %d", warnings, n)
				}
				wantRelays := 0
				if pos == "body" {
					wantRelays = 1
				}
				if len(f.Relays) != wantRelays {
					t.Errorf("%d relays, want %d", len(f.Relays), wantRelays)
				}
			})
		}
	}
}

func TestDecodeVote0(t *testing.T) {
	for _, line := range []string{
		"node_id=$" + torNodeID + " bw=1024 vote=0\n",
		"node_id=$" + torNodeID + " bw=1024 vote=0 unmeasured=0\n",
		"vote=0 bw=1 node_id=$" + torNodeID + " unmeasured=1\n",
	} {
		for _, prefix := range []string{"1700000000\n", "1700000000\nversion=1.4.0\n=====\n"} {
			f, err := Decode([]byte(prefix + line))
			if err != nil {
				t.Fatalf("%q: %v", line, err)
			}
			if len(f.Relays) != 1 || f.Relays[0].Vote || f.Relays[0].Keys["vote"] != "0" {
				t.Fatalf("%q: relays %+v, want one with Vote false", line, f.Relays)
			}
			if want := strings.Contains(line, "unmeasured=1"); f.Relays[0].Unmeasured != want {
				t.Errorf("%q: Unmeasured %v", line, f.Relays[0].Unmeasured)
			}
		}
	}
	// A malformed vote=0 line is still an error.
	if _, err := Decode([]byte("1700000000\nnode_id=$" + torNodeID + " bw=1.5 vote=0\n")); err == nil {
		t.Error("malformed vote=0 line accepted")
	}
}

func TestDecodeTerminators(t *testing.T) {
	relay := "bw=5 node_id=$" + strings.Repeat("0A", 20) + "\n"
	tests := []struct {
		name, in, term, err string
	}{
		{"five", "1\nversion=1.5.0\n=====\n" + relay, "=====", ""},
		{"legacy four", "1\nversion=1.1.0\n====\n" + relay, "====", ""},
		{"none", "1\nversion=1.1.0\nsoftware=x\n" + relay, "", ""},
		{"none 1.0.0", "1\n" + relay, "", ""},
		{"header only", "1\nversion=1.2.0\n=====\n", "=====", ""},
		{"timestamp only", "1\n", "", ""},
		{"two", "1\n=====\n" + relay + "=====\n" + relay, "", "line 4: terminator after the header has ended"},
		{"legacy after relay", "1\n" + relay + "====\n", "", "line 3: terminator after the header has ended"},
		{"no newline", "1\nversion=1.5.0\n=====", "", "line 3: last line does not end in a newline"},
		{"six", "1\nversion=1.5.0\n======\n" + relay, "", "line 3: not a header"},
		{"two equals", "1\nversion=1.5.0\n==\n" + relay, "", "line 3: not a header"},
		{"header after terminator", "1\nversion=1.5.0\n=====\nsoftware=x\n" + relay, "", "line 4: missing node_id"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, err := Decode([]byte(tc.in))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if f.Terminator != tc.term {
				t.Errorf("Terminator = %q, want %q", f.Terminator, tc.term)
			}
		})
	}
}

func TestDecodeFileErrors(t *testing.T) {
	relay := "bw=5 node_id=$" + strings.Repeat("0A", 20) + "\n"
	relay2 := "bw=6 node_id=$" + strings.Repeat("0B", 20) + "\n"
	tests := []struct {
		name, in string
		line     int // 0: not a LineError
		want     string
	}{
		{"empty", "", 1, "empty file"},
		{"timestamp no newline", "1700000000", 1, "does not end in a newline"},
		{"timestamp zero", "0\n", 1, "not a Unix time"},
		{"timestamp negative", "-1\n", 1, "not a Unix time"},
		{"timestamp plus", "+1700000000\n", 1, "not a Unix time"},
		{"timestamp space", " 1700000000\n", 1, "not a Unix time"},
		{"timestamp CR", "1700000000\r\n", 1, "not a Unix time"},
		{"timestamp float", "1700000000.5\n", 1, "not a Unix time"},
		{"timestamp too far", "4294967296\n", 1, "not a Unix time"},
		{"timestamp huge", "99999999999999999999999\n", 1, "not a Unix time"},
		{"timestamp KV", "timestamp=1\n", 1, "not a Unix time"},
		{"long line", "1\n" + relay + "bw=1 node_id=$" + strings.Repeat("0C", 20) + " x=" + strings.Repeat("y", MaxLineLen) + "\n", 3, "longer than"},
		{"long timestamp", strings.Repeat("1", MaxLineLen+1) + "\n", 1, "longer than"},
		{"no final newline", "1\n" + relay + strings.TrimSuffix(relay2, "\n"), 3, "does not end in a newline"},
		{"duplicate node_id", "1\n" + relay + strings.ToLower(relay), 3, "duplicate node_id $0A0A"},
		{"duplicate master key", "1\n" + strings.TrimSuffix(relay, "\n") + " master_key_ed25519=abc\n" +
			strings.TrimSuffix(relay2, "\n") + " master_key_ed25519=abc\n", 3, "duplicate master_key_ed25519"},
		{"duplicate key", "1\nbw=5 nick=a nick=b node_id=$" + strings.Repeat("0A", 20) + "\n", 2, `duplicate key "nick"`},
		{"junk node_id and valid", "1\nnode_id=x bw=5 node_id=$" + strings.Repeat("0A", 20) + "\n", 2, `invalid node_id "x"`},
		{"control byte", "1\nbw=5 nick=a\x01 node_id=$" + strings.Repeat("0A", 20) + "\n", 2, "not printable ASCII"},
		{"CRLF relay", "1\nnode_id=$" + strings.Repeat("0A", 20) + " bw=5\r\n", 2, `invalid bw "5\r"`},
		{"version late", "1\nsoftware=x\nversion=1.5.0\n=====\n", 3, "version must be on the second line"},
		{"version 2", "1\nversion=2.0.0\n=====\n", 2, "unsupported version"},
		{"version 0.1.0", "1\nversion=0.1.0\n", 2, "unsupported version"},
		{"version junk", "1\nversion=1.x.0\n", 2, "unsupported version"},
		{"duplicate header", "1\nversion=1.5.0\nsoftware=a\nsoftware=b\n", 4, "duplicate header key"},
		{"header tab", "1\nversion=1.5.0\nsoftware=a\tb\n", 3, "header value"},
		{"header bad key", "1\nversion=1.5.0\nsoft.ware=a\n", 3, "header key"},
		{"header empty value", "1\nversion=1.5.0\nsoftware=\n", 3, "header value"},
		{"header space", "1\nversion=1.5.0\nsoftware=a b\n", 3, "not a header"},
		{"header junk", "1\nversion=1.5.0\njunk\n", 3, "not a header"},
		{"header relay keyword", "1\nversion=1.5.0\nnode_id=$" + strings.Repeat("0A", 20) + "\n=====\n", 3, "incomplete relay line: missing bw="},
		{"latest_bandwidth mismatch", "1700000000\nversion=1.5.0\nlatest_bandwidth=2023-11-14T22:13:21\n", 3, "differs from the timestamp"},
		{"file_created bad", "1700000000\nversion=1.5.0\nfile_created=2023-11-14 22:13:20\n", 3, "not a header"},
		{"file_created not DateTime", "1700000000\nversion=1.5.0\nfile_created=yesterday\n", 3, "not a DateTime"},
		{"headers after relays (tor test)", "1\n" + relay + "version=1.1.0\nsoftware=sbws\n", 3, "missing node_id"},
		{"51 headers", "1\n" + manyHeaders(51), 52, "more than 50 header lines"},
		{"vote header too long", "1\n" + longHeaders(), 10, "exceed 1024 bytes"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Decode([]byte(tc.in))
			if err == nil {
				t.Fatalf("no error, want %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
			var le *LineError
			if errors.As(err, &le) != (tc.line != 0) || (le != nil && le.Line != tc.line) {
				t.Errorf("error %#v, want line %d", err, tc.line)
			}
			// Lenient decoding fails only where tor drops the whole file.
			_, warnings, lerr := DecodeLenient([]byte(tc.in))
			if (lerr != nil) != (tc.line == 1) {
				t.Errorf("DecodeLenient error = %v", lerr)
			}
			if lerr == nil && len(warnings) == 0 {
				t.Errorf("DecodeLenient gave no warnings")
			}
		})
	}
}

func manyHeaders(n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "k%d=v\n", i)
	}
	return b.String()
}

func longHeaders() string {
	var b strings.Builder
	for i := range 10 {
		fmt.Fprintf(&b, "k%d=%s\n", i, strings.Repeat("v", 110))
	}
	return b.String()
}

func TestDecodeLenientKeepsGoodLines(t *testing.T) {
	in := "1700000000\nversion=1.5.0\nsoftware=x\nsoftware=y\n=====\n" +
		"bw=5 node_id=$" + strings.Repeat("0A", 20) + "\n" +
		"bw=5.0 node_id=$" + strings.Repeat("0B", 20) + "\n" +
		"bw=6 node_id=$" + strings.Repeat("0a", 20) + "\n" +
		"bw=7 node_id=$" + strings.Repeat("0C", 20) + " vote=0\n" +
		"bw=8 node_id=$" + strings.Repeat("0D", 20)
	f, warnings, err := DecodeLenient([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	var lines []int
	for _, w := range warnings {
		lines = append(lines, w.Line)
	}
	if fmt.Sprint(lines) != "[4 7 8 10]" {
		t.Errorf("warnings at lines %v, want [4 7 8 10]: %v", lines, warnings)
	}
	if f.Header["software"] != "x" {
		t.Errorf("software = %q, want the first value", f.Header["software"])
	}
	var got []string
	for _, r := range f.Relays {
		got = append(got, fmt.Sprintf("%d:%d:%v", r.LineNo, r.BW, r.Vote))
	}
	if want := "[6:5:true 8:6:true 9:7:false]"; fmt.Sprint(got) != want {
		t.Errorf("relays %v, want %s", got, want)
	}
}

func TestDecodeBounds(t *testing.T) {
	max := fmt.Sprintf("1\nbw=%d node_id=$%s\n", uint64(MaxBW), strings.Repeat("0A", 20))
	f, err := Decode([]byte(max))
	if err != nil || f.Relays[0].BW != MaxBW {
		t.Errorf("bw=MaxBW: %v", err)
	}
	f, err = Decode([]byte(fmt.Sprintf("%d\n", uint64(MaxTimestamp))))
	if err != nil || f.Timestamp.Unix() != MaxTimestamp {
		t.Errorf("MaxTimestamp: %v", err)
	}
	f, err = Decode([]byte("1\nbw=0 node_id=$" + strings.Repeat("0A", 20) + "\n"))
	if err != nil || f.Relays[0].BW != 0 {
		t.Errorf("bw=0: %v", err)
	}

	big := make([]byte, MaxFileSize+1)
	if _, err := Decode(big); !errors.Is(err, ErrTooLarge) {
		t.Errorf("huge file: %v, want ErrTooLarge", err)
	}
	if _, _, err := DecodeLenient(big); !errors.Is(err, ErrTooLarge) {
		t.Errorf("huge file (lenient): %v, want ErrTooLarge", err)
	}
}

func TestStale(t *testing.T) {
	f, err := Decode([]byte("1700000000\n"))
	if err != nil {
		t.Fatal(err)
	}
	ts := time.Unix(1700000000, 0)
	for _, tc := range []struct {
		now   time.Time
		stale bool
	}{
		{ts, false},
		{ts.Add(-time.Hour), false},
		{ts.Add(MaxAge), false},
		{ts.Add(MaxAge + 999*time.Millisecond), false},
		{ts.Add(MaxAge + time.Second), true},
	} {
		if got := f.Stale(tc.now); got != tc.stale {
			t.Errorf("Stale(ts%+v) = %v", tc.now.Sub(ts), got)
		}
	}
}
