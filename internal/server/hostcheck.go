package server

import (
	"fmt"
	"strings"

	"github.com/torbento/bento/internal/kvstore"
	"github.com/torbento/bento/internal/manifest"
	"github.com/torbento/bento/internal/policy"
	"github.com/torbento/bento/internal/units"
)

// The checks and the words of the host API that do not need a running
// bentod, shared with bento dev, which emulates the host API on the
// author's machine: what it allows and what it says are bentod's.

// APIFor maps a host-call name onto the policy's API item.
func APIFor(name string) string {
	switch {
	case strings.HasPrefix(name, "storage."):
		return policy.APIStorage
	case strings.HasPrefix(name, "bento."):
		return policy.APIBento
	case name == "tor.event":
		return policy.APITorControl
	case strings.HasPrefix(name, "net."):
		return policy.APINet
	case name == "ends_at":
		return policy.APITime
	case strings.HasPrefix(name, "tor.") && name != "tor.fetch" && name != "tor.control":
		return policy.APITorStream
	}
	return name
}

// CheckCall returns the error bentod answers a host call with when the
// call is unknown, or the manifest's apis or the policy do not allow it;
// nil when both allow it.
func CheckCall(name string, m *manifest.Manifest, p *policy.Policy) error {
	api := APIFor(name)
	switch {
	case !policy.KnownAPI(api):
		return fmt.Errorf("unknown host call %q", truncate(name, 40))
	case !m.Has(api):
		return fmt.Errorf("permission denied: %s() needs %q in the manifest's apis", name, api)
	case !p.APIs[api]:
		return fmt.Errorf("permission denied: this node's policy does not allow %q", api)
	}
	return nil
}

// OutputLimitReason is why an invocation that sent more than its
// instance's output allowance (limit) was stopped.
func OutputLimitReason(limit int64) string {
	return fmt.Sprintf("output limit exceeded (%s held for clients at once)", units.FormatSize(limit))
}

// StorageFullError is storage.put's answer when the value would not fit
// in the instance's storage (limit).
func StorageFullError(limit int64) error {
	return fmt.Errorf("storage limit exceeded (%s, each key counting %d bytes beyond its key and value); delete keys first", units.FormatSize(limit), kvstore.Overhead)
}
