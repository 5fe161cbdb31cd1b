// Package msg defines FlashFlow's messages and their wire format: the
// MEASUREMENT cells of tor proposal 316 (PARAMS, PARAMS_OK, BG, ERR) as
// finalised, with the review's asks applied, and the messages the
// proposal left to the implementation (coordinator ⇄ measurer, and the
// greeting that opens an echo connection).
//
// Stock tor cannot carry MEASUREMENT cells, so these messages travel in
// frames on mutually authenticated TLS connections (see package link):
//
//	frame   = length [2] command [1] body [length-1]     1 <= length <= 509
//	body    = version [1] meas_id [4] fields... exts
//	exts    = n_ext [1] { type [1] len [1] value [len] } × n_ext
//
// A frame is never longer than a cell's payload (PAYLOAD_LEN, 509 bytes),
// as the proposal's cells are not. Every field has an explicit range and
// decoders refuse anything outside it, trailing bytes, and known
// extensions or link specifiers of the wrong length; unknown extension
// and link-specifier types are kept (and re-encoded) but otherwise
// ignored, so that later versions can add them. docs/flashflow.md lists
// every difference from the proposal and its reason.
package msg

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
)

// Version is the only protocol version this package speaks.
const Version = 1

// MaxFrame is the largest frame payload (command and body): a cell's
// payload, PAYLOAD_LEN in tor-spec.
const MaxFrame = 509

// Command names a message.
type Command uint8

// Commands. 0-3 are prop 316's measure commands (MEASUREMENT cell); 16-19
// are coordinator ⇄ measurer messages; 32-33 open an echo connection.
const (
	CmdParams   Command = 0  // coordinator → target: measurement parameters
	CmdParamsOK Command = 1  // target → coordinator: accepted
	CmdBG       Command = 2  // target → coordinator: one second of background traffic
	CmdErr      Command = 3  // either way: the measurement failed
	CmdMeasure  Command = 16 // coordinator → measurer: prepare connections
	CmdReady    Command = 17 // measurer → coordinator: connections open
	CmdGo       Command = 18 // coordinator → measurer: send echo traffic now
	CmdReport   Command = 19 // measurer → coordinator: one second of verified echo
	CmdEchoOpen Command = 32 // measurer → target echo port: authenticates a connection
	CmdEchoOK   Command = 33 // target → measurer: echo begins
)

func (c Command) String() string {
	switch c {
	case CmdParams:
		return "PARAMS"
	case CmdParamsOK:
		return "PARAMS_OK"
	case CmdBG:
		return "BG"
	case CmdErr:
		return "ERR"
	case CmdMeasure:
		return "MEASURE"
	case CmdReady:
		return "READY"
	case CmdGo:
		return "GO"
	case CmdReport:
		return "REPORT"
	case CmdEchoOpen:
		return "ECHO_OPEN"
	case CmdEchoOK:
		return "ECHO_OK"
	}
	return fmt.Sprintf("command %d", uint8(c))
}

// Ranges of fields. The target narrows Duration further with its own
// configured maximum.
const (
	MinDuration, MaxDuration   = 1, 600   // seconds, as prop 316
	MaxBGPercent               = 99       // FFBackgroundTrafficPercent's range
	MinMeasurers, MaxMeasurers = 1, 10    // as prop 316
	MinConns, MaxConns         = 1, 1024  // per measurer
	MaxSpecs                   = 8        // link specifiers per party
	MaxRate                    = 1 << 40  // bytes/s a measurer is told to send (1 TB/s)
	MinBucket, MaxBucket       = 1, 65535 // echo check: one chunk in Bucket is verified
	KeySize                    = 32       // echo key and MAC size
)

// Ext is one ext-type-length-value field. Unknown types are kept as they
// came so that a message re-encodes to the same bytes.
type Ext struct {
	Type  uint8
	Value []byte
}

// Extension types. Each is allowed in the messages listed.
const (
	ExtEchoPort   uint8 = 1 // PARAMS_OK: the echo endpoint's TCP port on the relay's loopback [2 bytes]
	ExtRetryAfter uint8 = 2 // ERR: seconds until the target would accept a measurement [4 bytes]
	ExtSecond     uint8 = 3 // ERR: the second of the measurement the error happened in [2 bytes]
	ExtChunk      uint8 = 4 // ERR ECHO_MISMATCH: index of the chunk that did not match [8 bytes]
)

