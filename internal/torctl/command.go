// Package torctl is a strict client for tor's control protocol
// (control-spec.txt): commands are built from typed, validated arguments so
// that nothing a caller passes can smuggle a second command (CR, LF, NUL or
// stray quotes are rejected, never escaped away); replies, multi-line data
// and asynchronous events are parsed with explicit size limits; SAFECOOKIE,
// COOKIE and HASHEDPASSWORD authentication are supported; and Keeper holds
// a connection open across tor restarts.
//
// The same reply and argument parsers are used by the control-port
// firewall (package torfw), so what the firewall checks is exactly what tor
// will read.
package torctl

import (
	"errors"
	"fmt"
	"strings"
)

// Command is one control-protocol command. Build it with NewCommand; the
// zero value is invalid.
type Command struct {
	keyword string
	args    []string
	data    []byte // for "+KEYWORD" multi-line commands; nil otherwise
}

// Keyword returns the command's keyword, upper-cased.
func (c Command) Keyword() string { return c.keyword }

// Args returns the command's arguments as they will be sent.
func (c Command) Args() []string { return append([]string(nil), c.args...) }

// Data returns the data block of a multi-line command (nil if none).
func (c Command) Data() []byte { return c.data }

// NewCommand builds a command. keyword must be letters, digits and '_'
// (ADD_ONION). Each argument must be a plain token (printable ASCII without
// spaces or quotes) or come from Quote / KV, which quote safely; anything
// else, above all CR or LF, is an error.
func NewCommand(keyword string, args ...string) (Command, error) {
	if !validKeyword(keyword) {
		return Command{}, fmt.Errorf("torctl: invalid command keyword %q", keyword)
	}
	for i, a := range args {
		if err := ValidArg(a); err != nil {
			return Command{}, fmt.Errorf("torctl: %s argument %d: %w", strings.ToUpper(keyword), i+1, err)
		}
	}
	return Command{keyword: strings.ToUpper(keyword), args: append([]string(nil), args...)}, nil
}

// MustCommand is NewCommand for constant commands; it panics on error.
func MustCommand(keyword string, args ...string) Command {
	c, err := NewCommand(keyword, args...)
	if err != nil {
		panic(err)
	}
	return c
}

// WithData returns a copy of c sent as a multi-line command ("+KEYWORD")
// carrying data, dot-stuffed on the wire.
func (c Command) WithData(data []byte) Command {
	c.data = append([]byte{}, data...)
	return c
}

// Encode returns the command's wire form, CRLF-terminated.
func (c Command) Encode() []byte {
	var b strings.Builder
	if c.data != nil {
		b.WriteByte('+')
	}
	b.WriteString(c.keyword)
	for _, a := range c.args {
		b.WriteByte(' ')
		b.WriteString(a)
	}
	b.WriteString("\r\n")
	if c.data != nil {
		for _, line := range strings.Split(strings.TrimSuffix(string(c.data), "\n"), "\n") {
			line = strings.TrimSuffix(line, "\r")
			if strings.HasPrefix(line, ".") {
				b.WriteByte('.')
			}
			b.WriteString(line)
			b.WriteString("\r\n")
		}
		b.WriteString(".\r\n")
	}
	return []byte(b.String())
}

// String is the command as sent, without the line end and with data
// omitted; arguments of AUTHENTICATE are elided (they are secrets).
func (c Command) String() string {
	if c.keyword == "AUTHENTICATE" && len(c.args) > 0 {
		return "AUTHENTICATE [scrubbed]"
	}
	return strings.Join(append([]string{c.keyword}, c.args...), " ")
}

func validKeyword(k string) bool {
	if k == "" || len(k) > 64 {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// ErrUnsafe is wrapped by argument errors.
var ErrUnsafe = errors.New("unsafe control-protocol argument")

// ValidArg reports whether a is a safe single argument: either a plain
// token of printable ASCII other than space and '"', or such a token
// followed by one complete QuotedString (KEY="value") with nothing after it.
func ValidArg(a string) error {
	if a == "" {
		return fmt.Errorf("%w: empty", ErrUnsafe)
	}
	q := strings.IndexByte(a, '"')
	head := a
	if q >= 0 {
		head = a[:q]
	}
	for i := 0; i < len(head); i++ {
		if c := head[i]; c <= ' ' || c > '~' {
			return fmt.Errorf("%w: byte 0x%02x in %q", ErrUnsafe, c, a)
		}
	}
	if q < 0 {
		return nil
	}
	_, n, err := Unquote(a[q:])
	if err != nil {
		return fmt.Errorf("%w: %v", ErrUnsafe, err)
	}
	if q+n != len(a) {
		return fmt.Errorf("%w: text after the closing quote in %q", ErrUnsafe, a)
	}
	// A quoted string may hold any byte but line ends and NUL.
	if strings.ContainsAny(a, "\r\n\x00") {
		return fmt.Errorf("%w: line end or NUL in %q", ErrUnsafe, a)
	}
	return nil
}

// Quote returns s as a QuotedString. It fails for CR, LF and NUL, which no
// legitimate argument contains.
func Quote(s string) (string, error) {
	if strings.ContainsAny(s, "\r\n\x00") {
		return "", fmt.Errorf("%w: line end or NUL in %q", ErrUnsafe, s)
	}
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		if s[i] == '"' || s[i] == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	b.WriteByte('"')
	return b.String(), nil
}

// KV returns key=value, quoting value when it is not a plain token.
func KV(key, value string) (string, error) {
	if !validKeyword(key) && !strings.Contains(key, "/") {
		return "", fmt.Errorf("%w: key %q", ErrUnsafe, key)
	}
	if plain(value) {
		return key + "=" + value, nil
	}
	q, err := Quote(value)
	if err != nil {
		return "", err
	}
	return key + "=" + q, nil
}

func plain(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c > '~' || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// Unquote reads a QuotedString (or CString, see control-spec §2.1.1) at the
// start of s and returns its value and the number of bytes it used. \n, \t,
// \r and octal escapes are read as C escapes; any other escaped character
// stands for itself.
func Unquote(s string) (string, int, error) {
	if len(s) == 0 || s[0] != '"' {
		return "", 0, errors.New("quoted string must start with '\"'")
	}
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		c := s[i]
		switch c {
		case '"':
			return b.String(), i + 1, nil
		case '\\':
			i++
			if i >= len(s) {
				return "", 0, errors.New("quoted string ends in a backslash")
			}
			switch e := s[i]; {
			case e == 'n':
				b.WriteByte('\n')
			case e == 't':
				b.WriteByte('\t')
			case e == 'r':
				b.WriteByte('\r')
			case e >= '0' && e <= '7':
				v, j := 0, i
				for j < len(s) && j < i+3 && s[j] >= '0' && s[j] <= '7' {
					v = v*8 + int(s[j]-'0')
					j++
				}
				if v > 255 {
					return "", 0, errors.New("octal escape out of range")
				}
				b.WriteByte(byte(v))
				i = j - 1
			default:
				b.WriteByte(e)
			}
		default:
			b.WriteByte(c)
		}
	}
	return "", 0, errors.New("unterminated quoted string")
}
