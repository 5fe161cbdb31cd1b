package v3bw

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Relay is one relay's latest result, as the generator knows it.
type Relay struct {
	// NodeID is the RSA identity fingerprint: 40 hex digits, no "$".
	// Lower case is accepted and written upper case.
	NodeID string
	// MasterKeyEd25519 is optional: the Ed25519 identity, base64
	// without "=" padding (43 characters).
	MasterKeyEd25519 string
	// Nick is optional: 1-19 ASCII letters and digits.
	Nick string
	// Bandwidth is the estimate in bytes per second.
	Bandwidth uint64
	// Advertised is the descriptor's bandwidth-avg in bytes per second;
	// 0 means unknown (no cap is applied).
	Advertised uint64
	// MeasuredAt is when the estimate was obtained. Required unless
	// Unmeasured is set.
	MeasuredAt time.Time
	// Unmeasured marks a diagnostic line for a relay without a usable
	// result: it is written as "bw=1 ... unmeasured=1 vote=0" (the spec
	// requires bw=1 for it; tor skips it), and its MeasuredAt, if any,
	// does not count towards the file's timestamp.
	Unmeasured bool
	// Extra holds further KeyValues for the line (e.g.
	// ff_clamped_seconds). Keys must match [A-Za-z0-9_-]+ and must not
	// be a key Encode writes itself (bw, node_id, master_key_ed25519,
	// nick, measured_at, time, bw_uncapped, unmeasured, vote) or a
	// header keyword; values are printable ASCII without spaces.
	Extra map[string]string
}

// Header is the file's header list. Zero times are left out.
type Header struct {
	// Software defaults to DefaultSoftware; SoftwareVersion is left out
	// when empty.
	Software, SoftwareVersion string
	GeneratorStarted          time.Time
	// FileCreated is also the reference for Encode's clock checks: no
	// MeasuredAt after FileCreated+MaxClockSkew, and a newest result no
	// older than FileCreated-MaxAge. Dir.Write sets it to Dir.Now when
	// zero.
	FileCreated time.Time
	// Extra holds further header KeyValues, written sorted after the
	// standard ones. Keys must match [A-Za-z0-9_-]+ and must not be a
	// standard header key or a relay keyword.
	Extra map[string]string
}

// Errors returned by Encode (possibly wrapped).
var (
	// ErrNoResults: no relay has a result (all Unmeasured, or none). The
	// spec forbids writing a file then.
	ErrNoResults = errors.New("v3bw: no relay results: the spec forbids writing a bandwidth file without recent results")
	// ErrStale: the newest result is more than MaxAge before
	// FileCreated, so tor would ignore the file.
	ErrStale = errors.New("v3bw: newest result is older than 3 days")
	// ErrTooLarge: the file is (or would be) larger than MaxFileSize.
	ErrTooLarge = errors.New("v3bw: file larger than 64 MiB")
)

// RelayError is a problem with one relay given to Encode.
type RelayError struct {
	Index  int    // position in the slice given to Encode
	NodeID string // as given
	Field  string // e.g. "NodeID", "Nick", "Extra[foo]"
	Msg    string
}

func (e *RelayError) Error() string {
	return fmt.Sprintf("v3bw: relay %d (node_id %q): %s: %s", e.Index, e.NodeID, e.Field, e.Msg)
}

// HeaderError is a problem with the Header given to Encode, or with the
// header as a whole.
type HeaderError struct {
	Field string
	Msg   string
}

func (e *HeaderError) Error() string {
	return fmt.Sprintf("v3bw: header: %s: %s", e.Field, e.Msg)
}

// Header keys Encode writes itself, in this order after version.
const (
	keyVersion           = "version"
	keySoftware          = "software"
	keySoftwareVersion   = "software_version"
	keyFileCreated       = "file_created"
	keyGeneratorStarted  = "generator_started"
	keyEarliestBandwidth = "earliest_bandwidth"
	keyLatestBandwidth   = "latest_bandwidth"
)

// Relay keys Encode writes itself.
const (
	keyBW         = "bw"
	keyNodeID     = "node_id"
	keyMasterKey  = "master_key_ed25519"
	keyNick       = "nick"
	keyMeasuredAt = "measured_at"
	keyTime       = "time"
	keyBWUncapped = "bw_uncapped"
	keyUnmeasured = "unmeasured"
	keyVote       = "vote"
)

