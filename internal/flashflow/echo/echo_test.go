package echo

import (
	"bytes"
	"errors"
	"io"
	"math"
	"math/rand/v2"
	"strconv"
	"testing"
)

func key(b byte) [KeySize]byte {
	var k [KeySize]byte
	for i := range k {
		k[i] = b + byte(i)
	}
	return k
}

func seed(i uint64) [32]byte {
	var s [32]byte
	for j := range 8 {
		s[j] = byte(i >> (8 * j))
	}
	return s
}

// checker returns a deterministic Checker.
func checker(t testing.TB, bucket int, pick uint64) *Checker {
	t.Helper()
	c, err := newChecker(NewSource(key(1), 7), bucket, seed(pick))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// stream returns the first n bytes of the stream for key(1), connection 7.
func stream(n int) []byte {
	b := make([]byte, n)
	NewSource(key(1), 7).Fill(b)
	return b
}

// maxOutstanding is the documented bound on kept chunks.
func maxOutstanding(inFlight uint64, bucket int) int {
	per := uint64(bucket) * CellData
	return int((inFlight+per-1)/per) + 1
}

func checkBound(t testing.TB, c *Checker) {
	t.Helper()
	if got, max := c.Outstanding(), maxOutstanding(c.InFlight(), int(c.bucket)); got > max {
		t.Fatalf("%d chunks kept with %d bytes in flight, bucket %d: bound is %d", got, c.InFlight(), c.bucket, max)
	}
}

func TestCellBytes(t *testing.T) {
	for _, tc := range []struct{ in, want uint64 }{
		{0, 0},
		{1, 514},
		{497, 514},
		{498, 514},
		{499, 1028},
		{996, 1028},
		{997, 1542},
		{498_000_000, 514_000_000},
		{math.MaxUint64 / 514 * 498, math.MaxUint64 / 514 * 514},
		{math.MaxUint64 - 1000, math.MaxUint64},
		{math.MaxUint64, math.MaxUint64},
	} {
		if got := CellBytes(tc.in); got != tc.want {
			t.Errorf("CellBytes(%d) = %d, want %d", tc.in, got, tc.want)
		}
	}
}

func TestSource(t *testing.T) {
	whole := stream(100000)
	// Any split gives the same stream.
	rng := rand.New(rand.NewPCG(1, 1))
	src := NewSource(key(1), 7)
	var got []byte
	for len(got) < len(whole) {
		b := make([]byte, min(rng.IntN(2000), len(whole)-len(got)))
		src.Fill(b)
		got = append(got, b...)
	}
	if !bytes.Equal(got, whole) {
		t.Fatal("stream depends on how it is read")
	}
	// Another connection or key gives another stream.
	for _, s := range []*Source{NewSource(key(1), 8), NewSource(key(2), 7), NewSource(key(1), 7<<32)} {
		b := make([]byte, 64)
		s.Fill(b)
		if bytes.Equal(b, whole[:64]) {
			t.Errorf("connection %d: same stream as connection 7", s.conn)
		}
	}
}

func TestNewChecker(t *testing.T) {
	for _, n := range []int{-1, 0, MaxBucket + 1} {
		if _, err := NewChecker(NewSource(key(1), 0), n); err == nil {
			t.Errorf("bucket %d accepted", n)
		}
	}
	if _, err := NewChecker(nil, 50); err == nil {
		t.Error("nil Source accepted")
	}
	for _, n := range []int{MinBucket, MaxBucket} {
		if _, err := NewChecker(NewSource(key(1), 0), n); err != nil {
			t.Errorf("bucket %d: %v", n, err)
		}
	}
}

// TestSampling: exactly one kept chunk per bucket, at a uniformly random
// position, and the data kept is the data sent.
func TestSampling(t *testing.T) {
	const n, buckets = 8, 8000
	c := checker(t, n, 1)
	total := n * buckets * CellData
	buf := make([]byte, total)
	c.Sender().Next(buf)
	if !bytes.Equal(buf, stream(total)) {
		t.Fatal("Next does not send the Source's stream")
	}
	if c.Outstanding() != buckets {
		t.Fatalf("%d kept chunks, want %d", c.Outstanding(), buckets)
	}
	var hist [n]int
	for i, s := range c.samples {
		if s.chunk/n != uint64(i) {
			t.Fatalf("kept chunk %d in bucket %d, want bucket %d", s.chunk, s.chunk/n, i)
		}
		if !bytes.Equal(s.data[:], buf[s.chunk*CellData:][:CellData]) {
			t.Fatalf("kept chunk %d differs from the data sent", s.chunk)
		}
		hist[s.chunk%n]++
	}
	// 1000 expected per position, sd ≈ 30.
	for i, h := range hist {
		if h < 850 || h > 1150 {
			t.Errorf("position %d sampled %d times of %d, want about %d", i, h, buckets, buckets/n)
		}
	}
}

// TestSamplingNotFromKey: two Checkers on the same stream (as a target
// knowing the key would compute) keep different chunks.
func TestSamplingNotFromKey(t *testing.T) {
	var kept [2][]uint64
	for i := range kept {
		c, err := NewChecker(NewSource(key(1), 7), 1000)
		if err != nil {
			t.Fatal(err)
		}
		c.Sender().Next(make([]byte, 8*1000*CellData))
		for _, s := range c.samples {
			kept[i] = append(kept[i], s.chunk)
		}
	}
	same := 0
	for i := range kept[0] {
		if kept[0][i] == kept[1][i] {
			same++
		}
	}
	if same == len(kept[0]) {
		t.Errorf("both Checkers kept chunks %v", kept[0])
	}
}

// echoRandomly sends total bytes and echoes them back unchanged, in random
// fragments on both sides, with a random amount in flight, checking the
// memory bound throughout.
func echoRandomly(t *testing.T, rng *rand.Rand, c *Checker, total int, maxFrag int) {
	t.Helper()
	var flight []byte
	sent, verified := 0, 0
	for verified < total {
		if sent < total && (len(flight) == 0 || rng.IntN(2) == 0) {
			b := make([]byte, min(rng.IntN(maxFrag+1), total-sent))
			c.Sender().Next(b)
			flight = append(flight, b...)
			sent += len(b)
		} else {
			k := rng.IntN(len(flight) + 1)
			n, err := c.Receiver().Verify(flight[:k])
			if err != nil || n != k {
				t.Fatalf("Verify(%d bytes) = %d, %v", k, n, err)
			}
			flight = flight[k:]
			verified += k
		}
		checkBound(t, c)
	}
	if c.Sent() != uint64(total) || c.Verified() != uint64(total) || c.InFlight() != 0 || c.Err() != nil {
		t.Fatalf("sent %d verified %d in flight %d err %v", c.Sent(), c.Verified(), c.InFlight(), c.Err())
	}
}

func TestHonestEcho(t *testing.T) {
	rng := rand.New(rand.NewPCG(2, 2))
	for _, n := range []int{1, 2, 3, 50, 125, 1000, MaxBucket} {
		for _, frag := range []int{1, 7, CellData - 1, CellData, CellData + 1, 3 * CellData, 70000} {
			total := 200*CellData + rng.IntN(CellData)
			if frag == 1 {
				total = 20*CellData + 5
			}
			c := checker(t, n, uint64(n*frag))
			echoRandomly(t, rng, c, total, frag)
		}
	}
}

// TestBoundTight: the bound ⌈L/(N·CellData)⌉+1 is reached.
func TestBoundTight(t *testing.T) {
	c := checker(t, 1, 0) // every chunk kept
	c.Sender().Next(make([]byte, CellData+1))
	if _, err := c.Receiver().Verify(stream(CellData)); err != nil {
		t.Fatal(err)
	}
	// One byte in flight; chunk 1 kept but not compared.
	if c.Outstanding() != 1 || c.InFlight() != 1 {
		t.Fatalf("%d kept, %d in flight", c.Outstanding(), c.InFlight())
	}
	c2 := checker(t, 1, 0)
	c2.Sender().Next(make([]byte, CellData+1))
	if _, err := c2.Receiver().Verify(stream(CellData - 1)); err != nil {
		t.Fatal(err)
	}
	// Two bytes in flight, spanning chunks 0 and 1: both kept.
	if c2.Outstanding() != 2 || maxOutstanding(c2.InFlight(), 1) != 2 {
		t.Fatalf("%d kept, %d in flight", c2.Outstanding(), c2.InFlight())
	}
}

// TestConcurrent runs the sender and the receiver in two goroutines over
// a pipe, as a measurer would (run with -race).
func TestConcurrent(t *testing.T) {
	c := checker(t, 3, 5)
	pr, pw := io.Pipe()
	const total = 3 << 20
	go func() {
		rng := rand.New(rand.NewPCG(3, 3))
		buf := make([]byte, 10000)
		for sent := 0; sent < total; {
			b := buf[:min(1+rng.IntN(len(buf)), total-sent)]
			c.Sender().Next(b)
			if _, err := pw.Write(b); err != nil {
				pw.CloseWithError(err)
				return
			}
			sent += len(b)
		}
		pw.Close()
	}()
	rng := rand.New(rand.NewPCG(4, 4))
	buf := make([]byte, 7000)
	verified := 0
	for {
		k, err := pr.Read(buf[:1+rng.IntN(len(buf))])
		if n, verr := c.Receiver().Verify(buf[:k]); verr != nil || n != k {
			t.Fatalf("Verify: %d, %v", n, verr)
		}
		verified += k
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if verified != total || c.Verified() != total {
		t.Fatalf("verified %d of %d", verified, total)
	}
}

// feed verifies echo in random fragments and returns the first error and
// the bytes accepted before it.
func feed(rng *rand.Rand, c *Checker, echo []byte) (int, error) {
	total := 0
	for len(echo) > 0 {
		k := min(1+rng.IntN(2*CellData), len(echo))
		n, err := c.Receiver().Verify(echo[:k])
		if err != nil {
			if n != 0 {
				panic("bytes accepted with an error")
			}
			return total, err
		}
		total += n
		echo = echo[k:]
	}
	return total, nil
}

func TestFlippedByte(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 5))
	const n, buckets = 50, 6
	total := n * buckets * CellData
	for _, bucket := range []int{0, 3, 5} {
		for _, off := range []int{0, 1, 250, CellData - 1} {
			c := checker(t, n, uint64(bucket*1000+off))
			sent := make([]byte, total)
			c.Sender().Next(sent)
			target := c.samples[bucket].chunk
			echo := bytes.Clone(sent)
			echo[int(target)*CellData+off] ^= 0x40
			accepted, err := feed(rng, c, echo)
			var me *MismatchError
			if !errors.As(err, &me) || !errors.Is(err, ErrMismatch) || me.Chunk != target || me.Conn != 7 {
				t.Fatalf("bucket %d offset %d: err = %v, want mismatch in chunk %d", bucket, off, err, target)
			}
			if accepted > int(target)*CellData+off {
				t.Errorf("bucket %d offset %d: %d bytes accepted, past the flipped byte", bucket, off, accepted)
			}
			// Errors are final.
			if k, err2 := c.Receiver().Verify(nil); k != 0 || err2 != err || c.Err() != err {
				t.Errorf("after a mismatch: %d, %v", k, err2)
			}
		}
	}

	// A flipped byte outside the kept chunks goes unnoticed: that is the
	// point of sampling.
	c := checker(t, n, 99)
	sent := make([]byte, total)
	c.Sender().Next(sent)
	kept := map[uint64]bool{}
	for _, s := range c.samples {
		kept[s.chunk] = true
	}
	var other uint64
	for kept[other] {
		other++
	}
	sent[other*CellData] ^= 1
	if _, err := feed(rng, c, sent); err != nil {
		t.Errorf("unsampled chunk: %v", err)
	}
}

