package etap

// byteQueue is a FIFO of bytes: appended at the back, consumed from the
// front. Consumed space is reclaimed by moving the unconsumed bytes to the
// front once they are fewer than the consumed ones, so each byte is moved
// at most a constant number of times on average.
type byteQueue struct {
	buf []byte
	off int
}

func (q *byteQueue) Len() int      { return len(q.buf) - q.off }
func (q *byteQueue) Bytes() []byte { return q.buf[q.off:] }

// Grow makes room for n more bytes, reclaiming consumed space first.
func (q *byteQueue) grow(n int) {
	if q.off > 0 && (q.off >= q.Len() || len(q.buf)+n > cap(q.buf)) {
		m := copy(q.buf, q.buf[q.off:])
		q.buf, q.off = q.buf[:m], 0
	}
}

// Append adds b at the back.
func (q *byteQueue) Append(b []byte) {
	q.grow(len(b))
	q.buf = append(q.buf, b...)
}

// AppendFunc lets f append to the queue's buffer directly.
func (q *byteQueue) AppendFunc(n int, f func([]byte) []byte) {
	q.grow(n)
	q.buf = f(q.buf)
}

// Consume drops n bytes from the front.
func (q *byteQueue) Consume(n int) {
	q.off += n
	if q.off == len(q.buf) {
		q.buf, q.off = q.buf[:0], 0
	}
}

// Truncate drops n bytes from the back.
func (q *byteQueue) Truncate(n int) { q.buf = q.buf[:len(q.buf)-n] }
