// Package v3bw writes, reads and keeps tor bandwidth files ("v3bw" files,
// bandwidth-file-spec.txt format 1.x), the file a directory authority
// names with V3BandwidthsFile and reads every time it builds a vote.
//
// # Units
//
// Callers give bandwidths in bytes per second ([Relay.Bandwidth],
// [Relay.Advertised]); the file carries kilobytes per second (1 KB =
// 1000 bytes), which is what tor reads. [Encode] writes
// bw = max(1, round(Bandwidth/1000)) and then, when Advertised is known,
// caps it at max(1, floor(Advertised/1000)) (the spec says generators MUST
// limit a relay to its descriptor's bandwidth-avg); the uncapped figure is
// kept in a bw_uncapped key. [Line.BW] as decoded is in KB/s.
//
// # What Encode writes (format 1.5.0)
//
//	1700000000                       <- newest result, Unix seconds
//	version=1.5.0
//	software=bento
//	software_version=...
//	file_created=2023-11-14T22:13:20
//	generator_started=...
//	earliest_bandwidth=...
//	latest_bandwidth=2023-11-14T22:13:20   <- same instant as line 1
//	=====
//	bw=1234 node_id=$<40 HEX> [master_key_ed25519=..] [nick=..] measured_at=<unix> time=<DateTime> [extra keys, sorted]
//
// Relay lines are sorted by node_id and every line ends in "\n". A file
// needs at least one measured relay: the spec says a generator MUST NOT
// write a file without recent results, so Encode returns [ErrNoResults].
//
// # How tor reads the file (and how Decode follows it)
//
// tor (src/feature/dirauth/bwauth.c) reads the first line as a Unix
// timestamp and ignores the whole file if it is missing, not an integer, or
// more than 3 days old ([MaxAge]; see [File.Stale]). Each later line is
// split into tokens on space or TAB (leading whitespace allowed); tokens
// may come in any order and unknown ones, even ones without "=", are
// ignored. A relay line is used only if it has exactly one
// "node_id=$" + 40 hex digits (either case) and exactly one "bw=" with a
// base-10 integer in 0..2^63-1, and ends in "\n". A line with a token
// starting "vote=0" is skipped. Before the first relay line or the
// "=====" terminator, single-token Key=Value lines without spaces are
// header lines; tor copies at most 50 of them, together with
// "timestamp=<line 1>", into its vote, and the space-joined copy must be
// at most 1024 bytes ([MaxHeaderLines], [MaxVoteHeaderLen]). tor ignores a
// bad line, never the rest of the file.
//
// [Decode] is strict: any line tor would drop, and any line the spec
// forbids (duplicate relays, duplicate keys, malformed header lines,
// latest_bandwidth different from the timestamp, a version other than
// 1.x, ...) is an error naming the line number and the problem.
// [DecodeLenient] reads like tor: it drops what tor drops and returns it,
// with anything else non-conforming, as warnings. Both keep "vote=0"
// lines, marked with [Line.Vote] false, as long as they are otherwise
// well formed. Both accept format 1.0.0 (a timestamp line followed by
// relay lines) and the legacy 4-character terminator "====".
//
// Decode is somewhat stricter than tor on numbers: timestamp and bw must
// be plain ASCII digits (tor's strtol/strtoul also take a leading "+" or
// whitespace, and whitespace after bw), the timestamp must be in
// 1..[MaxTimestamp], and bw at most 2^63-1 (tor's LONG_MAX). Input is
// bounded: at most [MaxFileSize] bytes and [MaxLineLen] bytes per line.
//
// # Files on disk
//
// [Dir] keeps the archive: Dir.Write writes v3bw.YYYYMMDD-HHMMSS
// atomically, points the symlink "v3bw" (what V3BandwidthsFile should
// name) at it, then Dir.Prune gzips and deletes old files by the time in
// their names. [ReadFile] reads a plain or gzipped file.
package v3bw

import "time"

// Format and input limits.
const (
	// SpecVersion is the bandwidth-file-spec version Encode writes.
	SpecVersion = "1.5.0"

	// DefaultSoftware is written as software= when Header.Software is
	// empty.
	DefaultSoftware = "bento"

	// Terminator ends the header list. Decode also accepts the legacy
	// LegacyTerminator.
	Terminator       = "====="
	LegacyTerminator = "===="

	// MaxFileSize bounds the bytes Decode accepts and ReadFile reads
	// (after decompression) and the size Encode produces.
	MaxFileSize = 64 << 20

	// MaxLineLen bounds one line, without its "\n".
	MaxLineLen = 64 << 10

	// MaxTimestamp is the largest Unix time accepted for the timestamp
	// line and for measured_at (2106-02-07T06:28:15Z). It is 2^32-1, the
	// largest value tor's tor_parse_ulong(..., ULONG_MAX) takes on every
	// platform (unsigned long is 32 bits on some), and far enough ahead
	// that only a broken clock or a corrupt file gets near it. Freshness
	// against the current time is a separate check: File.Stale and the
	// file_created checks in Encode.
	MaxTimestamp = 1<<32 - 1

	// MaxBW is the largest bw tor accepts (LONG_MAX on 64-bit builds).
	MaxBW = 1<<63 - 1

	// MaxHeaderLines is how many header lines tor copies into its vote.
	MaxHeaderLines = 50

	// MaxVoteHeaderLen bounds "timestamp=<ts> k=v k=v ...", the header
	// string tor puts in its vote (MAX_BW_FILE_HEADERS_LINE_LEN); past it
	// tor logs a bug and votes an empty header.
	MaxVoteHeaderLen = 1024

	// MaxAge is how old the timestamp may be before tor ignores the file
	// (MAX_MEASUREMENT_AGE).
	MaxAge = 3 * 24 * time.Hour

	// MaxClockSkew is how far a relay's MeasuredAt may be after
	// Header.FileCreated before Encode calls it a clock error.
	MaxClockSkew = 5 * time.Minute

	// DateTimeLayout is the spec's DateTime (always UTC).
	DateTimeLayout = "2006-01-02T15:04:05"
)