// specHeaderKeys are the header keywords bandwidth-file-spec defines (plus
// "timestamp", which tor prepends to the header copy in its vote). Relay
// lines must not use them.
var specHeaderKeys = setOf(
	"timestamp", keyVersion, keySoftware, keySoftwareVersion, keyFileCreated,
	keyGeneratorStarted, keyEarliestBandwidth, keyLatestBandwidth,
	"number_eligible_relays", "minimum_percent_eligible_relays",
	"number_consensus_relays", "percent_eligible_relays",
	"minimum_number_eligible_relays", "scanner_country",
	"destinations_countries", "recent_consensus_count",
	"recent_priority_list_count", "recent_priority_relay_count",
	"recent_measurement_attempt_count", "recent_measurement_failure_count",
	"recent_measurements_excluded_error_count",
	"recent_measurements_excluded_near_count",
	"recent_measurements_excluded_old_count",
	"recent_measurements_excluded_few_count",
	"time_to_report_half_network", "tor_version",
)

// specRelayKeys are the relay keywords bandwidth-file-spec defines (for
// sbws and Torflow) plus the ones Encode writes. Header lines must not use
// them.
var specRelayKeys = setOf(
	keyBW, keyNodeID, keyMasterKey, keyNick, keyMeasuredAt, keyTime,
	keyBWUncapped, keyUnmeasured, keyVote, "under_min_report",
	"rtt", "success", "error_circ", "error_stream", "error_destination",
	"error_second_relay", "error_misc", "bw_mean", "bw_median",
	"desc_bw_avg", "desc_bw_obs_last", "desc_bw_obs_mean", "desc_bw_bur",
	"consensus_bandwidth", "consensus_bandwidth_is_unmeasured",
	"relay_in_recent_consensus_count", "relay_recent_priority_list_count",
	"relay_recent_measurement_attempt_count",
	"relay_recent_measurement_failure_count",
	"relay_recent_measurements_excluded_error_count",
	"relay_recent_measurements_excluded_near_count",
	"relay_recent_measurements_excluded_old_count",
	"relay_recent_measurements_excluded_few_count",
	"xoff_recv", "xoff_sent",
	"updated_at", "pid_error", "pid_error_sum", "pid_bw", "pid_delta",
	"circ_fail", "scanner",
)

// reservedRelayKeys are written by Encode and may not be in Relay.Extra.
var reservedRelayKeys = setOf(keyBW, keyNodeID, keyMasterKey, keyNick,
	keyMeasuredAt, keyTime, keyBWUncapped, keyUnmeasured, keyVote)

func setOf(keys ...string) map[string]bool {
	m := make(map[string]bool, len(keys))
	for _, k := range keys {
		m[k] = true
	}
	return m
}

// KB converts a bandwidth in bytes/s to the file's KB/s the way Encode
// does before capping: round half up, at least 1.
func KB(bytesPerSec uint64) uint64 {
	kb := bytesPerSec / 1000
	if bytesPerSec%1000 >= 500 {
		kb++
	}
	return max(kb, 1)
}

// capKB is the cap for an advertised bandwidth in bytes/s: rounded down
// (so the written value never exceeds bandwidth-avg), at least 1.
func capKB(advertised uint64) uint64 {
	return max(advertised/1000, 1)
}

type encRelay struct {
	nodeID string
	line   string
}

