package middlebox

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
)

// Rule is one IDS rule in the Snort subset Bento reads:
//
//	alert tcp SRC SPORT -> DST DPORT (msg:"..."; content:"..."; nocase; sid:N; rev:N;)
//
// SRC and DST are "any" or an address or prefix; SPORT and DPORT "any" or
// a port; "->" matches traffic from SRC to DST, "<>" either way. content
// may hold |hex bytes|; nocase makes it case-insensitive. A rule has one
// content, at most 64 bytes, matched anywhere in the reassembled stream.
// flow (tcp rules only) is enforced: to_server or from_client (data from
// the side that sent the connection's SYN), to_client or from_server,
// established (the SYN and the SYN-ACK were seen), and only_stream and
// stateless, which every match already is; a connection picked up in the
// middle has no known client and matches no rule with a direction.
// Options the IDS cannot enforce are refused, never ignored; rev,
// classtype, priority and reference are metadata.
type Rule struct {
	SID          int
	Msg          string
	Proto        uint8 // 6 or 17
	Src, Dst     netip.Prefix
	SPort, DPort int // -1 any
	Both         bool
	Content      []byte
	NoCase       bool
	FlowTo       uint8 // 0 either way, flowToServer or flowToClient
	Established  bool  // only once the handshake was seen
}

// What a packet's data is, for flow: bits of the IDS's current packet.
const (
	flowToServer    = 1
	flowToClient    = 2
	flowEstablished = 4
)

// MaxContent bounds a rule's content.
const MaxContent = 64

// ParseRules reads rules, one per line; blank lines and "#" comments are
// skipped. Errors name the line.
func ParseRules(r io.Reader) ([]Rule, error) {
	var rules []Rule
	sc := bufio.NewScanner(r)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		rule, err := parseRule(line)
		if err != nil {
			return nil, fmt.Errorf("rules line %d: %v", n, err)
		}
		rules = append(rules, rule)
	}
	return rules, sc.Err()
}

func parseRule(line string) (Rule, error) {
	open := strings.IndexByte(line, '(')
	if open < 0 || !strings.HasSuffix(line, ")") {
		return Rule{}, fmt.Errorf("want a header and options in parentheses")
	}
	head := strings.Fields(line[:open])
	if len(head) != 7 || head[0] != "alert" {
		return Rule{}, fmt.Errorf("header %q: want alert PROTO SRC SPORT -> DST DPORT", line[:open])
	}
	r := Rule{}
	switch head[1] {
	case "tcp":
		r.Proto = 6
	case "udp":
		r.Proto = 17
	default:
		return Rule{}, fmt.Errorf("protocol %q: want tcp or udp", head[1])
	}
	var err error
	if r.Src, err = parseNet(head[2]); err != nil {
		return Rule{}, err
	}
	if r.SPort, err = parsePortSpec(head[3]); err != nil {
		return Rule{}, err
	}
	switch head[4] {
	case "->":
	case "<>":
		r.Both = true
	default:
		return Rule{}, fmt.Errorf("direction %q: want -> or <>", head[4])
	}
	if r.Dst, err = parseNet(head[5]); err != nil {
		return Rule{}, err
	}
	if r.DPort, err = parsePortSpec(head[6]); err != nil {
		return Rule{}, err
	}
	for _, opt := range splitOptions(line[open+1 : len(line)-1]) {
		name, val, _ := strings.Cut(opt, ":")
		name, val = strings.TrimSpace(name), strings.TrimSpace(val)
		switch name {
		case "msg":
			r.Msg = strings.Trim(val, `"`)
		case "content":
			if r.Content != nil {
				return Rule{}, fmt.Errorf("more than one content (one per rule is supported)")
			}
			if r.Content, err = parseContent(val); err != nil {
				return Rule{}, err
			}
		case "nocase":
			r.NoCase = true
		case "sid":
			if r.SID, err = strconv.Atoi(val); err != nil || r.SID <= 0 {
				return Rule{}, fmt.Errorf("sid %q: want a positive number", val)
			}
		case "flow":
			if r.Proto != 6 {
				return Rule{}, fmt.Errorf("flow:%s on a udp rule: the IDS keeps no state for UDP, so flow is supported on tcp rules only", val)
			}
			if err := r.parseFlow(val); err != nil {
				return Rule{}, err
			}
		case "rev", "classtype", "priority", "reference":
			// metadata
		default:
			return Rule{}, fmt.Errorf("option %q is not supported", name)
		}
	}
	if len(r.Content) == 0 || r.SID == 0 {
		return Rule{}, fmt.Errorf("a rule needs content and sid")
	}
	if len(r.Content) > MaxContent {
		return Rule{}, fmt.Errorf("content of %d bytes exceeds %d", len(r.Content), MaxContent)
	}
	return r, nil
}

