package client

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

// TestOnionNeedsTor: an onion address without a SOCKS dialer fails at
// once, before any name lookup could leak it.
func TestOnionNeedsTor(t *testing.T) {
	const onion = "2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wid.onion:8888"
	for _, tc := range []struct {
		name string
		d    Dialer
	}{
		{"default", nil},
		{"net.Dialer", &net.Dialer{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := New(onion)
			c.Dialer = tc.d
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, err := c.Policy(ctx)
			var ce *ConnError
			if !errors.As(err, &ce) || !strings.Contains(err.Error(), "--tor-socks") {
				t.Fatalf("Policy on %s: %v", onion, err)
			}
		})
	}
}
