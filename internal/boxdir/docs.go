package boxdir

import (
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Relay is what a client's tor knows of a relay: from its server
// descriptor (dir-spec §2.1.1) and the consensus (§3.4.1).
type Relay struct {
	Nickname    string
	Fingerprint string // 40 upper-case hex digits
	Contact     string // ContactInfo, as the descriptor carries it
	Advertised  uint64 // bytes/s: min(bandwidth-avg, observed) of the descriptor
	Weight      uint64 // bytes/s: the consensus weight ("w Bandwidth=", KB/s in the document)
	// Unmeasured: the consensus says the weight is the relay's own word
	// ("Unmeasured=1"), although bandwidth authorities measure the
	// network (with FlashFlow's bandwidth files, say). tor writes the flag
	// only when at least three authorities measure: without it the
	// weight is measured, or nobody measures.
	Unmeasured bool
	Running    bool // listed Running in the consensus
}

// Limits on the documents read: a tor's descriptors for a network of
// 10,000 relays are well inside them.
const (
	MaxDocument = 64 << 20
	MaxRelays   = 20000
)

// ParseDescriptors reads the relays' server descriptors, as GETINFO
// desc/all-recent returns them, keeping what the directory needs. A
// descriptor without a router or fingerprint line is skipped; one that is
// malformed in those lines fails the whole read.
func ParseDescriptors(doc string) ([]Relay, error) {
	if len(doc) > MaxDocument {
		return nil, fmt.Errorf("descriptors: %d bytes, at most %d", len(doc), MaxDocument)
	}
	var out []Relay
	var cur *Relay
	flush := func() {
		if cur != nil && cur.Fingerprint != "" {
			out = append(out, *cur)
		}
		cur = nil
	}
	for n, line := range strings.Split(doc, "\n") {
		line = strings.TrimSuffix(line, "\r")
		kw, rest, _ := strings.Cut(line, " ")
		switch kw {
		case "router":
			flush()
			f := strings.Fields(rest)
			if len(f) != 5 {
				return nil, fmt.Errorf("descriptors line %d: router line with %d fields, want 5", n+1, len(f))
			}
			cur = &Relay{Nickname: f[0]}
			if len(out) >= MaxRelays {
				return nil, fmt.Errorf("descriptors: more than %d relays", MaxRelays)
			}
		case "fingerprint":
			if cur == nil {
				continue
			}
			fp := strings.ReplaceAll(rest, " ", "")
			if len(fp) != 40 || strings.Trim(fp, "0123456789ABCDEF") != "" {
				return nil, fmt.Errorf("descriptors line %d: fingerprint %q: want 40 upper-case hex digits", n+1, truncate(rest, 60))
			}
			cur.Fingerprint = fp
		case "contact":
			if cur != nil {
				cur.Contact = truncate(rest, MaxContact)
			}
		case "bandwidth":
			if cur == nil {
				continue
			}
			f := strings.Fields(rest)
			if len(f) != 3 {
				return nil, fmt.Errorf("descriptors line %d: bandwidth line with %d fields, want 3", n+1, len(f))
			}
			var v [3]uint64
			for i := range f {
				x, err := strconv.ParseUint(f[i], 10, 64)
				if err != nil || x > 1<<40 {
					return nil, fmt.Errorf("descriptors line %d: bandwidth %q: want bytes/s up to 2^40", n+1, truncate(f[i], 30))
				}
				v[i] = x
			}
			cur.Advertised = min(v[0], v[2])
		}
	}
	flush()
	return out, nil
}

// Status is a relay's consensus entry.
type Status struct {
	Weight     uint64 // bytes/s
	Unmeasured bool
	Running    bool
	Addr       netip.Addr // where the relay listens (its r line)
	ORPort     uint16
	DirPort    uint16 // 0: none
}

// ParseStatuses reads network-status entries, as GETINFO ns/all returns
// them, by relay fingerprint.
func ParseStatuses(doc string) (map[string]Status, error) {
	if len(doc) > MaxDocument {
		return nil, fmt.Errorf("network status: %d bytes, at most %d", len(doc), MaxDocument)
	}
	out := map[string]Status{}
	cur := ""
	for n, line := range strings.Split(doc, "\n") {
		line = strings.TrimSuffix(line, "\r")
		kw, rest, _ := strings.Cut(line, " ")
		switch kw {
		case "r":
			f := strings.Fields(rest)
			if len(f) < 7 {
				return nil, fmt.Errorf("network status line %d: r line with %d fields, want at least 7", n+1, len(f))
			}
			id, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(f[1], "="))
			if err != nil || len(id) != 20 {
				return nil, fmt.Errorf("network status line %d: identity %q: want 20 bytes in base64", n+1, truncate(f[1], 40))
			}
			cur = strings.ToUpper(hex.EncodeToString(id))
			if len(out) >= MaxRelays {
				return nil, fmt.Errorf("network status: more than %d relays", MaxRelays)
			}
			// The address and ports end the line, in both flavours
			// (the full one has a descriptor digest, microdescriptors'
			// not).
			k := len(f)
			addr, err := netip.ParseAddr(f[k-3])
			if err != nil || !addr.Is4() {
				return nil, fmt.Errorf("network status line %d: address %q: want an IPv4 address", n+1, truncate(f[k-3], 40))
			}
			or, err1 := strconv.ParseUint(f[k-2], 10, 16)
			dir, err2 := strconv.ParseUint(f[k-1], 10, 16)
			if err1 != nil || err2 != nil || or == 0 {
				return nil, fmt.Errorf("network status line %d: ports %q %q: want an ORPort 1-65535 and a DirPort 0-65535", n+1, truncate(f[k-2], 10), truncate(f[k-1], 10))
			}
			out[cur] = Status{Addr: addr, ORPort: uint16(or), DirPort: uint16(dir)}
		case "s":
			if cur == "" {
				continue
			}
			st := out[cur]
			for _, fl := range strings.Fields(rest) {
				if fl == "Running" {
					st.Running = true
				}
			}
			out[cur] = st
		case "w":
			if cur == "" {
				continue
			}
			st := out[cur]
			for _, kv := range strings.Fields(rest) {
				k, v, _ := strings.Cut(kv, "=")
				switch k {
				case "Bandwidth":
					x, err := strconv.ParseUint(v, 10, 64)
					if err != nil || x > 1<<32 {
						return nil, fmt.Errorf("network status line %d: Bandwidth=%q: want KB/s up to 2^32", n+1, truncate(v, 30))
					}
					st.Weight = x * 1000
				case "Unmeasured":
					st.Unmeasured = v == "1"
				}
			}
			out[cur] = st
		}
	}
	return out, nil
}
