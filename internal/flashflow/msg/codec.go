package msg

import (
	"encoding/binary"
	"fmt"
)

// Encode returns m's frame payload (command and body), after checking
// every field is in range: a message this side could not decode is never
// sent.
func Encode(m Msg) ([]byte, error) {
	e := &encoder{b: []byte{byte(m.Command()), Version}}
	switch m := m.(type) {
	case *Params:
		e.u32(m.MeasID)
		e.u16(m.Duration)
		e.u8(m.BGPercent)
		e.u8(uint8(len(m.Measurers)))
		for _, mi := range m.Measurers {
			e.u16(mi.Conns)
			e.specs(mi.Specs)
		}
		e.bytes(m.EchoKey[:])
		e.exts(m.Exts)
	case *ParamsOK:
		e.u32(m.MeasID)
		e.exts(m.Exts)
	case *BG:
		e.u32(m.MeasID)
		e.u16(m.Second)
		e.u32(m.Sent)
		e.u32(m.Recv)
		e.exts(m.Exts)
	case *Err:
		e.u32(m.MeasID)
		e.u8(uint8(m.Code))
		e.exts(m.Exts)
	case *Measure:
		e.u32(m.MeasID)
		e.u8(m.Measurer)
		e.u16(m.Duration)
		e.u16(m.Conns)
		e.u64(m.Rate)
		e.u16(m.Bucket)
		e.specs(m.Target)
		e.u16(m.EchoPort)
		e.bytes(m.EchoKey[:])
		e.exts(m.Exts)
	case *Ready:
		e.u32(m.MeasID)
		e.u16(m.Conns)
		e.exts(m.Exts)
	case *Go:
		e.u32(m.MeasID)
		e.exts(m.Exts)
	case *Report:
		e.u32(m.MeasID)
		e.u16(m.Second)
		e.u64(m.Bytes)
		e.exts(m.Exts)
	case *EchoOpen:
		e.u32(m.MeasID)
		e.u8(m.Measurer)
		e.u16(m.Conn)
		e.bytes(m.MAC[:])
		e.exts(m.Exts)
	case *EchoOK:
		e.u32(m.MeasID)
		e.exts(m.Exts)
	default:
		return nil, fmt.Errorf("flashflow: cannot encode %T", m)
	}
	if e.err != nil {
		return nil, e.err
	}
	if len(e.b) > MaxFrame {
		return nil, fmt.Errorf("flashflow: %v message of %d bytes exceeds %d", m.Command(), len(e.b), MaxFrame)
	}
	// Decoding what we encoded applies every range check in one place.
	if _, err := Decode(e.b); err != nil {
		return nil, fmt.Errorf("flashflow: refusing to send an invalid message: %w", err)
	}
	return e.b, nil
}

type encoder struct {
	b   []byte
	err error
}

func (e *encoder) u8(v uint8)     { e.b = append(e.b, v) }
func (e *encoder) u16(v uint16)   { e.b = binary.BigEndian.AppendUint16(e.b, v) }
func (e *encoder) u32(v uint32)   { e.b = binary.BigEndian.AppendUint32(e.b, v) }
func (e *encoder) u64(v uint64)   { e.b = binary.BigEndian.AppendUint64(e.b, v) }
func (e *encoder) bytes(v []byte) { e.b = append(e.b, v...) }
func (e *encoder) fail(err error) { e.err = err }

func (e *encoder) specs(s []LinkSpec) {
	if len(s) > 255 {
		e.fail(fmt.Errorf("flashflow: %d link specifiers", len(s)))
		return
	}
	e.u8(uint8(len(s)))
	for _, sp := range s {
		if len(sp.Data) > 255 {
			e.fail(fmt.Errorf("flashflow: link specifier of %d bytes", len(sp.Data)))
			return
		}
		e.u8(sp.Type)
		e.u8(uint8(len(sp.Data)))
		e.bytes(sp.Data)
	}
}

func (e *encoder) exts(x []Ext) {
	if len(x) > 255 {
		e.fail(fmt.Errorf("flashflow: %d extensions", len(x)))
		return
	}
	e.u8(uint8(len(x)))
	for _, ext := range x {
		if len(ext.Value) > 255 {
			e.fail(fmt.Errorf("flashflow: extension %d of %d bytes", ext.Type, len(ext.Value)))
			return
		}
		e.u8(ext.Type)
		e.u8(uint8(len(ext.Value)))
		e.bytes(ext.Value)
	}
}

