package msg

import (
	"bytes"
	"encoding/hex"
	"errors"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/golden")

func key(b byte) (k [KeySize]byte) {
	for i := range k {
		k[i] = b + byte(i)
	}
	return k
}

func fp(b byte) (f [20]byte) {
	for i := range f {
		f[i] = b
	}
	return f
}

// examples are one valid message of each kind; their encodings are the
// golden files.
func examples() map[string]Msg {
	return map[string]Msg{
		"params": &Params{
			Header: Header{MeasID: 0x01020304}, Duration: 30, BGPercent: 25,
			Measurers: []MeasurerInfo{
				{Conns: 80, Specs: []LinkSpec{AddrPortSpec(netip.MustParseAddrPort("192.0.2.7:9001")), RSAIDSpec(fp(0xAA))}},
				{Conns: 80, Specs: []LinkSpec{AddrPortSpec(netip.MustParseAddrPort("[2001:db8::1]:443"))}},
			},
			EchoKey: key(1),
		},
		"params_ok":   &ParamsOK{Header: Header{MeasID: 7, Exts: []Ext{PortExt(9200)}}},
		"bg":          &BG{Header: Header{MeasID: 7}, Second: 1, Sent: 125000, Recv: 120000},
		"err":         &Err{Header: Header{MeasID: 7, Exts: []Ext{U32Ext(ExtRetryAfter, 3600)}}, Code: ErrRateLimited},
		"err_nomeas":  &Err{Code: ErrUntrusted},
		"measure":     &Measure{Header: Header{MeasID: 7}, Measurer: 2, Duration: 30, Conns: 80, Rate: 22_500_000, Bucket: 125, Target: []LinkSpec{RSAIDSpec(fp(0xBB)), AddrPortSpec(netip.MustParseAddrPort("127.0.0.1:5003"))}, EchoPort: 9200, EchoKey: key(9)},
		"ready":       &Ready{Header: Header{MeasID: 7}, Conns: 80},
		"go":          &Go{Header: Header{MeasID: 7}},
		"report":      &Report{Header: Header{MeasID: 7}, Second: 30, Bytes: 10_000_000},
		"echo_open":   &EchoOpen{Header: Header{MeasID: 7}, Measurer: 1, Conn: 79, MAC: EchoMAC(key(9), 7, 1, 79)},
		"echo_ok":     &EchoOK{Header: Header{MeasID: 7}},
		"unknown_ext": &BG{Header: Header{MeasID: 9, Exts: []Ext{{Type: 200, Value: []byte("future")}}}, Second: 600, Sent: 1<<32 - 1},
	}
}

func TestGolden(t *testing.T) {
	for name, m := range examples() {
		t.Run(name, func(t *testing.T) {
			b, err := Encode(m)
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join("testdata", "golden", name+".hex")
			if *update {
				os.MkdirAll(filepath.Dir(path), 0o755)
				if err := os.WriteFile(path, []byte(hex.EncodeToString(b)+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update to create)", err)
			}
			wb, err := hex.DecodeString(strings.TrimSpace(string(want)))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(b, wb) {
				t.Fatalf("encoding changed:\n got %x\nwant %x", b, wb)
			}
			got, err := Decode(wb)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, m) {
				t.Fatalf("decode(golden) = %#v, want %#v", got, m)
			}
		})
	}
}

// The layout of PARAMS, byte by byte, as docs/flashflow.md describes it.
func TestParamsLayout(t *testing.T) {
	b, err := Encode(&Params{Header: Header{MeasID: 5}, Duration: 30, BGPercent: 25,
		Measurers: []MeasurerInfo{{Conns: 2, Specs: []LinkSpec{AddrPortSpec(netip.MustParseAddrPort("10.0.0.1:9001"))}}}})
	if err != nil {
		t.Fatal(err)
	}
	want := "00" + "01" + "00000005" + "001e" + "19" + "01" + "0002" + "01" + "00" + "06" + "0a000001" + "2329" +
		strings.Repeat("00", 32) + "00"
	if hex.EncodeToString(b) != want {
		t.Fatalf("got  %x\nwant %s", b, want)
	}
}

func TestRejects(t *testing.T) {
	valid := func(m Msg) []byte {
		b, err := Encode(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	ex := examples()
	bg := valid(ex["bg"])
	params := valid(ex["params"])
	set := func(b []byte, off int, v ...byte) []byte {
		c := append([]byte(nil), b...)
		copy(c[off:], v)
		return c
	}
	cases := []struct {
		name string
		in   []byte
		want string
	}{
		{"empty", nil, "empty frame"},
		{"unknown command", []byte{99, 1}, "unknown command"},
		{"bad version", set(bg, 1, 2), "version 2"},
		{"truncated", bg[:7], "truncated second"},
		{"meas id 0", set(bg, 2, 0, 0, 0, 0), "meas_id 0"},
		{"second 0", set(bg, 6, 0, 0), "second 0 outside [1, 600]"},
		{"second 601", set(bg, 6, 0x02, 0x59), "second 601 outside"},
		{"trailing", append(append([]byte(nil), bg...), 0), "1 trailing bytes"},
		{"duration 0", set(params, 6, 0, 0), "meas_duration 0"},
		{"duration 601", set(params, 6, 2, 0x59), "meas_duration 601"},
		{"bg percent 100", set(params, 8, 100), "bg_percent 100 outside [0, 99]"},
		{"no measurers", set(params, 9, 0), "num_measurers 0"},
		{"11 measurers", set(params, 9, 11), "num_measurers 11"},
		{"0 conns", set(params, 10, 0, 0), "num_conns 0"},
		{"1025 conns", set(params, 10, 4, 1), "num_conns 1025"},
		{"no specs", set(params, 12, 0), "0 link specifiers"},
		{"ipv4 spec of 5 bytes", set(params, 14, 5), "type 0 of 5 bytes"},
		{"undefined err code", []byte{byte(CmdErr), 1, 0, 0, 0, 1, 77, 0}, "err_code 77 is not defined"},
		{"duplicate ext", []byte{byte(CmdGo), 1, 0, 0, 0, 1, 2, 9, 0, 9, 0}, "extension 9 twice"},
		{"known ext wrong length", []byte{byte(CmdErr), 1, 0, 0, 0, 1, 5, 1, ExtRetryAfter, 1, 0}, "extension 2 of 1 bytes"},
		{"ext not allowed here", []byte{byte(CmdGo), 1, 0, 0, 0, 1, 1, ExtEchoPort, 2, 0, 1}, "does not belong"},
		{"params ok without port", []byte{byte(CmdParamsOK), 1, 0, 0, 0, 1, 0}, "no echo port"},
		{"ext overruns", []byte{byte(CmdGo), 1, 0, 0, 0, 1, 1, 9, 5, 0}, "truncated ext_value"},
		{"oversize", make([]byte, MaxFrame+1), "exceeds 509"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Decode(c.in)
			if err == nil {
				t.Fatalf("Decode(%x) succeeded", c.in)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q does not mention %q", err, c.want)
			}
		})
	}
	// A target without identity cannot be encoded, let alone sent.
	if _, err := Encode(&Measure{Header: Header{MeasID: 1}, Duration: 1, Conns: 1, Bucket: 1,
		Target: []LinkSpec{AddrPortSpec(netip.MustParseAddrPort("127.0.0.1:1"))}, EchoPort: 1}); err == nil ||
		!strings.Contains(err.Error(), "no RSA identity") {
		t.Fatalf("Encode(measure without identity) = %v", err)
	}
	var ve *VersionError
	if _, err := Decode(set(bg, 1, 2)); !errors.As(err, &ve) || ve.Got != 2 {
		t.Fatalf("want *VersionError, got %v", err)
	}
}

func TestEncodeRefusesOutOfRange(t *testing.T) {
	for _, m := range []Msg{
		&BG{Header: Header{MeasID: 1}, Second: 0},
		&Params{Header: Header{MeasID: 1}, Duration: 30, BGPercent: 100, Measurers: []MeasurerInfo{{Conns: 1, Specs: []LinkSpec{RSAIDSpec(fp(1))}}}},
		&Measure{Header: Header{MeasID: 1}, Duration: 30, Conns: 1, Rate: MaxRate + 1, Bucket: 1, Target: []LinkSpec{RSAIDSpec(fp(1))}, EchoPort: 1},
		&Go{},
		&Err{Header: Header{MeasID: 1}, Code: 200},
	} {
		if b, err := Encode(m); err == nil {
			t.Errorf("Encode(%#v) = %x, want an error", m, b)
		}
	}
}

func TestFraming(t *testing.T) {
	var buf bytes.Buffer
	ex := examples()
	for _, name := range []string{"params", "bg", "go"} {
		if err := Write(&buf, ex[name]); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"params", "bg", "go"} {
		m, err := Read(&buf)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(m, ex[name]) {
			t.Fatalf("%s: got %#v", name, m)
		}
	}
	for _, l := range [][]byte{{0, 0}, {0x01, 0xFE}, {0xFF, 0xFF}} {
		_, err := Read(bytes.NewReader(append(l, make([]byte, 600)...)))
		if !errors.Is(err, ErrFrameSize) {
			t.Errorf("length %x: %v, want ErrFrameSize", l, err)
		}
	}
	if _, err := Read(bytes.NewReader([]byte{0, 10, 2, 1})); err == nil {
		t.Error("short frame read")
	}
}

func TestEchoMAC(t *testing.T) {
	a := EchoMAC(key(1), 7, 0, 0)
	for _, b := range [][KeySize]byte{EchoMAC(key(2), 7, 0, 0), EchoMAC(key(1), 8, 0, 0), EchoMAC(key(1), 7, 1, 0), EchoMAC(key(1), 7, 0, 1)} {
		if a == b {
			t.Fatal("MAC does not depend on all inputs")
		}
	}
	if a != EchoMAC(key(1), 7, 0, 0) {
		t.Fatal("MAC not deterministic")
	}
}

func FuzzDecode(f *testing.F) {
	for _, m := range examples() {
		b, _ := Encode(m)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Decode(b)
		if err != nil {
			return
		}
		// Whatever decodes re-encodes to the same bytes: one encoding per
		// message, so no two parties can read a frame differently.
		out, err := Encode(m)
		if err != nil {
			t.Fatalf("decoded %x but cannot re-encode: %v", b, err)
		}
		if !bytes.Equal(out, b) {
			t.Fatalf("re-encoding differs:\n in  %x\n out %x", b, out)
		}
	})
}