// Encode renders a bandwidth file (format SpecVersion). See the package
// documentation for the layout. It does not modify relays. Errors are
// *RelayError or *HeaderError naming the field, or wrap ErrNoResults,
// ErrStale or ErrTooLarge.
func Encode(h Header, relays []Relay) ([]byte, error) {
	software := h.Software
	if software == "" {
		software = DefaultSoftware
	}
	if err := checkHeaderValue("Software", software); err != nil {
		return nil, err
	}
	if h.SoftwareVersion != "" {
		if err := checkHeaderValue("SoftwareVersion", h.SoftwareVersion); err != nil {
			return nil, err
		}
	}
	for _, f := range []struct {
		name string
		t    time.Time
	}{{"GeneratorStarted", h.GeneratorStarted}, {"FileCreated", h.FileCreated}} {
		if !f.t.IsZero() && !timeInRange(f.t) {
			return nil, &HeaderError{f.name, fmt.Sprintf("%s is outside 1970-01-01T00:00:01Z..2106-02-07T06:28:15Z", f.t.UTC().Format(time.RFC3339))}
		}
	}
	if !h.GeneratorStarted.IsZero() && !h.FileCreated.IsZero() && h.GeneratorStarted.After(h.FileCreated) {
		return nil, &HeaderError{"GeneratorStarted", fmt.Sprintf("%s is after FileCreated %s",
			h.GeneratorStarted.UTC().Format(DateTimeLayout), h.FileCreated.UTC().Format(DateTimeLayout))}
	}
	for _, k := range sortedKeys(h.Extra) {
		field := "Extra[" + k + "]"
		switch {
		case !isKey(k):
			return nil, &HeaderError{field, "key must match [A-Za-z0-9_-]+"}
		case k == keyVersion || k == keySoftware || k == keySoftwareVersion || k == keyFileCreated ||
			k == keyGeneratorStarted || k == keyEarliestBandwidth || k == keyLatestBandwidth || k == "timestamp":
			return nil, &HeaderError{field, "key is written by Encode itself; set the Header field instead"}
		case specRelayKeys[k]:
			return nil, &HeaderError{field, "key is a relay line keyword; the spec forbids it in the header"}
		}
		if err := checkHeaderValue(field, h.Extra[k]); err != nil {
			return nil, err
		}
	}

	// Relays.
	out := make([]encRelay, 0, len(relays))
	seenID := make(map[string]int, len(relays))
	seenKey := make(map[string]int)
	var newest, oldest int64
	for i := range relays {
		r := &relays[i]
		rerr := func(field, format string, a ...any) error {
			return &RelayError{Index: i, NodeID: r.NodeID, Field: field, Msg: fmt.Sprintf(format, a...)}
		}
		if !isHex40(r.NodeID) {
			return nil, rerr("NodeID", "want 40 hex digits without \"$\", got %d characters", len(r.NodeID))
		}
		id := strings.ToUpper(r.NodeID)
		if j, dup := seenID[id]; dup {
			return nil, rerr("NodeID", "duplicate of relay %d", j)
		}
		seenID[id] = i
		if r.MasterKeyEd25519 != "" {
			if !isMasterKey(r.MasterKeyEd25519) {
				return nil, rerr("MasterKeyEd25519", "%q is not a 32-byte key in unpadded base64", r.MasterKeyEd25519)
			}
			if j, dup := seenKey[r.MasterKeyEd25519]; dup {
				return nil, rerr("MasterKeyEd25519", "duplicate of relay %d", j)
			}
			seenKey[r.MasterKeyEd25519] = i
		}
		if r.Nick != "" && !isNick(r.Nick) {
			return nil, rerr("Nick", "%q is not 1-19 ASCII letters and digits", r.Nick)
		}
		var at int64
		if r.MeasuredAt.IsZero() {
			if !r.Unmeasured {
				return nil, rerr("MeasuredAt", "missing (only Unmeasured relays may omit it)")
			}
		} else {
			if !timeInRange(r.MeasuredAt) {
				return nil, rerr("MeasuredAt", "%s is outside 1970-01-01T00:00:01Z..2106-02-07T06:28:15Z",
					r.MeasuredAt.UTC().Format(time.RFC3339))
			}
			if !h.FileCreated.IsZero() && r.MeasuredAt.After(h.FileCreated.Add(MaxClockSkew)) {
				return nil, rerr("MeasuredAt", "%s is after FileCreated %s (clock error?)",
					r.MeasuredAt.UTC().Format(DateTimeLayout), h.FileCreated.UTC().Format(DateTimeLayout))
			}
			at = r.MeasuredAt.Unix()
		}
		for _, k := range sortedKeys(r.Extra) {
			field := "Extra[" + k + "]"
			switch {
			case !isKey(k):
				return nil, rerr(field, "key must match [A-Za-z0-9_-]+")
			case reservedRelayKeys[k]:
				return nil, rerr(field, "key is written by Encode itself")
			case specHeaderKeys[k]:
				return nil, rerr(field, "key is a header keyword; the spec forbids it in relay lines")
			}
			if _, inHeader := h.Extra[k]; inHeader {
				return nil, rerr(field, "key is also a header key of this file")
			}
			if v := r.Extra[k]; !isValue(v) {
				return nil, rerr(field, "value %q must be non-empty printable ASCII without spaces", v)
			}
		}

		extra := make(map[string]string, len(r.Extra)+2)
		for k, v := range r.Extra {
			extra[k] = v
		}
		var bw uint64
		if r.Unmeasured {
			bw = 1
			extra[keyUnmeasured] = "1"
			extra[keyVote] = "0"
		} else {
			bw = KB(r.Bandwidth)
			if r.Advertised > 0 {
				if c := capKB(r.Advertised); bw > c {
					extra[keyBWUncapped] = strconv.FormatUint(bw, 10)
					bw = c
				}
			}
			if newest == 0 || at > newest {
				newest = at
			}
			if oldest == 0 || at < oldest {
				oldest = at
			}
		}

		var b strings.Builder
		b.WriteString("bw=")
		b.WriteString(strconv.FormatUint(bw, 10))
		b.WriteString(" node_id=$")
		b.WriteString(id)
		if r.MasterKeyEd25519 != "" {
			b.WriteString(" master_key_ed25519=")
			b.WriteString(r.MasterKeyEd25519)
		}
		if r.Nick != "" {
			b.WriteString(" nick=")
			b.WriteString(r.Nick)
		}
		if at != 0 {
			b.WriteString(" measured_at=")
			b.WriteString(strconv.FormatInt(at, 10))
			b.WriteString(" time=")
			b.WriteString(formatDateTime(at))
		}
		for _, k := range sortedKeys(extra) {
			b.WriteByte(' ')
			b.WriteString(k)
			b.WriteByte('=')
			b.WriteString(extra[k])
		}
		if b.Len() > MaxLineLen {
			return nil, rerr("Extra", "line is %d bytes, more than %d", b.Len(), MaxLineLen)
		}
		b.WriteByte('\n')
		out = append(out, encRelay{id, b.String()})
	}
	if newest == 0 {
		return nil, ErrNoResults
	}
	if !h.FileCreated.IsZero() && h.FileCreated.Unix()-newest > int64(MaxAge/time.Second) {
		return nil, fmt.Errorf("%w: newest result %s, file_created %s", ErrStale,
			formatDateTime(newest), h.FileCreated.UTC().Format(DateTimeLayout))
	}

	// Header.
	type kv struct{ k, v string }
	hdr := []kv{{keyVersion, SpecVersion}, {keySoftware, software}}
	if h.SoftwareVersion != "" {
		hdr = append(hdr, kv{keySoftwareVersion, h.SoftwareVersion})
	}
	if !h.FileCreated.IsZero() {
		hdr = append(hdr, kv{keyFileCreated, formatDateTime(h.FileCreated.Unix())})
	}
	if !h.GeneratorStarted.IsZero() {
		hdr = append(hdr, kv{keyGeneratorStarted, formatDateTime(h.GeneratorStarted.Unix())})
	}
	hdr = append(hdr, kv{keyEarliestBandwidth, formatDateTime(oldest)}, kv{keyLatestBandwidth, formatDateTime(newest)})
	for _, k := range sortedKeys(h.Extra) {
		hdr = append(hdr, kv{k, h.Extra[k]})
	}
	if len(hdr) > MaxHeaderLines {
		return nil, &HeaderError{"Extra", fmt.Sprintf("%d header lines, tor copies at most %d into its vote", len(hdr), MaxHeaderLines)}
	}
	voteLen := len("timestamp=") + len(strconv.FormatInt(newest, 10))
	for _, p := range hdr {
		voteLen += 1 + len(p.k) + 1 + len(p.v)
	}
	if voteLen > MaxVoteHeaderLen {
		return nil, &HeaderError{"Extra", fmt.Sprintf("joined header is %d bytes, tor allows at most %d", voteLen, MaxVoteHeaderLen)}
	}

	slices.SortFunc(out, func(a, b encRelay) int { return strings.Compare(a.nodeID, b.nodeID) })

	var buf bytes.Buffer
	buf.WriteString(strconv.FormatInt(newest, 10))
	buf.WriteByte('\n')
	for _, p := range hdr {
		buf.WriteString(p.k)
		buf.WriteByte('=')
		buf.WriteString(p.v)
		buf.WriteByte('\n')
	}
	buf.WriteString(Terminator)
	buf.WriteByte('\n')
	for _, r := range out {
		if buf.Len()+len(r.line) > MaxFileSize {
			return nil, ErrTooLarge
		}
		buf.WriteString(r.line)
	}
	return buf.Bytes(), nil
}

func checkHeaderValue(field, v string) error {
	if !isValue(v) {
		return &HeaderError{field, fmt.Sprintf("value %q must be non-empty printable ASCII without spaces", v)}
	}
	return nil
}

func timeInRange(t time.Time) bool {
	u := t.Unix()
	return u >= 1 && u <= MaxTimestamp
}

func formatDateTime(unix int64) string {
	return time.Unix(unix, 0).UTC().Format(DateTimeLayout)
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// isKey reports whether s matches the spec's Key: [A-Za-z0-9_-]+.
func isKey(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// isValue reports whether s matches the spec's Value: one or more
// printable ASCII characters other than space.
func isValue(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f {
			return false
		}
	}
	return true
}

func isHexDigit(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func isHex40(s string) bool {
	if len(s) != 40 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isHexDigit(s[i]) {
			return false
		}
	}
	return true
}

func isNick(s string) bool {
	if len(s) < 1 || len(s) > 19 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

func isMasterKey(s string) bool {
	b, err := base64.RawStdEncoding.Strict().DecodeString(s)
	return err == nil && len(b) == 32
}
