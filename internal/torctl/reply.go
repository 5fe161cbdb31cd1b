package torctl

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Limits on what a reply may hold. The protocol sets none; these are far
// above anything tor sends on a relay (ns/all of the live network is about
// 3 MB) and stop a broken or hostile peer from exhausting memory.
const (
	MaxLineLength = 1 << 20
	MaxReplySize  = 64 << 20
	MaxReplyLines = 1 << 20
)

// Line is one line of a reply.
type Line struct {
	Status int
	// Sep is '-' (more lines follow), '+' (Data follows) or ' ' (last line).
	Sep  byte
	Text string
	// Data is the dot-decoded data block of a '+' line, lines joined by
	// "\n" with a final "\n"; nil otherwise.
	Data []byte
}

// Reply is one complete reply: synchronous, or an asynchronous event
// (Status 650).
type Reply struct {
	Status int
	Lines  []Line
}

// OK reports whether the reply's status is 2xx.
func (r *Reply) OK() bool { return r.Status >= 200 && r.Status < 300 }

// IsEvent reports whether the reply is an asynchronous event.
func (r *Reply) IsEvent() bool { return r.Status == 650 }

// Err returns nil for a 2xx reply and a *StatusError otherwise.
func (r *Reply) Err() error {
	if r.OK() {
		return nil
	}
	msg := ""
	if len(r.Lines) > 0 {
		msg = r.Lines[len(r.Lines)-1].Text
	}
	return &StatusError{Code: r.Status, Msg: msg}
}

// Encode returns the reply's wire form.
func (r *Reply) Encode() []byte {
	var b bytes.Buffer
	for _, l := range r.Lines {
		fmt.Fprintf(&b, "%03d%c%s\r\n", l.Status, l.Sep, l.Text)
		if l.Sep == '+' {
			var lines []string
			if len(l.Data) > 0 {
				lines = strings.Split(strings.TrimSuffix(string(l.Data), "\n"), "\n")
			}
			for _, dl := range lines {
				if strings.HasPrefix(dl, ".") {
					b.WriteByte('.')
				}
				b.WriteString(dl)
				b.WriteString("\r\n")
			}
			b.WriteString(".\r\n")
		}
	}
	return b.Bytes()
}

// StatusError is a non-2xx reply.
type StatusError struct {
	Code int
	Msg  string
}

func (e *StatusError) Error() string { return fmt.Sprintf("tor: %d %s", e.Code, e.Msg) }

// ErrProtocol wraps every malformed-reply error.
var ErrProtocol = errors.New("torctl: malformed reply")

func protoErr(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrProtocol, fmt.Sprintf(format, a...))
}

// readLine reads one line ending in LF (CR before it dropped), with a
// length limit.
func readLine(r *bufio.Reader) (string, error) {
	var buf []byte
	for {
		frag, err := r.ReadSlice('\n')
		buf = append(buf, frag...)
		if len(buf) > MaxLineLength {
			return "", protoErr("line longer than %d bytes", MaxLineLength)
		}
		if err == nil {
			break
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if errors.Is(err, io.EOF) && len(buf) > 0 {
			return "", io.ErrUnexpectedEOF
		}
		return "", err
	}
	buf = buf[:len(buf)-1]
	buf = bytes.TrimSuffix(buf, []byte{'\r'})
	return string(buf), nil
}

// ReadReply reads one reply. Lines of a reply must share its status code.
func ReadReply(r *bufio.Reader) (*Reply, error) {
	rep := &Reply{}
	size := 0
	for {
		s, err := readLine(r)
		if err != nil {
			if len(rep.Lines) > 0 && errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		if len(s) < 4 {
			return nil, protoErr("short line %q", s)
		}
		code, err := strconv.Atoi(s[:3])
		if err != nil || s[0] < '1' || s[0] > '9' || strings.ContainsAny(s[:3], "+- ") {
			return nil, protoErr("bad status code in %q", s)
		}
		if len(rep.Lines) > 0 && code != rep.Status {
			return nil, protoErr("status %d inside a %d reply", code, rep.Status)
		}
		rep.Status = code
		l := Line{Status: code, Sep: s[3], Text: s[4:]}
		size += len(s)
		switch l.Sep {
		case ' ', '-':
		case '+':
			var data bytes.Buffer
			for {
				d, err := readLine(r)
				if err != nil {
					if errors.Is(err, io.EOF) {
						err = io.ErrUnexpectedEOF
					}
					return nil, err
				}
				if d == "." {
					break
				}
				d = strings.TrimPrefix(d, ".")
				data.WriteString(d)
				data.WriteByte('\n')
				size += len(d) + 1
				if size > MaxReplySize {
					return nil, protoErr("reply larger than %d bytes", MaxReplySize)
				}
			}
			l.Data = data.Bytes()
			if l.Data == nil {
				l.Data = []byte{}
			}
		default:
			return nil, protoErr("bad separator %q in %q", l.Sep, s)
		}
		if size > MaxReplySize {
			return nil, protoErr("reply larger than %d bytes", MaxReplySize)
		}
		rep.Lines = append(rep.Lines, l)
		if len(rep.Lines) > MaxReplyLines {
			return nil, protoErr("more than %d lines in a reply", MaxReplyLines)
		}
		if l.Sep == ' ' {
			return rep, nil
		}
	}
}

// KVs holds the KEY=VALUE arguments of a reply line, values unquoted.
type KVs map[string]string

// ParseLine splits a reply line or event into positional words (before the
// first KEY=VALUE) and keyword arguments. Values may be quoted. It is
// lenient in what it accepts beyond that, as the spec asks of controllers,
// and never fails on valid input from tor; it returns an error for
// unterminated quotes.
func ParseLine(text string) (words []string, kv KVs, err error) {
	kv = KVs{}
	for i := 0; i < len(text); {
		if text[i] == ' ' {
			i++
			continue
		}
		j := i
		for j < len(text) && text[j] != ' ' && text[j] != '=' && text[j] != '"' {
			j++
		}
		if j < len(text) && text[j] == '=' {
			key := text[i:j]
			j++
			if j < len(text) && text[j] == '"' {
				v, n, err := Unquote(text[j:])
				if err != nil {
					return nil, nil, protoErr("%v in %q", err, text)
				}
				kv[key] = v
				i = j + n
				continue
			}
			k := j
			for k < len(text) && text[k] != ' ' {
				k++
			}
			kv[key] = text[j:k]
			i = k
			continue
		}
		if j < len(text) && text[j] == '"' && j == i {
			v, n, err := Unquote(text[j:])
			if err != nil {
				return nil, nil, protoErr("%v in %q", err, text)
			}
			words = append(words, v)
			i = j + n
			continue
		}
		for j < len(text) && text[j] != ' ' {
			j++
		}
		words = append(words, text[i:j])
		i = j
	}
	return words, kv, nil
}

// GetInfo returns the values of a GETINFO reply, keyed by the requested key.
func (r *Reply) GetInfo() map[string]string {
	out := map[string]string{}
	for _, l := range r.Lines {
		k, v, ok := strings.Cut(l.Text, "=")
		if !ok {
			continue
		}
		if l.Sep == '+' {
			out[k] = strings.TrimSuffix(string(l.Data), "\n")
		} else {
			out[k] = v
		}
	}
	return out
}
