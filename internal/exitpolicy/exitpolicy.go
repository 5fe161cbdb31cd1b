// Package exitpolicy parses and evaluates destination policies written in
// tor's exit-policy syntax (see tor(1), ExitPolicy), matched exactly as tor
// matches them: rules are tried in order and the first rule whose address
// family, masked address and port range all match decides.
//
// Supported syntax, one rule per item, items separated by commas or given on
// separate lines:
//
//	accept|reject|accept6|reject6 ADDRSPEC[:PORTSPEC]
//
// where ADDRSPEC is "*", "*4", "*6", "private", an IPv4 address with an
// optional "/bits" or dotted-quad prefix mask, or a bracketed IPv6 address
// with an optional "/bits" mask, and PORTSPEC is "*", a port, or "lo-hi".
//
// Bento adds one kind of address tor's exit policies do not have: onion
// services, which functions reach through Tor and which have no IP
// address. "NAME.onion" names one service and "*.onion" every one. A
// destination given by name (an onion service, or a host name an exit
// relay resolves) meets only these rules and rules for "*"; address rules
// never match a name.
//
// As in tor, "*" in an accept/reject rule matches both IPv4 and IPv6, while
// in accept6/reject6 it matches IPv6 only; an IPv4 address in an
// accept6/reject6 rule is ignored (reported as a warning); "private" expands
// to tor's list of private networks. Unlike tor's exit policy, a policy that
// matches nothing rejects: Bento destinations are deny-by-default.
package exitpolicy

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Action is what a rule does with a matching destination.
type Action uint8

// Rule actions.
const (
	Reject Action = iota
	Accept
)

func (a Action) String() string {
	if a == Accept {
		return "accept"
	}
	return "reject"
}

// privateNets is tor's list of private networks (policies.c, private_nets).
var privateNets = []string{
	"0.0.0.0/8", "169.254.0.0/16", "127.0.0.0/8", "192.168.0.0/16",
	"10.0.0.0/8", "172.16.0.0/12",
	"::/8", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8", "::/127",
}

// Rule is one expanded policy rule. A rule always matches exactly one
// address family: "*" and "private" expand to several rules at parse time.
type Rule struct {
	Action  Action
	Prefix  netip.Prefix // masked network; Bits()==0 means any address of its family
	PortMin uint16
	PortMax uint16
	// Name, for a rule about onion services, is one onion address
	// ("xyz.onion") or "*.onion"; Prefix is then unset.
	Name string
	// AnyHost marks the rules expanded from "*": they match destinations
	// given by name too.
	AnyHost bool
	// Source is the policy item this rule was expanded from, for messages.
	Source string
}

// WildOnion is the name pattern of every onion service.
const WildOnion = "*.onion"

// Matches reports whether addr:port falls under the rule. Families are
// compared exactly, as tor does (CMP_EXACT).
func (r Rule) Matches(addr netip.Addr, port uint16) bool {
	if r.Name != "" {
		return false
	}
	if addr.Is4() != r.Prefix.Addr().Is4() {
		return false
	}
	if port < r.PortMin || port > r.PortMax {
		return false
	}
	return r.Prefix.Contains(addr)
}

// MatchesName reports whether the destination name:port falls under the
// rule: name is a lower-case onion address or host name.
func (r Rule) MatchesName(name string, port uint16) bool {
	if port < r.PortMin || port > r.PortMax {
		return false
	}
	switch {
	case r.AnyHost:
		return true
	case r.Name == WildOnion:
		return strings.HasSuffix(name, ".onion")
	}
	return r.Name != "" && r.Name == name
}

