package etap_test

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/torbento/bento/internal/lightbox/etap"
)

// BenchmarkThroughput pushes packets of each size from a gateway to a
// middlebox over TCP loopback (pack, seal, send, receive, open, unpack) and
// reports packet bytes per second.
func BenchmarkThroughput(b *testing.B) {
	for _, size := range []int{64, 512, 1500} {
		b.Run(fmt.Sprintf("pkt=%d", size), func(b *testing.B) {
			gw, mb := pipe(b, etap.Config{PSK: psk}, etap.Options{Batch: 16}, etap.Options{}, nil)
			p := etap.Packet{Time: time.Unix(1, 0), OrigLen: size, Data: make([]byte, size)}
			n := b.N * 64
			b.SetBytes(int64(size) * 64)
			b.ResetTimer()
			go func() {
				for i := 0; i < n; i++ {
					gw.Send(p)
				}
				gw.CloseSend()
			}()
			for i := 0; i < n; i++ {
				if _, err := mb.Recv(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(size*n*8)/b.Elapsed().Seconds()/1e9, "Gbit/s")
		})
	}
}

// BenchmarkAEADBaseline seals and opens the same bytes with AES-256-GCM in
// 16 KiB records and nothing else: the cryptographic floor under etap.
func BenchmarkAEADBaseline(b *testing.B) {
	for _, size := range []int{64, 512, 1500} {
		b.Run(fmt.Sprintf("pkt=%d", size), func(b *testing.B) {
			blk, _ := aes.NewCipher(make([]byte, 32))
			g, _ := cipher.NewGCM(blk)
			rec := make([]byte, etap.DefaultRecordSize)
			perRec := etap.DefaultRecordSize / (size + 16) // packets per record with their headers
			nonce := make([]byte, 12)
			var sealed []byte
			n := b.N * 64
			b.SetBytes(int64(size) * 64)
			b.ResetTimer()
			for done := 0; done < n; done += perRec {
				nonce[11]++
				sealed = g.Seal(sealed[:0], nonce, rec, nil)
				if _, err := g.Open(rec[:0], nonce, sealed, nil); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(size*n*8)/b.Elapsed().Seconds()/1e9, "Gbit/s")
		})
	}
}

// memRW is an in-memory transport for benchmarks: writes go to w, reads
// come from r.
type memRW struct {
	r io.Reader
	w io.Writer
}

func (m memRW) Read(b []byte) (int, error)  { return m.r.Read(b) }
func (m memRW) Write(b []byte) (int, error) { return m.w.Write(b) }
func (m memRW) Close() error                { return nil }

// BenchmarkMiddleboxReceive measures the middlebox's side alone, as
// LightBox measured etap with its gateway on another machine: records a
// gateway sealed beforehand are read from memory, verified, decrypted and
// unpacked into packets.
func BenchmarkMiddleboxReceive(b *testing.B) {
	for _, size := range []int{64, 512, 1500} {
		b.Run(fmt.Sprintf("pkt=%d", size), func(b *testing.B) {
			const pkts = 1 << 15
			p := etap.Packet{Time: time.Unix(1, 0), OrigLen: size, Data: make([]byte, size)}
			b.SetBytes(int64(size) * pkts)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				// A fresh channel per round: a record verifies only once.
				gwSide, mbSide := net.Pipe()
				mbT := &switchRW{rw: mbSide}
				gwT := &switchRW{rw: gwSide}
				ready := make(chan *etap.Conn)
				go func() {
					mb, err := etap.Dial(mbT, etap.Middlebox, etap.Config{PSK: psk}, etap.Options{})
					if err != nil {
						b.Error(err)
					}
					ready <- mb
				}()
				gw, err := etap.Dial(gwT, etap.Gateway, etap.Config{PSK: psk}, etap.Options{})
				if err != nil {
					b.Fatal(err)
				}
				mb := <-ready
				var wire bytes.Buffer
				gwT.set(memRW{w: &wire})
				for j := 0; j < pkts; j++ {
					gw.Send(p)
				}
				gw.CloseSend()
				mbT.set(memRW{r: bytes.NewReader(wire.Bytes()), w: io.Discard})
				b.StartTimer()
				for j := 0; j < pkts; j++ {
					if _, err := mb.Recv(); err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				mb.Close()
				gw.Close()
				b.StartTimer()
			}
			b.ReportMetric(float64(size*pkts*8)*float64(b.N)/b.Elapsed().Seconds()/1e9, "Gbit/s")
		})
	}
}

// switchRW is a transport that can be switched to another after the
// handshake.
type switchRW struct {
	mu sync.Mutex
	rw io.ReadWriteCloser
}

func (s *switchRW) set(rw io.ReadWriteCloser)   { s.mu.Lock(); s.rw = rw; s.mu.Unlock() }
func (s *switchRW) get() io.ReadWriteCloser     { s.mu.Lock(); defer s.mu.Unlock(); return s.rw }
func (s *switchRW) Read(b []byte) (int, error)  { return s.get().Read(b) }
func (s *switchRW) Write(b []byte) (int, error) { return s.get().Write(b) }
func (s *switchRW) Close() error                { return s.get().Close() }

// BenchmarkAEADOpenBaseline opens 16 KiB AES-256-GCM records and nothing
// else: the floor under BenchmarkMiddleboxReceive.
func BenchmarkAEADOpenBaseline(b *testing.B) {
	for _, size := range []int{64, 512, 1500} {
		b.Run(fmt.Sprintf("pkt=%d", size), func(b *testing.B) {
			blk, _ := aes.NewCipher(make([]byte, 32))
			g, _ := cipher.NewGCM(blk)
			nonce := make([]byte, 12)
			sealed := g.Seal(nil, nonce, make([]byte, etap.DefaultRecordSize), nil)
			plain := make([]byte, 0, etap.DefaultRecordSize)
			perRec := etap.DefaultRecordSize / (size + 16)
			n := b.N * 64
			b.SetBytes(int64(size) * 64)
			b.ResetTimer()
			for done := 0; done < n; done += perRec {
				if _, err := g.Open(plain[:0], nonce, sealed, nil); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(size*n*8)/b.Elapsed().Seconds()/1e9, "Gbit/s")
		})
	}
}