// TestAlterEveryChunk: a target that alters everything is caught at the
// first kept chunk.
func TestAlterEveryChunk(t *testing.T) {
	rng := rand.New(rand.NewPCG(6, 6))
	for _, n := range []int{1, 2, 50, 125, 1000} {
		for trial := range 5 {
			c := checker(t, n, uint64(100*n+trial))
			sent := make([]byte, 3*n*CellData)
			c.Sender().Next(sent)
			first := c.samples[0].chunk
			for i := range sent {
				sent[i] = ^sent[i]
			}
			accepted, err := feed(rng, c, sent)
			var me *MismatchError
			if !errors.As(err, &me) || me.Chunk != first {
				t.Fatalf("N=%d: err = %v, want mismatch at the first kept chunk %d", n, err, first)
			}
			if first >= uint64(n) || accepted > int(first)*CellData {
				t.Fatalf("N=%d: caught at chunk %d after %d bytes", n, first, accepted)
			}
		}
	}
}

// TestDetectionRate: a target altering exactly one random chunk in every
// bucket of N = 50 escapes X buckets with probability (49/50)^X.
func TestDetectionRate(t *testing.T) {
	const n, x = 50, 34
	trials := 300
	if testing.Short() {
		trials = 60
	}
	p := 1 - math.Pow(49.0/50.0, x) // ≈ 0.497
	rng := rand.New(rand.NewPCG(7, 7))
	buf := make([]byte, n*CellData)
	caught := 0
	for trial := range trials {
		c := checker(t, n, uint64(1_000_000+trial))
		for range x {
			c.Sender().Next(buf)
			buf[rng.IntN(n)*CellData+rng.IntN(CellData)] ^= byte(1 + rng.IntN(255))
			if _, err := c.Receiver().Verify(buf); err != nil {
				if !errors.Is(err, ErrMismatch) {
					t.Fatal(err)
				}
				caught++
				break
			}
		}
	}
	want := float64(trials) * p
	sd := math.Sqrt(float64(trials) * p * (1 - p))
	t.Logf("caught %d of %d, expected %.1f (sd %.1f)", caught, trials, want, sd)
	if math.Abs(float64(caught)-want) > 5*sd {
		t.Errorf("caught %d of %d, want %.1f ± %.1f", caught, trials, want, 5*sd)
	}
}