var extLen = map[uint8]int{ExtEchoPort: 2, ExtRetryAfter: 4, ExtSecond: 2, ExtChunk: 8}

// Link specifier types, as in tor-spec §5.1.2 (EXTEND2).
const (
	SpecIPv4    uint8 = 0 // address [4] port [2]
	SpecIPv6    uint8 = 1 // address [16] port [2]
	SpecRSAID   uint8 = 2 // legacy identity, SHA-1 of the RSA key [20]
	SpecEd25519 uint8 = 3 // Ed25519 identity [32]
	// SpecOpaque is ours, outside tor-spec's numbers: a tag that names a
	// measurer without saying where it is (any length).
	SpecOpaque uint8 = 0xC8
)

var specLen = map[uint8]int{SpecIPv4: 6, SpecIPv6: 18, SpecRSAID: 20, SpecEd25519: 32}

// LinkSpec is one link specifier. Data holds its bytes as on the wire.
type LinkSpec struct {
	Type uint8
	Data []byte
}

// AddrPortSpec returns the IPv4 or IPv6 link specifier for ap.
func AddrPortSpec(ap netip.AddrPort) LinkSpec {
	a := ap.Addr().Unmap()
	var b []byte
	t := SpecIPv6
	if a.Is4() {
		t = SpecIPv4
		v := a.As4()
		b = v[:]
	} else {
		v := a.As16()
		b = v[:]
	}
	b = binary.BigEndian.AppendUint16(b, ap.Port())
	return LinkSpec{Type: t, Data: b}
}

// RSAIDSpec returns the legacy identity link specifier of a relay whose
// fingerprint is fp (20 bytes).
func RSAIDSpec(fp [20]byte) LinkSpec { return LinkSpec{Type: SpecRSAID, Data: fp[:]} }

// AddrPort returns the address in an IPv4 or IPv6 specifier.
func (s LinkSpec) AddrPort() (netip.AddrPort, bool) {
	switch {
	case s.Type == SpecIPv4 && len(s.Data) == 6:
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(s.Data[:4])), binary.BigEndian.Uint16(s.Data[4:])), true
	case s.Type == SpecIPv6 && len(s.Data) == 18:
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte(s.Data[:16])), binary.BigEndian.Uint16(s.Data[16:])), true
	}
	return netip.AddrPort{}, false
}

// RSAID returns the relay fingerprint among specs, if there is one.
func RSAID(specs []LinkSpec) ([20]byte, bool) {
	for _, s := range specs {
		if s.Type == SpecRSAID && len(s.Data) == 20 {
			return [20]byte(s.Data), true
		}
	}
	return [20]byte{}, false
}

// ErrCode says why a measurement failed. prop 316 left the list open
// ("XXX TODO", 255 OTHER); these are ours, each defined, with no free
// text on the wire.
type ErrCode uint8

// Error codes.
const (
	ErrNotAllowed     ErrCode = 1  // the target does not allow measurements (FFMeasurementsAllowed 0)
	ErrUntrusted      ErrCode = 2  // the coordinator's certificate is not pinned by the target
	ErrBadVersion     ErrCode = 3  // protocol version not spoken
	ErrBadParams      ErrCode = 4  // a parameter is outside what the receiver accepts
	ErrRateLimited    ErrCode = 5  // too many measurements in the period; see ExtRetryAfter
	ErrBusy           ErrCode = 6  // another measurement is in progress
	ErrTimeout        ErrCode = 7  // a deadline passed before the step finished
	ErrEchoMismatch   ErrCode = 8  // echoed data differed from what was sent; see ExtChunk
	ErrTooFewConns    ErrCode = 9  // a measurer opened fewer than half its connections
	ErrUnknownMeas    ErrCode = 10 // no such measurement (or it already ended)
	ErrAborted        ErrCode = 11 // the sender ended the measurement
	ErrProtocol       ErrCode = 12 // a malformed or unexpected message
	ErrTorUnavailable ErrCode = 13 // the target cannot read its tor's traffic counters
	ErrEchoAuth       ErrCode = 14 // an echo connection's MAC was wrong
	ErrOther          ErrCode = 255
)

