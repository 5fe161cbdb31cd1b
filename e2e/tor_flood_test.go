package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/torbento/bento/internal/socks"
	"github.com/torbento/bento/internal/testutil"
)

// torFloodRC is the siege's configuration for a bentod published as an
// onion service, with a pre-hello deadline long enough that only tor
// (MaxStreams) and bentod's onion listener (its total and eviction) can
// end the flood's connections while the test watches. The onion
// listener's total and tor's streams per circuit are small, so that a
// test-sized flood reaches both.
const torFloodRC = `MaxDaemonMemory 384 MB
MaxInFlight 96 MB
HandshakeTimeout 60 s
IdleTimeout 60 s
WriteTimeout 4 s
MaxOnionConnections 16
OnionMaxStreams 4
`

// TestTorOnionFlood: every client of bentod's onion service arrives from
// tor's own address, so per-address shares cannot tell them apart
// (docs/SECURITY.md). Two bounds hold instead, and this drives both
// through the private Tor network against the real tor:
//   - one rendezvous circuit opening more streams than OnionMaxStreams
//     is closed by tor (MaxStreamsCloseCircuit), with every stream on it;
//   - many circuits together never hold more than MaxOnionConnections of
//     bentod's connections: a newcomer evicts the one idle longest before
//     any hello, so an honest client through Tor is still served.
//
// Both run under the siege's invariants (a neighbour timed, memory,
// descriptors, nothing left behind).
func TestTorOnionFlood(t *testing.T) {
	n := tornet(t)
	td := startTorBentodFrom(t, testutil.ReleaseBinaries(t), n.Exits()[2], torFloodRC)
	// The onion service reachable (its descriptor published) before the
	// neighbour's baseline is timed.
	if r := bentoTor(t, n, "run", td.Onion, fn("hello")); r.Code != 0 {
		t.Fatalf("hello through the onion service: %s\nbentod log:\n%s", r, td.log)
	}
	s := siegeOn(t, td.daemon)
	dial := func(ctx context.Context, circuit string) (net.Conn, error) {
		// tor puts streams with different SOCKS credentials on different
		// circuits, and those with the same on one.
		d := &socks.Dialer{Proxy: n.Client().SocksAddr(), Username: circuit, Password: "flood"}
		return d.DialContext(ctx, "tcp", td.Onion)
	}
	// onionOpen is the connections bentod's onion listener holds now.
	onionOpen := func(t *testing.T) int64 {
		st := bentodStatus(t, td.daemon)
		v, ok := st["onion_open"]
		if !ok {
			t.Fatalf("bentod's status has no onion_open")
		}
		return v
	}
	waitOpen := func(t *testing.T, want int64, within time.Duration) {
		t.Helper()
		var got int64
		for deadline := time.Now().Add(within); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
			if got = onionOpen(t); got == want {
				return
			}
		}
		t.Fatalf("bentod's onion listener holds %d connections, want %d", got, want)
	}

	t.Run("one-circuit-max-streams", func(t *testing.T) {
		s.while(t, func() {
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			var held []net.Conn
			defer func() {
				for _, c := range held {
					c.Close()
				}
			}()
			for i := 0; i < 4; i++ {
				c, err := dial(ctx, "one-circuit")
				if err != nil {
					t.Fatalf("stream %d of 4 on one circuit (OnionMaxStreams 4): %v", i+1, err)
				}
				held = append(held, c)
			}
			waitOpen(t, 4, 15*time.Second)
			// The fifth stream: tor closes the circuit, and the four
			// streams on it end. bentod's own deadlines are a minute
			// away: only tor can end them within the 20 s watched.
			if c, err := dial(ctx, "one-circuit"); err == nil {
				held = append(held, c)
			}
			for i, c := range held[:4] {
				// bentod sends nothing before a hello: whatever comes,
				// only the stream's end (or the deadline) stops this.
				c.SetReadDeadline(time.Now().Add(20 * time.Second))
				var err error
				for buf := make([]byte, 512); err == nil; {
					_, err = c.Read(buf)
				}
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					t.Fatalf("stream %d still open 20 s after its circuit's fifth stream: tor did not apply MaxStreams", i+1)
				}
			}
			waitOpen(t, 0, 15*time.Second)
		})
	})

	t.Run("many-circuits-total", func(t *testing.T) {
		const circuits, streams, total = 8, 4, 16
		st0 := bentodStatus(t, td.daemon)
		s.while(t, func() {
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			var (
				mu      sync.Mutex
				held    []net.Conn
				dialErr []string
				wg      sync.WaitGroup
			)
			defer func() {
				for _, c := range held {
					c.Close()
				}
			}()
			for i := 0; i < circuits; i++ {
				for j := 0; j < streams; j++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						c, err := dial(ctx, fmt.Sprintf("flood-%d", i))
						mu.Lock()
						defer mu.Unlock()
						if err != nil {
							dialErr = append(dialErr, err.Error())
							return
						}
						held = append(held, c)
					}()
				}
			}
			// While the circuits are built and their streams arrive,
			// bentod never holds more than its onion total.
			done := make(chan struct{})
			go func() { wg.Wait(); close(done) }()
			var peak int64
			for waiting := true; waiting; {
				select {
				case <-done:
					waiting = false
				case <-time.After(300 * time.Millisecond):
				}
				peak = max(peak, onionOpen(t))
			}
			if len(held) < circuits*streams/2 {
				t.Fatalf("the flood opened only %d of %d streams: %s", len(held), circuits*streams, strings.Join(dialErr, "; "))
			}
			// An honest client through Tor, on a circuit of its own, is
			// served in the middle of the flood.
			if r := bentoTor(t, n, "run", td.Onion, fn("hello")); r.Code != 0 || !strings.Contains(r.Stdout, "hello") {
				t.Errorf("an honest client through the onion service during the flood: %s", r)
			}
			peak = max(peak, onionOpen(t))
			st := bentodStatus(t, td.daemon)
			turnedAway := st["onion_refused"] + st["onion_evicted"] - st0["onion_refused"] - st0["onion_evicted"]
			t.Logf("the flood opened %d streams on %d circuits; bentod held at most %d (MaxOnionConnections %d) and turned %d away", len(held), circuits, peak, total, turnedAway)
			if peak > total {
				t.Errorf("bentod's onion listener held %d connections, over MaxOnionConnections %d", peak, total)
			}
			if turnedAway < int64(len(held)-total) {
				t.Errorf("%d streams reached bentod but only %d were refused or evicted; with a total of %d, at least %d must have been", len(held), turnedAway, total, len(held)-total)
			}
			if !procAlive(td.cmd.Process.Pid) {
				t.Fatalf("bentod is gone:\n%s", td.log)
			}
			for _, c := range held {
				c.Close()
			}
			held = nil
			waitOpen(t, 0, 20*time.Second)
		})
	})
	if t.Failed() && os.Getenv("BENTO_KEEP_PRIVNET") == "" {
		t.Logf("bentod log:\n%s", td.log)
	}
}
