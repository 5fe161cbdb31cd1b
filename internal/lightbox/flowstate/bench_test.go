package flowstate

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"fmt"
	"math/rand"
	"testing"
	"time"
)

const benchState = 512 // PRADS-like per-flow state

// accesses returns a skewed (Zipf) sequence of flow numbers below n, as
// real traffic has a small working set of busy flows.
func accesses(n, count int) []int {
	rng := rand.New(rand.NewSource(1))
	z := rand.NewZipf(rng, 1.1, 8, uint64(n-1))
	out := make([]int, count)
	for i := range out {
		out[i] = int(z.Uint64())
	}
	return out
}

var flowCounts = []int{10_000, 100_000, 1_000_000}

// BenchmarkManager: Lookup and update one state per operation, 4096 or
// 65,536 states cached, the rest sealed in a MemStore.
func BenchmarkManager(b *testing.B) {
	for _, n := range flowCounts {
		for _, v := range []struct {
			name  string
			cache int
		}{{"cache=4k", 4096}, {"cache=64k", 65536}} {
			b.Run(fmt.Sprintf("flows=%d/%s", n, v.name), func(b *testing.B) {
				m, _ := New(Config{StateSize: benchState, CacheEntries: v.cache, ExpectedFlows: n})
				defer m.Close()
				keys := make([]Key, n)
				now := time.Unix(0, 0)
				for i := range keys {
					keys[i] = key(i)
					m.Lookup(keys[i], now)
				}
				seq := accesses(n, 1<<20)
				for _, i := range seq { // warm the cache with the working set
					m.Lookup(keys[i], now)
				}
				m.Stats = Stats{}
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					j := i & (1<<20 - 1)
					st, _, err := m.Lookup(keys[seq[j]], now)
					if err != nil {
						b.Fatal(err)
					}
					st[0]++
				}
				b.ReportMetric(float64(m.Stats.Hits)/float64(m.Stats.Hits+m.Stats.SwapIns), "hit-rate")
			})
		}
	}
}

// BenchmarkPlainMap is the baseline: every state in an ordinary map, no
// sealing, no bound on trusted memory.
func BenchmarkPlainMap(b *testing.B) {
	for _, n := range flowCounts {
		b.Run(fmt.Sprintf("flows=%d", n), func(b *testing.B) {
			mp := make(map[Key][]byte, n)
			keys := make([]Key, n)
			for i := range keys {
				keys[i] = key(i)
				mp[keys[i]] = make([]byte, benchState)
			}
			seq := accesses(n, 1<<20)
			for _, i := range seq {
				mp[keys[i]][1]++
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				mp[keys[seq[i&(1<<20-1)]]][0]++
			}
		})
	}
}

// BenchmarkStrawman seals every state and opens and re-seals it at every
// access: protection without a trusted cache.
func BenchmarkStrawman(b *testing.B) {
	for _, n := range flowCounts {
		b.Run(fmt.Sprintf("flows=%d", n), func(b *testing.B) {
			blk, _ := aes.NewCipher(make([]byte, 32))
			g, _ := cipher.NewGCM(blk)
			var ctr uint64
			nonce := make([]byte, 12)
			seal := func(dst, st []byte, k *Key) []byte {
				ctr++
				binary.BigEndian.PutUint64(nonce[4:], ctr)
				dst = append(dst[:0], nonce...)
				return g.Seal(dst, nonce, st, k[:])
			}
			mp := make(map[Key][]byte, n)
			keys := make([]Key, n)
			zero := make([]byte, benchState)
			for i := range keys {
				keys[i] = key(i)
				mp[keys[i]] = seal(nil, zero, &keys[i])
			}
			seq := accesses(n, 1<<20)
			st := make([]byte, 0, benchState)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				k := &keys[seq[i&(1<<20-1)]]
				blob := mp[*k]
				plain, err := g.Open(st[:0], blob[:12], blob[12:], k[:])
				if err != nil {
					b.Fatal(err)
				}
				plain[0]++
				mp[*k] = seal(blob, plain, k)
			}
		})
	}
}