var errNames = map[ErrCode]string{
	ErrNotAllowed: "measurements not allowed", ErrUntrusted: "coordinator not trusted",
	ErrBadVersion: "bad version", ErrBadParams: "bad parameters", ErrRateLimited: "rate limited",
	ErrBusy: "busy", ErrTimeout: "timeout", ErrEchoMismatch: "echo mismatch",
	ErrTooFewConns: "too few connections", ErrUnknownMeas: "unknown measurement",
	ErrAborted: "aborted", ErrProtocol: "protocol error", ErrTorUnavailable: "tor unavailable",
	ErrEchoAuth: "echo authentication failed", ErrOther: "other",
}

func (c ErrCode) String() string {
	if s, ok := errNames[c]; ok {
		return s
	}
	return fmt.Sprintf("error code %d", uint8(c))
}

// Msg is a FlashFlow message.
type Msg interface {
	Command() Command
	// ID is the measurement the message belongs to (0 only in an ERR that
	// refers to none).
	ID() uint32
}

// Header is what every message starts with.
type Header struct {
	MeasID uint32
	Exts   []Ext
}

// ID returns the measurement id.
func (h Header) ID() uint32 { return h.MeasID }

// Ext returns the value of extension t.
func (h Header) Ext(t uint8) ([]byte, bool) {
	for _, e := range h.Exts {
		if e.Type == t {
			return e.Value, true
		}
	}
	return nil, false
}

// MeasurerInfo describes one measurer to the target.
type MeasurerInfo struct {
	Conns uint16     // connections (circuits) it will open
	Specs []LinkSpec // where its traffic comes from: address, identities
}

// Params (coordinator → target) asks for a measurement.
type Params struct {
	Header
	Duration  uint16 // seconds of measurement
	BGPercent uint8  // background share allowed, percent of the total
	Measurers []MeasurerInfo
	// EchoKey authenticates the measurers' echo connections: each opens
	// with ECHO_OPEN carrying a MAC under this key.
	EchoKey [KeySize]byte
}

// ParamsOK (target → coordinator) accepts; it carries ExtEchoPort.
type ParamsOK struct{ Header }

// BG (target → coordinator) reports one second's background traffic.
type BG struct {
	Header
	Second     uint16 // 1 for the first second, then +1
	Sent, Recv uint32 // background bytes in that second
}

// Err ends a measurement.
type Err struct {
	Header
	Code ErrCode
}

func (e *Err) Error() string { return fmt.Sprintf("flashflow: measurement %d: %v", e.MeasID, e.Code) }

// Measure (coordinator → measurer) asks a measurer to open connections.
type Measure struct {
	Header
	// Measurer is this measurer's index in PARAMS: its echo connections
	// say it in ECHO_OPEN.
	Measurer uint8
	Duration uint16
	Conns    uint16
	Rate     uint64 // bytes/s of echo data to send in all; 0: as fast as possible
	Bucket   uint16 // verify one chunk in Bucket
	Target   []LinkSpec
	EchoPort uint16
	EchoKey  [KeySize]byte
}

// Ready (measurer → coordinator): Conns connections are open.
type Ready struct {
	Header
	Conns uint16
}

// Go (coordinator → measurer) starts the echo traffic.
type Go struct{ Header }

// Report (measurer → coordinator) gives one second's verified echo bytes.
type Report struct {
	Header
	Second uint16
	Bytes  uint64 // verified echoed bytes, counted as cells (see package echo)
}

// EchoOpen (measurer → echo endpoint) authenticates one echo connection.
type EchoOpen struct {
	Header
	Conn uint16 // 0-based index of the connection among the measurer's
	// Measurer is the measurer's index in PARAMS.
	Measurer uint8
	MAC      [KeySize]byte
}

// EchoOK (echo endpoint → measurer): from now on every byte is echoed.
type EchoOK struct{ Header }

