// Package safelog builds bentod's logger: tor-style levels (err, warn,
// notice, info, debug) on log/slog, with addresses scrubbed unless the
// operator turns SafeLogging off, as tor's SafeLogging does. Secrets
// (tokens, keys, function payloads) are never passed to the logger at all.
package safelog

import (
	"context"
	"io"
	"log/slog"
	"sync/atomic"
)

var unsafe atomic.Bool

// SetSafe turns address scrubbing on (the default) or off.
func SetSafe(on bool) { unsafe.Store(!on) }

// Addr is a network address that is logged as "[scrubbed]" under
// SafeLogging.
type Addr string

// LogValue implements slog.LogValuer.
func (a Addr) LogValue() slog.Value {
	if unsafe.Load() {
		return slog.StringValue(string(a))
	}
	return slog.StringValue("[scrubbed]")
}

// LevelNotice sits between info and warn, as in tor.
const LevelNotice = slog.Level(2)

// ParseLevel maps tor's level names onto slog levels.
func ParseLevel(s string) slog.Level {
	switch s {
	case "err":
		return slog.LevelError
	case "warn":
		return slog.LevelWarn
	case "info":
		return slog.LevelInfo
	case "debug":
		return slog.LevelDebug
	}
	return LevelNotice
}

// New returns a text logger at the given tor level name.
func New(w io.Writer, level string) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{
		Level:       ParseLevel(level),
		ReplaceAttr: torLevels,
	}))
}

// torLevels names a record's level with tor's severities.
func torLevels(_ []string, a slog.Attr) slog.Attr {
	if a.Key == slog.LevelKey {
		switch l := a.Value.Any().(slog.Level); {
		case l >= slog.LevelError:
			a.Value = slog.StringValue("err")
		case l >= slog.LevelWarn:
			a.Value = slog.StringValue("warn")
		case l >= LevelNotice:
			a.Value = slog.StringValue("notice")
		case l >= slog.LevelInfo:
			a.Value = slog.StringValue("info")
		default:
			a.Value = slog.StringValue("debug")
		}
	}
	return a
}

// Notice logs at notice level.
func Notice(l *slog.Logger, msg string, args ...any) {
	l.Log(context.Background(), LevelNotice, msg, args...)
}
