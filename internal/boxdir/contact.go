package boxdir

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ContactKey is the ContactInfo field that announces a box:
// "bentobox:ADDRESS.onion:PORT".
const ContactKey = "bentobox"

// Announcement is a box as its relay's ContactInfo announces it.
type Announcement struct {
	Onion string // 56 base32 characters, lower case, without ".onion"
	Port  int
}

// Addr is the box's address, "ADDRESS.onion:PORT".
func (a Announcement) Addr() string { return a.Onion + ".onion:" + strconv.Itoa(a.Port) }

// ContactField formats the announcement as a ContactInfo field.
func (a Announcement) ContactField() string { return ContactKey + ":" + a.Addr() }

// ErrNoBox is returned by ParseContact for a ContactInfo that announces no
// box.
var ErrNoBox = errors.New("no bentobox field")

// MaxContact bounds the ContactInfo read (tor's own limit on a descriptor
// line is larger; real ContactInfo lines are short).
const MaxContact = 4096

// ParseContact finds the box a relay's ContactInfo announces: exactly one
// "bentobox:" field among space-separated fields, holding a valid v3 onion
// address and a port.
func ParseContact(contact string) (Announcement, error) {
	if len(contact) > MaxContact {
		return Announcement{}, fmt.Errorf("ContactInfo of %d bytes: at most %d are read", len(contact), MaxContact)
	}
	var found []string
	for _, f := range strings.Fields(contact) {
		k, v, ok := strings.Cut(f, ":")
		if ok && strings.EqualFold(k, ContactKey) {
			found = append(found, v)
		}
	}
	switch len(found) {
	case 0:
		return Announcement{}, ErrNoBox
	case 1:
	default:
		return Announcement{}, fmt.Errorf("ContactInfo announces %d boxes; a relay announces at most one", len(found))
	}
	i := strings.LastIndexByte(found[0], ':')
	host, port := "", ""
	if i >= 0 {
		host, port = found[0][:i], found[0][i+1:]
	}
	if len(host) != 56+len(".onion") || !strings.EqualFold(host[56:], ".onion") || strings.Contains(host[:56], ".") {
		return Announcement{}, fmt.Errorf("%s field %q: want ADDRESS.onion:PORT (a 56-character v3 address)", ContactKey, truncate(found[0], 80))
	}
	host = host[:56]
	if _, err := OnionKey(host); err != nil {
		return Announcement{}, fmt.Errorf("%s field: %w", ContactKey, err)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 1 || p > 65535 || strconv.Itoa(p) != port {
		return Announcement{}, fmt.Errorf("%s field: port %q: want 1-65535", ContactKey, truncate(port, 20))
	}
	return Announcement{Onion: strings.ToLower(host), Port: p}, nil
}

// WithField returns contact with its bentobox fields replaced by field
// (removed when field is ""), the operator's other fields kept in order.
func WithField(contact, field string) string {
	var out []string
	for _, f := range strings.Fields(contact) {
		if k, _, ok := strings.Cut(f, ":"); ok && strings.EqualFold(k, ContactKey) {
			continue
		}
		out = append(out, f)
	}
	if field != "" {
		out = append(out, field)
	}
	return strings.Join(out, " ")
}