// String renders the rule in tor's canonical form.
func (r Rule) String() string {
	var b strings.Builder
	b.WriteString(r.Action.String())
	if r.Name != "" {
		b.WriteString(" " + r.Name + ":")
		writePorts(&b, r.PortMin, r.PortMax)
		return b.String()
	}
	if !r.Prefix.Addr().Is4() {
		b.WriteString("6")
	}
	b.WriteByte(' ')
	switch {
	case r.Prefix.Bits() == 0 && r.Prefix.Addr().Is4():
		b.WriteString("*4")
	case r.Prefix.Bits() == 0:
		b.WriteString("*6")
	case r.Prefix.Addr().Is4():
		if r.Prefix.IsSingleIP() {
			b.WriteString(r.Prefix.Addr().String())
		} else {
			b.WriteString(r.Prefix.String())
		}
	default:
		b.WriteString("[" + r.Prefix.Addr().String() + "]")
		if !r.Prefix.IsSingleIP() {
			b.WriteString("/" + strconv.Itoa(r.Prefix.Bits()))
		}
	}
	b.WriteByte(':')
	writePorts(&b, r.PortMin, r.PortMax)
	return b.String()
}

func writePorts(b *strings.Builder, lo, hi uint16) {
	switch {
	case lo <= 1 && hi == 65535:
		b.WriteByte('*')
	case lo == hi:
		b.WriteString(strconv.Itoa(int(lo)))
	default:
		fmt.Fprintf(b, "%d-%d", lo, hi)
	}
}

// Policy is an ordered list of rules.
type Policy struct {
	Rules []Rule
	// Items are the policy items as written (after splitting on commas),
	// kept so the policy can be shown to clients in the operator's words.
	Items []string
}

// Decision is the outcome of evaluating a destination.
type Decision struct {
	Action Action
	// Rule is the item that decided, or "" when nothing matched.
	Rule string
}

// Evaluate returns the decision for addr:port. IPv4-mapped IPv6 addresses
// are unmapped first: the kernel connects them as IPv4, so they must meet the
// IPv4 rules (tor never sees such addresses; a function could forge them).
func (p *Policy) Evaluate(addr netip.Addr, port uint16) Decision {
	addr = addr.Unmap()
	if p != nil {
		for _, r := range p.Rules {
			if r.Matches(addr, port) {
				return Decision{Action: r.Action, Rule: r.Source}
			}
		}
	}
	return Decision{Action: Reject}
}

// Allows reports whether addr:port is accepted.
func (p *Policy) Allows(addr netip.Addr, port uint16) bool {
	return p.Evaluate(addr, port).Action == Accept
}

// EvaluateName returns the decision for a destination given by name: an
// onion address, or a host name that a Tor exit resolves. Only onion
// rules and rules for "*" can match it.
func (p *Policy) EvaluateName(name string, port uint16) Decision {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	if p != nil {
		for _, r := range p.Rules {
			if r.MatchesName(name, port) {
				return Decision{Action: r.Action, Rule: r.Source}
			}
		}
	}
	return Decision{Action: Reject}
}

// AllowsName reports whether the destination name:port is accepted.
func (p *Policy) AllowsName(name string, port uint16) bool {
	return p.EvaluateName(name, port).Action == Accept
}

// Empty reports whether the policy has no rules (and so rejects everything).
func (p *Policy) Empty() bool { return p == nil || len(p.Rules) == 0 }

// AcceptsAny reports whether some destination would be accepted.
func (p *Policy) AcceptsAny() bool {
	if p == nil {
		return false
	}
	for _, r := range p.Rules {
		if r.Action == Accept {
			return true
		}
	}
	return false
}

// Warning is a non-fatal problem found while parsing, such as tor's
// "IPv4 address with accept6/reject6" case, which tor ignores.
type Warning struct {
	Item string
	Msg  string
}

func (w Warning) String() string { return fmt.Sprintf("%q: %s", w.Item, w.Msg) }

// Parse parses a policy given as text: items separated by commas and/or
// newlines. Empty items are ignored. The first malformed item is an error;
// ignored items are returned as warnings.
func Parse(text string) (*Policy, []Warning, error) {
	p := &Policy{}
	var warns []Warning
	for _, line := range strings.Split(text, "\n") {
		for _, item := range strings.Split(line, ",") {
			item = strings.TrimSpace(item)
			if item == "" {
				continue
			}
			rules, warn, err := ParseItem(item)
			if err != nil {
				return nil, warns, err
			}
			if warn != "" {
				warns = append(warns, Warning{Item: item, Msg: warn})
				continue
			}
			p.Items = append(p.Items, item)
			p.Rules = append(p.Rules, rules...)
		}
	}
	return p, warns, nil
}

