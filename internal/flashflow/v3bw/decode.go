package v3bw

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// File is a decoded bandwidth file.
type File struct {
	// Timestamp is line 1: when the newest result was obtained (UTC).
	Timestamp time.Time
	// Version is the version= header on line 2, or "1.0.0" without one.
	Version string
	// Header holds the header KeyValue lines (including version), and
	// HeaderOrder their keys in file order. For a duplicate key (only
	// possible with DecodeLenient) the first value is kept.
	Header      map[string]string
	HeaderOrder []string
	// Terminator is the line that ended the header: "=====", the legacy
	// "====", or "" when the header ended at the first relay line (or the
	// file has no relays).
	Terminator string
	// Relays are the relay lines in file order.
	Relays []Line
}

// Line is one relay line.
type Line struct {
	// NodeID is the node_id fingerprint in upper-case hex, without "$".
	NodeID string
	// BW is the bw value in KB/s.
	BW uint64
	// Vote is false when the line has a token starting with "vote=0":
	// tor skips such diagnostic lines.
	Vote bool
	// Unmeasured is true when the line has unmeasured=1.
	Unmeasured bool
	// Keys holds every Key=Value token as written (so node_id keeps its
	// "$" and case). Tokens without "=" are ignored, as tor does. For a
	// repeated key (only possible with DecodeLenient) the first value is
	// kept.
	Keys map[string]string
	// LineNo is the 1-based line number in the file.
	LineNo int
}

// LineError is a problem at one line of a file being decoded. Decode
// returns the first one as its error; DecodeLenient returns them all as
// warnings.
type LineError struct {
	Line int // 1-based
	Msg  string
}

func (e *LineError) Error() string {
	return fmt.Sprintf("v3bw: line %d: %s", e.Line, e.Msg)
}

// Stale reports whether tor would ignore the file at now: its timestamp
// is more than MaxAge (3 days) old. A timestamp in the future is never
// stale to tor, so a generator with a clock far ahead produces a file tor
// keeps using; compare Timestamp with now to catch that.
func (f *File) Stale(now time.Time) bool {
	return now.Unix()-f.Timestamp.Unix() > int64(MaxAge/time.Second)
}

// Decode parses a bandwidth file strictly: the first line tor would drop,
// or that the spec forbids, is an error (a *LineError giving the line
// number) and no File is returned. Files over MaxFileSize give an error
// wrapping ErrTooLarge. See the package documentation for the rules.
func Decode(b []byte) (*File, error) {
	f, _, err := decode(b, false)
	return f, err
}

// DecodeLenient parses a bandwidth file the way tor does: a bad relay
// line is skipped, not fatal, and reported in warnings together with
// anything else that does not conform to the spec (such lines are kept
// when tor would use them). Beyond what tor drops, it also skips lines
// longer than MaxLineLen and bw values that are not plain digits (see
// the package documentation). The error is non-nil only when the whole
// file is unusable: it is empty, larger than MaxFileSize, or its first
// line is not a valid timestamp.
func DecodeLenient(b []byte) (*File, []*LineError, error) {
	return decode(b, true)
}

type decoder struct {
	lenient  bool
	warnings []*LineError
	err      error
}

// report records a problem at line n; it returns true when decoding must
// stop (strict mode).
func (d *decoder) report(n int, format string, a ...any) bool {
	e := &LineError{Line: n, Msg: fmt.Sprintf(format, a...)}
	if !d.lenient {
		d.err = e
		return true
	}
	d.warnings = append(d.warnings, e)
	return false
}

// quote quotes s for a message, shortened to keep messages readable.
func quote(s string) string {
	const max = 60
	if len(s) > max {
		return strconv.Quote(s[:max]) + "..."
	}
	return strconv.Quote(s)
}