func TestExcess(t *testing.T) {
	c := checker(t, 50, 1)
	if _, err := c.Receiver().Verify([]byte{0}); !errors.Is(err, ErrExcess) {
		t.Errorf("echo before any send: %v", err)
	}

	c = checker(t, 50, 1)
	sent := make([]byte, 1000)
	c.Sender().Next(sent)
	if n, err := c.Receiver().Verify(nil); n != 0 || err != nil {
		t.Errorf("empty Verify: %d, %v", n, err)
	}
	if n, err := c.Receiver().Verify(append(bytes.Clone(sent), 0)); n != 0 || !errors.Is(err, ErrExcess) {
		t.Errorf("1001 of 1000: %d, %v", n, err)
	}
	// Final, even once more is sent.
	c.Sender().Next(make([]byte, 10))
	if _, err := c.Receiver().Verify(sent[:1]); !errors.Is(err, ErrExcess) {
		t.Errorf("after excess: %v", err)
	}
	if c.Verified() != 0 {
		t.Errorf("verified %d", c.Verified())
	}

	c = checker(t, 50, 1)
	c.Sender().Next(sent)
	if n, err := c.Receiver().Verify(sent[:600]); n != 600 || err != nil {
		t.Fatal(n, err)
	}
	if _, err := c.Receiver().Verify(sent[:401]); !errors.Is(err, ErrExcess) {
		t.Errorf("600+401 of 1000: %v", err)
	}
}