// Command implementations.
func (*Params) Command() Command   { return CmdParams }
func (*ParamsOK) Command() Command { return CmdParamsOK }
func (*BG) Command() Command       { return CmdBG }
func (*Err) Command() Command      { return CmdErr }
func (*Measure) Command() Command  { return CmdMeasure }
func (*Ready) Command() Command    { return CmdReady }
func (*Go) Command() Command       { return CmdGo }
func (*Report) Command() Command   { return CmdReport }
func (*EchoOpen) Command() Command { return CmdEchoOpen }
func (*EchoOK) Command() Command   { return CmdEchoOK }

// DecodeError says what was wrong with a frame, and where.
type DecodeError struct {
	Cmd    Command
	Offset int // byte offset in the frame (command byte = 0)
	What   string
}

func (e *DecodeError) Error() string {
	return fmt.Sprintf("flashflow: malformed %v message at byte %d: %s", e.Cmd, e.Offset, e.What)
}

// VersionError is returned for a frame of another protocol version; the
// receiver should answer ERR with ErrBadVersion.
type VersionError struct{ Got uint8 }

func (e *VersionError) Error() string {
	return fmt.Sprintf("flashflow: protocol version %d, this side speaks %d", e.Got, Version)
}

// ErrFrameSize is returned by ReadFrame for a length outside 1..MaxFrame.
var ErrFrameSize = errors.New("flashflow: frame length outside 1..509")

// ReadFrame reads one frame into buf (at least MaxFrame bytes) and
// returns its payload (command and body).
func ReadFrame(r io.Reader, buf []byte) ([]byte, error) {
	var l [2]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint16(l[:]))
	if n < 1 || n > MaxFrame {
		return nil, fmt.Errorf("%w (got %d)", ErrFrameSize, n)
	}
	if _, err := io.ReadFull(r, buf[:n]); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return buf[:n], nil
}

// Read reads and decodes one message.
func Read(r io.Reader) (Msg, error) {
	var buf [MaxFrame]byte
	p, err := ReadFrame(r, buf[:])
	if err != nil {
		return nil, err
	}
	return Decode(p)
}

// Write encodes m and writes it as one frame.
func Write(w io.Writer, m Msg) error {
	b, err := Frame(m)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// Frame encodes m with its length prefix.
func Frame(m Msg) ([]byte, error) {
	p, err := Encode(m)
	if err != nil {
		return nil, err
	}
	return append(binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(p)), uint16(len(p))), p...), nil
}

// EchoMAC is the MAC an echo connection opens with: HMAC-SHA256 under the
// measurement's echo key of "bento-flashflow-echo-v1", the measurement id,
// the measurer's index and the connection's index. Only parties the
// coordinator told the key can open echo connections, and a MAC is good
// for one connection of one measurement.
func EchoMAC(key [KeySize]byte, measID uint32, measurer uint8, conn uint16) [KeySize]byte {
	h := hmac.New(sha256.New, key[:])
	h.Write([]byte("bento-flashflow-echo-v1"))
	var b [7]byte
	binary.BigEndian.PutUint32(b[:4], measID)
	b[4] = measurer
	binary.BigEndian.PutUint16(b[5:], conn)
	h.Write(b[:])
	return [KeySize]byte(h.Sum(nil))
}

// PortExt is an ExtEchoPort extension.
func PortExt(port uint16) Ext {
	return Ext{Type: ExtEchoPort, Value: binary.BigEndian.AppendUint16(nil, port)}
}

// EchoPort returns the echo port a PARAMS_OK carries.
func (m *ParamsOK) EchoPort() uint16 {
	v, _ := m.Ext(ExtEchoPort)
	if len(v) != 2 {
		return 0
	}
	return binary.BigEndian.Uint16(v)
}

// U32Ext builds a 4-byte extension.
func U32Ext(t uint8, v uint32) Ext {
	return Ext{Type: t, Value: binary.BigEndian.AppendUint32(nil, v)}
}

// U16Ext builds a 2-byte extension.
func U16Ext(t uint8, v uint16) Ext {
	return Ext{Type: t, Value: binary.BigEndian.AppendUint16(nil, v)}
}

// U64Ext builds an 8-byte extension.
func U64Ext(t uint8, v uint64) Ext {
	return Ext{Type: t, Value: binary.BigEndian.AppendUint64(nil, v)}
}