func decode(b []byte, lenient bool) (*File, []*LineError, error) {
	if len(b) > MaxFileSize {
		return nil, nil, fmt.Errorf("%w: %d bytes", ErrTooLarge, len(b))
	}
	d := &decoder{lenient: lenient}
	f := &File{Version: "1.0.0", Header: map[string]string{}}

	// Line 1: the timestamp. tor ignores the whole file without it.
	raw, rest, hasNL := cutLine(b)
	switch {
	case len(b) == 0:
		return nil, nil, &LineError{1, "empty file: want a Unix timestamp line"}
	case len(raw) > MaxLineLen:
		return nil, nil, &LineError{1, fmt.Sprintf("line is %d bytes, longer than %d", len(raw), MaxLineLen)}
	case !hasNL:
		return nil, nil, &LineError{1, "timestamp line does not end in a newline"}
	}
	ts, ok := parseDigits(raw, MaxTimestamp)
	if !ok || ts == 0 {
		return nil, nil, &LineError{1, fmt.Sprintf("timestamp %s is not a Unix time in 1..%d", quote(raw), MaxTimestamp)}
	}
	f.Timestamp = time.Unix(int64(ts), 0).UTC()

	afterHeaders := false
	voteLen := len("timestamp=") + len(raw) // tor's copy of the header in its vote
	voteLenReported := false
	seenID := map[string]int{}
	seenKey := map[string]int{}

	// addRelay appends a line tor reads as a relay line (voting or not).
	addRelay := func(n int, p *relayParse) bool {
		if p.issue != "" && d.report(n, "%s", p.issue) {
			return true
		}
		if first, dup := seenID[p.line.NodeID]; dup {
			if d.report(n, "duplicate node_id $%s (also on line %d)", p.line.NodeID, first) {
				return true
			}
		} else {
			seenID[p.line.NodeID] = n
		}
		if mk := p.line.Keys[keyMasterKey]; mk != "" {
			if first, dup := seenKey[mk]; dup {
				if d.report(n, "duplicate master_key_ed25519 %s (also on line %d)", quote(mk), first) {
					return true
				}
			} else {
				seenKey[mk] = n
			}
		}
		p.line.LineNo = n
		f.Relays = append(f.Relays, p.line)
		return false
	}

	for n := 2; len(rest) > 0; n++ {
		raw, rest, hasNL = cutLine(rest)
		if len(raw) > MaxLineLen {
			if d.report(n, "line is %d bytes, longer than %d", len(raw), MaxLineLen) {
				return nil, nil, d.err
			}
			continue
		}
		p := parseRelay(raw, hasNL)

		if afterHeaders {
			if p.fatal != "" {
				msg := p.fatal
				if hasNL && (raw == Terminator || raw == LegacyTerminator) {
					msg = "terminator after the header has ended"
				}
				if d.report(n, "%s", msg) {
					return nil, nil, d.err
				}
				continue
			}
			if addRelay(n, &p) {
				return nil, nil, d.err
			}
			continue
		}

		// Still in the header: a relay line or the terminator ends it.
		switch {
		case p.fatal == "":
			afterHeaders = true
			if addRelay(n, &p) {
				return nil, nil, d.err
			}
			continue
		case hasNL && (raw == Terminator || raw == LegacyTerminator):
			afterHeaders = true
			f.Terminator = raw
			continue
		}

		// tor keeps a header line if it is Key=Value without spaces.
		eq := strings.IndexByte(raw, '=')
		if len(raw) < 2 || eq <= 0 || strings.IndexByte(raw, ' ') >= 0 {
			msg := p.fatal
			if !(p.hasBW || p.hasID) {
				msg = "not a header Key=Value line nor a relay line"
				if strings.TrimLeft(raw, " \t") == "" {
					msg = "empty line"
				}
				if !hasNL {
					msg = "last line does not end in a newline"
				}
			}
			if d.report(n, "%s", msg) {
				return nil, nil, d.err
			}
			continue
		}
		key, val := raw[:eq], raw[eq+1:]
		if !hasNL {
			if d.report(n, "last line does not end in a newline") {
				return nil, nil, d.err
			}
			continue
		}
		var issue string
		switch {
		case p.hasBW || p.hasID || key == keyNodeID:
			issue = "incomplete relay line: " + p.fatal
		case !isKey(key):
			issue = fmt.Sprintf("header key %s does not match [A-Za-z0-9_-]+", quote(key))
		case !isValue(val):
			issue = fmt.Sprintf("header value %s is not one or more printable ASCII characters without spaces", quote(val))
		}
		if issue != "" && d.report(n, "%s", issue) {
			return nil, nil, d.err
		}
		if _, dup := f.Header[key]; dup {
			if d.report(n, "duplicate header key %s", quote(key)) {
				return nil, nil, d.err
			}
			continue
		}
		if len(f.HeaderOrder) == MaxHeaderLines {
			if d.report(n, "more than %d header lines: tor leaves the rest out of its vote", MaxHeaderLines) {
				return nil, nil, d.err
			}
		}
		voteLen += 1 + len(raw)
		if voteLen > MaxVoteHeaderLen && !voteLenReported {
			voteLenReported = true
			if d.report(n, "header lines joined with the timestamp exceed %d bytes: tor votes an empty header", MaxVoteHeaderLen) {
				return nil, nil, d.err
			}
		}
		f.Header[key] = val
		f.HeaderOrder = append(f.HeaderOrder, key)
		if key == keyVersion && n == 2 {
			f.Version = val
		}
		if msg := checkHeaderKV(n, key, val, ts); msg != "" && d.report(n, "%s", msg) {
			return nil, nil, d.err
		}
	}
	return f, d.warnings, nil
}

// checkHeaderKV checks the values of the header keys Decode knows.
func checkHeaderKV(n int, key, val string, ts uint64) string {
	switch key {
	case keyVersion:
		if n != 2 {
			return "version must be on the second line"
		}
		if !isVersion1(val) {
			return fmt.Sprintf("unsupported version %s: want 1.x.y", quote(val))
		}
	case keyFileCreated, keyGeneratorStarted, keyEarliestBandwidth, keyLatestBandwidth:
		t, err := time.Parse(DateTimeLayout, val)
		if err != nil {
			return fmt.Sprintf("%s %s is not a DateTime (YYYY-MM-DDTHH:MM:SS)", key, quote(val))
		}
		if key == keyLatestBandwidth && t.Unix() != int64(ts) {
			return fmt.Sprintf("latest_bandwidth %s differs from the timestamp %d (%s)",
				val, ts, formatDateTime(int64(ts)))
		}
	}
	return ""
}