// Decode parses a frame payload (command and body). It refuses unknown
// commands, other versions (*VersionError), fields out of range, known
// extensions and link specifiers of the wrong length, duplicate
// extensions and trailing bytes (*DecodeError).
func Decode(p []byte) (Msg, error) {
	if len(p) == 0 {
		return nil, &DecodeError{What: "empty frame"}
	}
	if len(p) > MaxFrame {
		return nil, &DecodeError{Cmd: Command(p[0]), What: fmt.Sprintf("frame of %d bytes exceeds %d", len(p), MaxFrame)}
	}
	d := &decoder{p: p, off: 1, cmd: Command(p[0])}
	v := d.u8("version")
	if d.err != nil {
		return nil, d.err
	}
	if v != Version {
		return nil, &VersionError{Got: v}
	}
	var m Msg
	switch d.cmd {
	case CmdParams:
		x := &Params{}
		x.MeasID = d.measID(false)
		x.Duration = d.u16r("meas_duration", MinDuration, MaxDuration)
		x.BGPercent = uint8(d.u8r("bg_percent", 0, MaxBGPercent))
		n := d.u8r("num_measurers", MinMeasurers, MaxMeasurers)
		for i := 0; i < int(n) && d.err == nil; i++ {
			var mi MeasurerInfo
			mi.Conns = d.u16r("num_conns", MinConns, MaxConns)
			mi.Specs = d.specs(fmt.Sprintf("measurer %d", i))
			x.Measurers = append(x.Measurers, mi)
		}
		copy(x.EchoKey[:], d.bytes("echo_key", KeySize))
		x.Exts = d.exts()
		m = x
	case CmdParamsOK:
		x := &ParamsOK{}
		x.MeasID = d.measID(false)
		x.Exts = d.exts()
		m = x
	case CmdBG:
		x := &BG{}
		x.MeasID = d.measID(false)
		x.Second = d.u16r("second", MinDuration, MaxDuration)
		x.Sent = d.u32("sent_bg_bytes")
		x.Recv = d.u32("recv_bg_bytes")
		x.Exts = d.exts()
		m = x
	case CmdErr:
		x := &Err{}
		x.MeasID = d.measID(true)
		c := ErrCode(d.u8("err_code"))
		if _, ok := errNames[c]; !ok && d.err == nil {
			d.fail(d.off-1, fmt.Sprintf("err_code %d is not defined", c))
		}
		x.Code = c
		x.Exts = d.exts()
		m = x
	case CmdMeasure:
		x := &Measure{}
		x.MeasID = d.measID(false)
		x.Measurer = d.u8r("measurer", 0, MaxMeasurers-1)
		x.Duration = d.u16r("meas_duration", MinDuration, MaxDuration)
		x.Conns = d.u16r("num_conns", MinConns, MaxConns)
		off := d.off
		x.Rate = d.u64("rate")
		if x.Rate > MaxRate && d.err == nil {
			d.fail(off, fmt.Sprintf("rate %d bytes/s exceeds %d", x.Rate, uint64(MaxRate)))
		}
		x.Bucket = d.u16r("bucket", MinBucket, MaxBucket)
		x.Target = d.specs("target")
		if _, ok := RSAID(x.Target); !ok && d.err == nil {
			d.fail(d.off, "target has no RSA identity link specifier")
		}
		x.EchoPort = d.u16r("echo_port", 1, 65535)
		copy(x.EchoKey[:], d.bytes("echo_key", KeySize))
		x.Exts = d.exts()
		m = x
	case CmdReady:
		x := &Ready{}
		x.MeasID = d.measID(false)
		x.Conns = d.u16r("num_conns", 0, MaxConns)
		x.Exts = d.exts()
		m = x
	case CmdGo:
		x := &Go{}
		x.MeasID = d.measID(false)
		x.Exts = d.exts()
		m = x
	case CmdReport:
		x := &Report{}
		x.MeasID = d.measID(false)
		x.Second = d.u16r("second", MinDuration, MaxDuration)
		off := d.off
		x.Bytes = d.u64("bytes")
		if x.Bytes > MaxRate && d.err == nil {
			d.fail(off, fmt.Sprintf("%d bytes in one second exceeds %d", x.Bytes, uint64(MaxRate)))
		}
		x.Exts = d.exts()
		m = x
	case CmdEchoOpen:
		x := &EchoOpen{}
		x.MeasID = d.measID(false)
		x.Measurer = uint8(d.u8r("measurer", 0, MaxMeasurers-1))
		x.Conn = d.u16r("conn", 0, MaxConns-1)
		copy(x.MAC[:], d.bytes("mac", KeySize))
		x.Exts = d.exts()
		m = x
	case CmdEchoOK:
		x := &EchoOK{}
		x.MeasID = d.measID(false)
		x.Exts = d.exts()
		m = x
	default:
		return nil, &DecodeError{Cmd: d.cmd, What: "unknown command"}
	}
	if d.err == nil && d.off != len(p) {
		d.fail(d.off, fmt.Sprintf("%d trailing bytes", len(p)-d.off))
	}
	if d.err != nil {
		return nil, d.err
	}
	if err := checkExts(m); err != nil {
		return nil, err
	}
	return m, nil
}

// allowedExts says which known extensions each message may carry.
var allowedExts = map[Command][]uint8{
	CmdParamsOK: {ExtEchoPort},
	CmdErr:      {ExtRetryAfter, ExtSecond, ExtChunk},
}

