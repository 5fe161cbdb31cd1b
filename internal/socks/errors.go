package socks

import (
	"fmt"
	"net"
	"strings"
)

// SOCKS5 reply codes: RFC 1928's, and tor's onion-service codes
// (proposal 304; tor's src/lib/net/socks5_status.h, SOCKS5_HS_*), which
// tor sends only on a SocksPort with the ExtendedErrors flag.
const (
	CodeGeneralFailure   byte = 0x01
	CodeNotAllowed       byte = 0x02
	CodeNetUnreachable   byte = 0x03
	CodeHostUnreachable  byte = 0x04
	CodeConnRefused      byte = 0x05
	CodeTTLExpired       byte = 0x06
	CodeCmdNotSupported  byte = 0x07
	CodeAddrNotSupported byte = 0x08
	CodeHSNotFound       byte = 0xF0 // descriptor cannot be found
	CodeHSInvalid        byte = 0xF1 // descriptor is invalid
	CodeHSIntroFailed    byte = 0xF2
	CodeHSRendFailed     byte = 0xF3
	CodeHSMissingAuth    byte = 0xF4
	CodeHSBadAuth        byte = 0xF5
	CodeHSBadAddress     byte = 0xF6
	CodeHSIntroTimedOut  byte = 0xF7
)

const (
	extendedErrorsAdvice   = "add the ExtendedErrors flag to tor's SocksPort (SocksPort 127.0.0.1:9050 ExtendedErrors) for the precise reason"
	onionServiceStartsSlow = "an onion service that started in the last minute or two may not have published its descriptor yet"
)

// Error is a SOCKS failure reported by the proxy (tor): the reply code and
// the target asked for. Its message says what happened and what to do.
type Error struct {
	Code   byte
	Target string
}

// explanation is what a reply code means coming from tor, and what to do.
type explanation struct{ what, todo string }

// explain returns what code means for a target (onion or not). The
// standard codes are read as tor uses them (stream_end_reason_to_socks5_response
// in tor's src/core/or/reasons.c): several of tor's reasons share one code.
func explain(code byte, onion bool) explanation {
	switch code {
	case CodeGeneralFailure:
		if onion {
			return explanation{"general failure, tor gave no reason",
				"check that tor has bootstrapped (its log says \"Bootstrapped 100%\") and try again; " + extendedErrorsAdvice}
		}
		return explanation{"general failure (tor gave no reason: no exit would take the stream, the circuit broke, or tor is hibernating or out of resources)",
			"check that tor has bootstrapped (its log says \"Bootstrapped 100%\") and try again"}
	case CodeNotAllowed:
		return explanation{"not allowed: no exit relay's exit policy accepts this address and port (or tor's SocksPolicy refuses it)",
			"reach the server by its onion address, or by an address and port that exits accept"}
	case CodeNetUnreachable:
		return explanation{"the exit relay could not reach the destination's network",
			"check the address; the server may be down or firewalled"}
	case CodeHostUnreachable:
		if onion {
			return explanation{"tor could not find or reach the onion service (its descriptor could not be fetched, or the service did not answer at its introduction points)",
				"check the address; " + onionServiceStartsSlow + "; " + extendedErrorsAdvice}
		}
		return explanation{"the exit relay could not resolve the host name",
			"check the host name, or use the server's IP address or onion address"}
	case CodeConnRefused:
		if onion {
			return explanation{"the onion service is up but refused the connection: nothing listens on that port behind it",
				"check the port (bentod's default is 8888) and that bentod is running"}
		}
		return explanation{"the server refused the connection (or reset it)",
			"check the port (bentod's default is 8888) and that bentod is running"}
	case CodeTTLExpired:
		return explanation{"timed out: tor gave up building a circuit or waiting for the destination",
			"try again; if it persists, check tor's log and its network connection"}
	case CodeCmdNotSupported:
		return explanation{"the proxy does not support the CONNECT command",
			"check that the address is tor's SocksPort (not its ControlPort or an HTTP tunnel port)"}
	case CodeAddrNotSupported:
		return explanation{"tor refused this kind of address on this SocksPort",
			"check the SocksPort's flags (NoIPv4Traffic, NoIPv6Traffic, NoOnionTraffic, OnionTrafficOnly)"}
	case CodeHSNotFound:
		return explanation{"the onion service's descriptor cannot be found on the Tor network",
			"check the address and that the service is running; " + onionServiceStartsSlow}
	case CodeHSInvalid:
		return explanation{"the onion service's descriptor is invalid (it did not parse, or its signature did not verify)",
			"the service or a directory is broken or hostile; tell the service's operator"}
	case CodeHSIntroFailed:
		return explanation{"introduction to the onion service failed: its descriptor was found, but the service no longer answers at its introduction points",
			"the service is restarting or down; try again in a minute"}
	case CodeHSRendFailed:
		return explanation{"rendezvous with the onion service failed: tor could not complete the connection",
			"try again; if it persists, the service or the Tor network is overloaded"}
	case CodeHSMissingAuth:
		return explanation{"the onion service requires client authorization, and tor has no key for it",
			"get a client key from the service's operator and put it in tor's ClientOnionAuthDir"}
	case CodeHSBadAuth:
		return explanation{"the onion service refused tor's client authorization key",
			"check the key in tor's ClientOnionAuthDir with the service's operator"}
	case CodeHSBadAddress:
		return explanation{"tor says the onion address is invalid",
			"check the address: 56 characters of a-z and 2-7, then .onion (16-character v2 addresses no longer work)"}
	case CodeHSIntroTimedOut:
		return explanation{"introduction to the onion service timed out",
			"the service may be overloaded or just starting; try again in a minute"}
	}
	return explanation{"a reply code tor does not send", "check that the address is tor's SocksPort"}
}

// Reason says what happened, without the target or advice.
func (e *Error) Reason() string { return explain(e.Code, e.onion()).what }

func (e *Error) onion() bool { return IsOnion(hostOf(e.Target)) }

func (e *Error) Error() string {
	x := explain(e.Code, e.onion())
	t := e.Target
	if t == "" {
		t = "the destination"
	}
	return fmt.Sprintf("socks: tor could not reach %s [SOCKS reply 0x%02X]: %s; %s", t, e.Code, x.what, x.todo)
}

// Transient reports whether the failure is one a new onion service gives
// while its descriptor spreads, which a later try may not: descriptor not
// found, introduction failed or timed out, and, from a tor without
// ExtendedErrors, "host unreachable" for an onion address (tor's answer
// to both).
func (e *Error) Transient() bool {
	switch e.Code {
	case CodeHSNotFound, CodeHSIntroFailed, CodeHSIntroTimedOut:
		return true
	case CodeHostUnreachable:
		return e.onion()
	}
	return false
}

// IsOnion reports whether host is a name under .onion.
func IsOnion(host string) bool {
	host = strings.TrimSuffix(host, ".")
	return len(host) >= len(".onion") && strings.EqualFold(host[len(host)-len(".onion"):], ".onion")
}

func hostOf(target string) string {
	if h, _, err := net.SplitHostPort(target); err == nil {
		return h
	}
	return target
}