// FuzzVerify interleaves sends and echoes of arbitrary sizes; the echoed
// stream is the sent one XOR mask (so an empty mask is an honest target),
// and may run past what was sent.
func FuzzVerify(f *testing.F) {
	f.Add(uint16(1), []byte{0, 10, 1, 10}, []byte{})
	f.Add(uint16(50), []byte{0, 255, 0, 255, 1, 3, 1, 255, 1, 255}, []byte{0, 0, 0, 1})
	f.Add(uint16(2), []byte{2, 200, 3, 100, 3, 101}, bytes.Repeat([]byte{0xff}, 1000))
	f.Add(uint16(0), []byte{0, 1}, []byte{})
	f.Add(uint16(65535), []byte{0, 9, 1, 10}, []byte{})
	f.Fuzz(func(t *testing.T, bucket uint16, ops []byte, mask []byte) {
		src := NewSource(key(3), 1)
		c, err := newChecker(src, int(bucket), seed(uint64(len(ops))))
		if bucket == 0 {
			if err == nil {
				t.Fatal("bucket 0 accepted")
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		ref := NewSource(key(3), 1)
		var want []byte // the stream as far as needed
		grow := func(n int) {
			if n > len(want) {
				b := make([]byte, n-len(want))
				ref.Fill(b)
				want = append(want, b...)
			}
		}
		var sent, recv int
		var final error
		for i := 0; i+1 < len(ops); i += 2 {
			size := int(ops[i+1]) * (1 + int(ops[i]>>1)%32) // up to 8160 bytes
			if max(sent, recv)+size > 1<<20 {
				break // keep each input cheap
			}
			if ops[i]&1 == 0 {
				b := make([]byte, size)
				c.Sender().Next(b)
				grow(sent + size)
				if !bytes.Equal(b, want[sent:sent+size]) {
					t.Fatal("Next does not send the stream")
				}
				sent += size
				continue
			}
			grow(recv + size)
			echo := bytes.Clone(want[recv : recv+size])
			altered := -1
			for j := range echo {
				if recv+j < len(mask) && mask[recv+j] != 0 {
					echo[j] ^= mask[recv+j]
					if altered < 0 {
						altered = recv + j
					}
				}
			}
			n, err := c.Receiver().Verify(echo)
			switch {
			case final != nil:
				if err != final || n != 0 {
					t.Fatalf("after %v: %d, %v", final, n, err)
				}
			case err == nil:
				if n != size || recv+size > sent {
					t.Fatalf("accepted %d (asked %d) at %d with %d sent", n, size, recv, sent)
				}
				recv += n
			case errors.Is(err, ErrExcess):
				if n != 0 || recv+size <= sent {
					t.Fatalf("excess: %d, %v at %d+%d with %d sent", n, err, recv, size, sent)
				}
				final = err
			case errors.Is(err, ErrMismatch):
				var me *MismatchError
				errors.As(err, &me)
				lo, hi := int(me.Chunk)*CellData, int(me.Chunk+1)*CellData
				if n != 0 || altered < 0 || recv+size > sent {
					t.Fatalf("mismatch %v: n %d altered %d", err, n, altered)
				}
				// The chunk reported really was altered in what was echoed.
				diff := false
				for j := max(lo, recv); j < min(hi, recv+size); j++ {
					if echo[j-recv] != want[j] {
						diff = true
					}
				}
				if !diff {
					t.Fatalf("false mismatch in chunk %d", me.Chunk)
				}
				final = err
			default:
				t.Fatal(err)
			}
			if got := c.Verified(); got != uint64(recv) || got > c.Sent() {
				t.Fatalf("verified %d, recv %d, sent %d", got, recv, c.Sent())
			}
			checkBound(t, c)
		}
		if c.Sent() != uint64(sent) {
			t.Fatalf("Sent %d, want %d", c.Sent(), sent)
		}
	})
}

func BenchmarkSourceChecker(b *testing.B) {
	for _, n := range []int{1, 50, 125} {
		b.Run("N="+strconv.Itoa(n), func(b *testing.B) {
			c := checker(b, n, 1)
			buf := make([]byte, 32*CellData)
			b.SetBytes(int64(len(buf)))
			b.ReportAllocs()
			for b.Loop() {
				c.Sender().Next(buf)
				if _, err := c.Receiver().Verify(buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkSource(b *testing.B) {
	s := NewSource(key(1), 0)
	buf := make([]byte, 32*CellData)
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		s.Fill(buf)
	}
}