// isVersion1 reports whether v is "1.<digits>.<digits>".
func isVersion1(v string) bool {
	rest, ok := strings.CutPrefix(v, "1.")
	if !ok {
		return false
	}
	minor, patch, ok := strings.Cut(rest, ".")
	return ok && isDigits(minor) && isDigits(patch)
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// parseDigits parses a non-empty run of ASCII digits no larger than max.
func parseDigits(s string, max uint64) (uint64, bool) {
	if !isDigits(s) {
		return 0, false
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil || v > max {
		return 0, false
	}
	return v, true
}

// cutLine splits off the first line of b, without its "\n".
func cutLine(b []byte) (line string, rest []byte, hasNL bool) {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		return string(b), nil, false
	}
	return string(b[:i]), b[i+1:], true
}

// relayParse is one line read as a relay line.
type relayParse struct {
	line Line
	// fatal says why tor would not use the line ("" if it would, apart
	// from vote=0).
	fatal string
	// issue is a problem tor tolerates but the spec forbids.
	issue        string
	tokens       int
	hasBW, hasID bool
}

func isSep(c byte) bool { return c == ' ' || c == '\t' }

// parseRelay reads a line as tor's measured_bw_line_parse does: tokens
// split on space and TAB, "vote=0..." marks the line as not voting,
// "bw=" and "node_id=$" must each appear exactly once and be valid, the
// line must end in a newline, anything else is ignored (but kept in Keys
// when it is Key=Value).
func parseRelay(raw string, hasNL bool) relayParse {
	var p relayParse
	p.line.Vote = true
	p.line.Keys = map[string]string{}
	setFatal := func(format string, a ...any) {
		if p.fatal == "" {
			p.fatal = fmt.Sprintf(format, a...)
		}
	}
	setIssue := func(format string, a ...any) {
		if p.issue == "" {
			p.issue = fmt.Sprintf(format, a...)
		}
	}
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		if c == 0 {
			// tor reads a C string: the line ends here, without "\n".
			setFatal("NUL byte at column %d", i+1)
			break
		}
		if (c < ' ' && c != '\t') || c >= 0x7f {
			setIssue("byte 0x%02x at column %d is not printable ASCII", c, i+1)
			break
		}
	}
	var badNodeID string
	for i := 0; i < len(raw); {
		for i < len(raw) && isSep(raw[i]) {
			i++
		}
		j := i
		for j < len(raw) && !isSep(raw[j]) {
			j++
		}
		if j == i {
			break
		}
		tok := raw[i:j]
		i = j
		p.tokens++

		if eq := strings.IndexByte(tok, '='); eq > 0 {
			// bw and node_id repeats are judged below, as tor does.
			k, v := tok[:eq], tok[eq+1:]
			_, dup := p.line.Keys[k]
			if dup && k != keyBW && k != keyNodeID {
				setIssue("duplicate key %s", quote(k))
			}
			if !dup || (k == keyNodeID && strings.HasPrefix(v, "$")) {
				p.line.Keys[k] = v
			}
		}
		switch {
		case strings.HasPrefix(tok, "vote=0"):
			p.line.Vote = false
		case strings.HasPrefix(tok, "bw="):
			if p.hasBW {
				setFatal("duplicate bw=")
				continue
			}
			p.hasBW = true
			v, ok := parseDigits(tok[3:], MaxBW)
			if !ok {
				setFatal("invalid bw %s: want a base-10 integer in 0..%d", quote(tok[3:]), uint64(MaxBW))
				continue
			}
			p.line.BW = v
		case strings.HasPrefix(tok, "node_id=$"):
			if p.hasID {
				setFatal("duplicate node_id=")
				continue
			}
			p.hasID = true
			id := tok[len("node_id=$"):]
			if !isHex40(id) {
				setFatal("invalid node_id %s: want \"$\" and 40 hex digits", quote(tok[len("node_id="):]))
				continue
			}
			p.line.NodeID = strings.ToUpper(id)
		case strings.HasPrefix(tok, "node_id="):
			// tor ignores it as an unknown token.
			badNodeID = tok[len("node_id="):]
			setIssue("invalid node_id %s: want \"$\" and 40 hex digits", quote(badNodeID))
		}
	}
	switch {
	case p.tokens == 0:
		setFatal("empty line")
	case !hasNL:
		// Most likely a partial write: say so rather than what is
		// wrong with the truncated tokens.
		p.fatal = "last line does not end in a newline (tor drops it as incomplete)"
	case !p.hasID && badNodeID != "":
		setFatal("invalid node_id %s: want \"$\" and 40 hex digits", quote(badNodeID))
	case !p.hasID:
		setFatal("missing node_id=$<40 hex digits>")
	case !p.hasBW:
		setFatal("missing bw=")
	}
	if p.fatal == "" {
		p.line.Unmeasured = p.line.Keys[keyUnmeasured] == "1"
	}
	return p
}