// parseFlow reads flow's comma-separated keywords.
func (r *Rule) parseFlow(val string) error {
	stateless := false
	for _, kw := range strings.Split(val, ",") {
		switch kw = strings.TrimSpace(kw); kw {
		case "to_server", "from_client", "to_client", "from_server":
			to := uint8(flowToServer)
			if kw == "to_client" || kw == "from_server" {
				to = flowToClient
			}
			if r.FlowTo != 0 && r.FlowTo != to {
				return fmt.Errorf("flow:%s names both directions", val)
			}
			r.FlowTo = to
		case "established":
			r.Established = true
		case "stateless":
			stateless = true
		case "only_stream":
			// every match is on the reassembled stream
		case "no_stream", "not_established":
			return fmt.Errorf("flow:%s is not supported: the IDS matches reassembled streams of connections it saw open", kw)
		default:
			return fmt.Errorf("flow keyword %q: want to_server, from_client, to_client, from_server, established, stateless or only_stream", kw)
		}
	}
	if stateless && r.Established {
		return fmt.Errorf("flow:%s is both stateless and established", val)
	}
	return nil
}

// splitOptions splits on ';' outside quotes.
func splitOptions(s string) []string {
	var out []string
	inQ := false
	start := 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '"':
			if i == 0 || s[i-1] != '\\' {
				inQ = !inQ
			}
		case ';':
			if !inQ {
				if o := strings.TrimSpace(s[start:i]); o != "" {
					out = append(out, o)
				}
				start = i + 1
			}
		}
	}
	if o := strings.TrimSpace(s[start:]); o != "" {
		out = append(out, o)
	}
	return out
}

// parseContent reads "text|41 42|more" with \" and \\ escapes.
func parseContent(v string) ([]byte, error) {
	if len(v) < 2 || v[0] != '"' || v[len(v)-1] != '"' {
		return nil, fmt.Errorf("content %s: want a quoted string", v)
	}
	v = v[1 : len(v)-1]
	var out []byte
	for i := 0; i < len(v); i++ {
		switch c := v[i]; c {
		case '\\':
			if i+1 < len(v) {
				i++
				out = append(out, v[i])
			}
		case '|':
			end := strings.IndexByte(v[i+1:], '|')
			if end < 0 {
				return nil, fmt.Errorf("content: unclosed |hex| block")
			}
			b, err := hex.DecodeString(strings.ReplaceAll(v[i+1:i+1+end], " ", ""))
			if err != nil {
				return nil, fmt.Errorf("content: bad hex %q", v[i+1:i+1+end])
			}
			out = append(out, b...)
			i += end + 1
		default:
			out = append(out, c)
		}
	}
	return out, nil
}

func parseNet(s string) (netip.Prefix, error) {
	if s == "any" {
		return netip.Prefix{}, nil
	}
	if p, err := netip.ParsePrefix(s); err == nil {
		return p, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("address %q: want any, an address or a prefix", s)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func parsePortSpec(s string) (int, error) {
	if s == "any" {
		return -1, nil
	}
	p, err := strconv.ParseUint(s, 10, 16)
	if err != nil {
		return 0, fmt.Errorf("port %q: want any or a number", s)
	}
	return int(p), nil
}

// matchesFlow reports whether the rule applies to data flowing from src
// to dst.
func (r *Rule) matchesFlow(proto uint8, src, dst netip.AddrPort, fl uint8) bool {
	if r.Proto != proto || (r.FlowTo != 0 && fl&r.FlowTo == 0) || (r.Established && fl&flowEstablished == 0) {
		return false
	}
	one := func(a, b netip.AddrPort) bool {
		return (!r.Src.IsValid() || r.Src.Contains(a.Addr())) && (r.SPort < 0 || r.SPort == int(a.Port())) &&
			(!r.Dst.IsValid() || r.Dst.Contains(b.Addr())) && (r.DPort < 0 || r.DPort == int(b.Port()))
	}
	return one(src, dst) || (r.Both && one(dst, src))
}
