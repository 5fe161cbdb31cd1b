package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/torbento/bento/client"
	"github.com/torbento/bento/internal/socks"
)

// torClient returns a client of addr through the network's Tor client,
// with fresh SOCKS credentials: a circuit of its own, as a new user gets.
func torClient(socksAddr, addr, user string) *client.Client {
	cl := client.New(addr)
	cl.Dialer = &socks.Dialer{Proxy: socksAddr, Username: user, Password: "x"}
	return cl
}

// deployOverTor deploys a shipped function on an onion server, retrying
// while the service's descriptor is still spreading; the instance is shut
// down when the benchmark ends.
func deployOverTor(b *testing.B, socksAddr, onion, name string) *client.Deployed {
	fnc, err := client.LoadFunction(fn(name))
	if err != nil {
		b.Fatal(err)
	}
	setup := torClient(socksAddr, onion, "setup")
	var dep *client.Deployed
	for i := 0; i < 30; i++ {
		if dep, err = setup.Deploy(context.Background(), fnc); err == nil {
			break
		}
		time.Sleep(time.Second)
	}
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { setup.Shutdown(context.Background(), dep.ShutdownToken) })
	return dep
}

// BenchmarkTorPageFetch compares, on the private Tor network, a page fetch
// by a plain client through Tor (SOCKS → exit → web server) with the same
// page fetched by the Browser function: client → Tor → bentod's onion
// service → Browser → Tor exit → web server, padded to a multiple of 64 KiB,
// back through the onion service. Sizes are the paper's padding sizes.
//
//	go test -run '^$' -bench TorPageFetch -benchtime 5x ./e2e
func BenchmarkTorPageFetch(b *testing.B) {
	n := tornet(b)
	a := startTorBentod(b, n.Exits()[0])
	ctx := context.Background()
	// Wait until the onion service is reachable.
	deployOverTor(b, n.Client().SocksAddr(), a.Onion, "browser-tor")
	fnc, err := client.LoadFunction(fn("browser-tor"))
	if err != nil {
		b.Fatal(err)
	}
	for _, size := range []int{1 << 20, 7 << 20} {
		body := page(size)
		base, _ := webServer(b, body)
		name := fmt.Sprintf("%dMB", size>>20)
		b.Run("plain-"+name, func(b *testing.B) {
			b.SetBytes(int64(size))
			for i := 0; i < b.N; i++ {
				d := &socks.Dialer{Proxy: n.Client().SocksAddr(), Username: fmt.Sprintf("plain-%d-%d", size, i), Password: "x"}
				cl := &http.Client{Transport: &http.Transport{DialContext: d.DialContext}, Timeout: 2 * time.Minute}
				resp, err := cl.Get(base + "/page")
				if err != nil {
					b.Fatal(err)
				}
				got, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || len(got) != size {
					b.Fatalf("got %d bytes: %v", len(got), err)
				}
			}
		})
		b.Run("browser-"+name, func(b *testing.B) {
			b.SetBytes(int64(size))
			for i := 0; i < b.N; i++ {
				// Browser is one-shot: each page is a deploy and an
				// invocation, as "bento run" does.
				cl := torClient(n.Client().SocksAddr(), a.Onion, fmt.Sprintf("browser-%d-%d", size, i))
				dep, err := cl.Deploy(ctx, fnc)
				if err != nil {
					b.Fatal(err)
				}
				out, err := cl.Call(ctx, dep.InvocationToken, base+"/page", 65536, "tor")
				if err != nil {
					b.Fatal(err)
				}
				if len(out) < size+16 || len(out)%65536 != 0 {
					b.Fatalf("got %d bytes", len(out))
				}
			}
		})
	}
}

// BenchmarkTorOnionFirstByte: a new user (fresh circuits) deploys hello
// over bentod's onion service (rendezvous included), then invokes it: the
// time from the invocation to the first output byte (median-ms), and from
// the start of the deploy (median-with-deploy-ms).
//
//	go test -run '^$' -bench TorOnionFirstByte -benchtime 10x ./e2e
func BenchmarkTorOnionFirstByte(b *testing.B) {
	n := tornet(b)
	a := startTorBentod(b, n.Exits()[0])
	ctx := context.Background()
	deployOverTor(b, n.Client().SocksAddr(), a.Onion, "hello")
	fnc, err := client.LoadFunction(fn("hello"))
	if err != nil {
		b.Fatal(err)
	}
	var lat, total []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		cl := torClient(n.Client().SocksAddr(), a.Onion, fmt.Sprintf("ttfb-%d", i))
		t0 := time.Now()
		dep, err := cl.Deploy(ctx, fnc)
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		s, err := cl.Invoke(ctx, dep.InvocationToken, "bench")
		if err != nil {
			b.Fatal(err)
		}
		if data, _, err := s.Recv(); err != nil || len(data) == 0 {
			b.Fatalf("first output: %q %v", data, err)
		}
		lat = append(lat, time.Since(start))
		total = append(total, time.Since(t0))
		s.Close()
	}
	reportMedian(b, lat)
	b.ReportMetric(float64(median(total).Microseconds())/1000, "median-with-deploy-ms")
}