// MustParse is Parse for policies known to be valid, such as defaults.
func MustParse(text string) *Policy {
	p, _, err := Parse(text)
	if err != nil {
		panic(err)
	}
	return p
}

// Append adds the rules of q after those of p.
func (p *Policy) Append(q *Policy) {
	p.Rules = append(p.Rules, q.Rules...)
	p.Items = append(p.Items, q.Items...)
}

// ParseError describes a malformed policy item.
type ParseError struct {
	Item string
	Msg  string
}

func (e *ParseError) Error() string {
	return fmt.Sprintf("bad policy item %q: %s (expected e.g. \"accept 192.0.2.0/24:80-443\" or \"reject *:*\")", e.Item, e.Msg)
}

// ParseItem parses one policy item. It returns the expanded rules, or a
// warning when tor would ignore the item.
func ParseItem(item string) ([]Rule, string, error) {
	bad := func(format string, a ...any) ([]Rule, string, error) {
		return nil, "", &ParseError{Item: item, Msg: fmt.Sprintf(format, a...)}
	}
	if len(item) > 256 {
		return bad("item longer than 256 bytes")
	}
	fields := strings.Fields(strings.ToLower(item))
	if len(fields) != 2 {
		return bad("want an action and one address pattern")
	}
	var act Action
	v6only := false
	switch fields[0] {
	case "accept":
		act = Accept
	case "reject":
		act = Reject
	case "accept6":
		act, v6only = Accept, true
	case "reject6":
		act, v6only = Reject, true
	default:
		return bad("action %q is not accept, reject, accept6 or reject6", fields[0])
	}
	spec := fields[1]

	// Split address, mask and ports as tor does: an IPv6 address sits in
	// brackets; the mask follows the first '/', the ports the next ':'.
	address := spec
	rest := ""
	if strings.HasPrefix(spec, "[") {
		end := strings.IndexByte(spec, ']')
		if end < 0 {
			return bad("no closing ']' after IPv6 address")
		}
		address, rest = spec[1:end], spec[end+1:]
		if rest != "" && rest[0] != '/' && rest[0] != ':' {
			return bad("unexpected %q after ']'", rest)
		}
	} else if i := strings.IndexAny(spec, "/:"); i >= 0 {
		address, rest = spec[:i], spec[i:]
	}
	mask, ports, hasMask, hasPorts := "", "", false, false
	if strings.HasPrefix(rest, "/") {
		hasMask = true
		mask = rest[1:]
		if i := strings.IndexByte(mask, ':'); i >= 0 {
			mask, ports, hasPorts = mask[:i], mask[i+1:], true
		}
	} else if strings.HasPrefix(rest, ":") {
		ports, hasPorts = rest[1:], true
	}
	pmin, pmax := uint16(1), uint16(65535)
	if hasPorts {
		var err error
		if pmin, pmax, err = parsePorts(ports); err != nil {
			return bad("%v", err)
		}
	}

	bracketed := strings.HasPrefix(spec, "[")
	if !bracketed && strings.HasSuffix(address, ".onion") {
		if address != WildOnion && !ValidOnion(address) {
			return bad("%q is not an onion address (56 base32 characters, then .onion) nor *.onion", address)
		}
		if hasMask {
			return bad("a mask cannot follow an onion address")
		}
		if v6only {
			return bad("onion services have no address family: use accept/reject, not accept6/reject6")
		}
		return []Rule{{Action: act, Name: address, PortMin: pmin, PortMax: pmax, Source: item}}, "", nil
	}
	var prefixes []netip.Prefix
	anyHost := false
	switch {
	case !bracketed && (address == "*" || address == "*4" || address == "*6" || address == "private"):
		if hasMask {
			return bad("a mask cannot follow %q", address)
		}
		switch {
		case address == "*4":
			prefixes = []netip.Prefix{netip.PrefixFrom(netip.IPv4Unspecified(), 0)}
		case address == "*6" || (address == "*" && v6only):
			prefixes = []netip.Prefix{netip.PrefixFrom(netip.IPv6Unspecified(), 0)}
		case address == "*":
			prefixes = []netip.Prefix{
				netip.PrefixFrom(netip.IPv4Unspecified(), 0),
				netip.PrefixFrom(netip.IPv6Unspecified(), 0),
			}
			anyHost = true
		default: // private
			for _, n := range privateNets {
				prefixes = append(prefixes, netip.MustParsePrefix(n))
			}
		}
	default:
		a, err := netip.ParseAddr(address)
		if err != nil || a.Zone() != "" {
			return bad("%q is not an IPv4 address, a bracketed IPv6 address, *, *4, *6 or private", address)
		}
		if a.Is6() && !bracketed {
			return bad("IPv6 address must be in brackets, as [%s]", address)
		}
		if a.Is4() && bracketed {
			return bad("IPv4 address %s must not be in brackets", address)
		}
		bits := a.BitLen()
		if hasMask {
			if bits, err = parseMask(mask, a.Is4()); err != nil {
				return bad("%v", err)
			}
		}
		pfx, err := a.Prefix(bits)
		if err != nil {
			return bad("%v", err)
		}
		prefixes = []netip.Prefix{pfx}
	}

	var rules []Rule
	for _, pfx := range prefixes {
		if v6only && pfx.Addr().Is4() {
			if address == "private" {
				continue // accept6 private keeps the IPv6 private nets only
			}
			return nil, "IPv4 address with accept6/reject6 is ignored (as tor does); use accept/reject", nil
		}
		rules = append(rules, Rule{Action: act, Prefix: pfx, PortMin: pmin, PortMax: pmax, AnyHost: anyHost, Source: item})
	}
	return rules, "", nil
}