func checkExts(m Msg) error {
	var h Header
	switch x := m.(type) {
	case *Params:
		h = x.Header
	case *ParamsOK:
		h = x.Header
	case *BG:
		h = x.Header
	case *Err:
		h = x.Header
	case *Measure:
		h = x.Header
	case *Ready:
		h = x.Header
	case *Go:
		h = x.Header
	case *Report:
		h = x.Header
	case *EchoOpen:
		h = x.Header
	case *EchoOK:
		h = x.Header
	}
	for _, e := range h.Exts {
		if _, known := extLen[e.Type]; !known {
			continue
		}
		ok := false
		for _, t := range allowedExts[m.Command()] {
			ok = ok || t == e.Type
		}
		if !ok {
			return &DecodeError{Cmd: m.Command(), What: fmt.Sprintf("extension %d does not belong in this message", e.Type)}
		}
	}
	if m.Command() == CmdParamsOK {
		v, ok := h.Ext(ExtEchoPort)
		if !ok || binary.BigEndian.Uint16(v) == 0 {
			return &DecodeError{Cmd: CmdParamsOK, What: "no echo port extension (or port 0)"}
		}
	}
	return nil
}

type decoder struct {
	p   []byte
	off int
	cmd Command
	err error
}

func (d *decoder) fail(off int, what string) {
	if d.err == nil {
		d.err = &DecodeError{Cmd: d.cmd, Offset: off, What: what}
	}
}

func (d *decoder) need(n int, field string) bool {
	if d.err != nil {
		return false
	}
	if len(d.p)-d.off < n {
		d.fail(d.off, fmt.Sprintf("truncated %s: need %d bytes, have %d", field, n, len(d.p)-d.off))
		return false
	}
	return true
}

func (d *decoder) bytes(field string, n int) []byte {
	if !d.need(n, field) {
		return nil
	}
	b := d.p[d.off : d.off+n]
	d.off += n
	return b
}

func (d *decoder) u8(field string) uint8 {
	b := d.bytes(field, 1)
	if b == nil {
		return 0
	}
	return b[0]
}

func (d *decoder) u16(field string) uint16 {
	b := d.bytes(field, 2)
	if b == nil {
		return 0
	}
	return binary.BigEndian.Uint16(b)
}

func (d *decoder) u32(field string) uint32 {
	b := d.bytes(field, 4)
	if b == nil {
		return 0
	}
	return binary.BigEndian.Uint32(b)
}

func (d *decoder) u64(field string) uint64 {
	b := d.bytes(field, 8)
	if b == nil {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

func (d *decoder) u8r(field string, lo, hi int) uint8 {
	off := d.off
	v := d.u8(field)
	if d.err == nil && (int(v) < lo || int(v) > hi) {
		d.fail(off, fmt.Sprintf("%s %d outside [%d, %d]", field, v, lo, hi))
	}
	return v
}

func (d *decoder) u16r(field string, lo, hi int) uint16 {
	off := d.off
	v := d.u16(field)
	if d.err == nil && (int(v) < lo || int(v) > hi) {
		d.fail(off, fmt.Sprintf("%s %d outside [%d, %d]", field, v, lo, hi))
	}
	return v
}

func (d *decoder) measID(zeroOK bool) uint32 {
	off := d.off
	v := d.u32("meas_id")
	if d.err == nil && v == 0 && !zeroOK {
		d.fail(off, "meas_id 0 (ids are 1..2^32-1)")
	}
	return v
}

func (d *decoder) specs(who string) []LinkSpec {
	off := d.off
	n := d.u8("nspec")
	if d.err != nil {
		return nil
	}
	if n < 1 || n > MaxSpecs {
		d.fail(off, fmt.Sprintf("%s: %d link specifiers, want 1..%d", who, n, MaxSpecs))
		return nil
	}
	var out []LinkSpec
	seen := map[uint8]bool{}
	for i := 0; i < int(n) && d.err == nil; i++ {
		soff := d.off
		t := d.u8("lstype")
		l := d.u8("lslen")
		data := d.bytes("lspec", int(l))
		if d.err != nil {
			break
		}
		if want, known := specLen[t]; known {
			if int(l) != want {
				d.fail(soff, fmt.Sprintf("%s: link specifier type %d of %d bytes, want %d", who, t, l, want))
				break
			}
			if seen[t] {
				d.fail(soff, fmt.Sprintf("%s: link specifier type %d twice", who, t))
				break
			}
			seen[t] = true
		}
		out = append(out, LinkSpec{Type: t, Data: append([]byte(nil), data...)})
	}
	return out
}

func (d *decoder) exts() []Ext {
	n := d.u8("n_ext")
	var out []Ext
	seen := map[uint8]bool{}
	for i := 0; i < int(n) && d.err == nil; i++ {
		eoff := d.off
		t := d.u8("ext_type")
		l := d.u8("ext_len")
		v := d.bytes("ext_value", int(l))
		if d.err != nil {
			break
		}
		if seen[t] {
			d.fail(eoff, fmt.Sprintf("extension %d twice", t))
			break
		}
		seen[t] = true
		if want, known := extLen[t]; known && int(l) != want {
			d.fail(eoff, fmt.Sprintf("extension %d of %d bytes, want %d", t, l, want))
			break
		}
		out = append(out, Ext{Type: t, Value: append([]byte(nil), v...)})
	}
	return out
}