// ValidOnion reports whether name is a v3 onion address: 56 characters of
// base32 (a-z, 2-7) and ".onion", lower case.
func ValidOnion(name string) bool {
	id, ok := strings.CutSuffix(name, ".onion")
	if !ok || len(id) != 56 {
		return false
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= '2' && c <= '7') {
			return false
		}
	}
	return true
}

func parseMask(mask string, v4 bool) (int, error) {
	if n, err := strconv.Atoi(mask); err == nil {
		max := 128
		if v4 {
			max = 32
		}
		if n < 0 || n > max {
			return 0, fmt.Errorf("mask /%d out of range 0-%d", n, max)
		}
		return n, nil
	}
	if !v4 {
		return 0, fmt.Errorf("IPv6 mask %q must be a number of bits", mask)
	}
	m, err := netip.ParseAddr(mask)
	if err != nil || !m.Is4() {
		return 0, fmt.Errorf("mask %q is neither a bit count nor a dotted-quad mask", mask)
	}
	b := m.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	ones := 0
	for v&0x80000000 != 0 {
		ones++
		v <<= 1
	}
	if v != 0 {
		return 0, fmt.Errorf("mask %q is not a prefix mask", mask)
	}
	return ones, nil
}

func parsePorts(s string) (uint16, uint16, error) {
	if s == "*" {
		return 1, 65535, nil
	}
	lo, hi, isRange := strings.Cut(s, "-")
	pmin, err := parsePort(lo)
	if err != nil {
		return 0, 0, err
	}
	pmax := pmin
	if isRange {
		if pmax, err = parsePort(hi); err != nil {
			return 0, 0, err
		}
		if pmax == 0 {
			return 0, 0, fmt.Errorf("port range end must be 1-65535")
		}
	}
	if pmin > pmax {
		return 0, 0, fmt.Errorf("port range %d-%d is inverted", pmin, pmax)
	}
	return pmin, pmax, nil
}

func parsePort(s string) (uint16, error) {
	if s == "" || len(s) > 5 {
		return 0, fmt.Errorf("port %q is not a number 0-65535", s)
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("port %q is not a number 0-65535", s)
		}
	}
	n, _ := strconv.Atoi(s)
	if n > 65535 {
		return 0, fmt.Errorf("port %d is out of range 0-65535", n)
	}
	return uint16(n), nil
}
