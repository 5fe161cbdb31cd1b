package runner

import (
	"errors"
	"fmt"
)

// maxWasmLocals bounds a function's local variables (as browsers' engines
// do): the code section declares them as counts, a few bytes for billions.
const maxWasmLocals = 50_000

// scanWasm walks a module's structure before wazero decodes it. wazero
// sizes its tables from the counts and lengths a module declares before it
// reads what they count, so a module of a hundred bytes could make the
// runner allocate gigabytes (found by FuzzCompileWasm). scanWasm checks
// every count and length the decoder allocates by against the bytes that
// are there: each counted item takes at least one byte, each length fits
// in what remains of its section, a code entry in its section, and a
// function declares at most maxWasmLocals locals. What it cannot parse is
// refused; it does not otherwise validate the module (wazero does).
func scanWasm(code []byte) error {
	r := &wasmReader{b: code}
	if len(code) < 8 {
		return errors.New("truncated header")
	}
	r.pos = 8 // magic and version: the caller checked the magic
	for r.left() > 0 {
		start := r.pos
		id := r.byte()
		size := r.length()
		if r.err != nil {
			return r.fail(start, "section header")
		}
		s := &wasmReader{b: r.b[:r.pos+int(size)], pos: r.pos}
		if err := scanSection(id, s); err != nil {
			return fmt.Errorf("section %d at byte %d: %w", id, start, err)
		}
		r.pos += int(size)
	}
	return nil
}

func scanSection(id byte, r *wasmReader) error {
	var item func() // one item of the section's vector
	switch id {
	case 0: // custom: a name, then bytes
		r.name()
		return r.err
	case 1: // types
		item = func() {
			if form := r.byte(); form != 0x60 && r.err == nil {
				r.bad("type form 0x%x", form)
			}
			for range 2 { // parameters, results
				for n := r.count(); n > 0 && r.err == nil; n-- {
					r.valType()
				}
			}
		}
	case 2: // imports
		item = func() {
			r.name()
			r.name()
			r.importDesc()
		}
	case 3: // functions: type indices
		item = func() { r.u32() }
	case 4: // tables
		item = func() {
			if r.peek() == 0x40 {
				r.pos++
				if r.byte() != 0 && r.err == nil {
					r.bad("table form")
				}
				r.valType()
				r.limits()
				r.expr()
				return
			}
			r.valType()
			r.limits()
		}
	case 5: // memories
		item = func() { r.limits() }
	case 6: // globals
		item = func() {
			r.valType()
			r.byte()
			r.expr()
		}
	case 7: // exports
		item = func() {
			r.name()
			r.byte()
			r.u32()
		}
	case 8: // start
		r.u32()
		return r.err
	case 9: // elements
		item = r.element
	case 10: // code
		item = r.codeEntry
	case 11: // data
		item = func() {
			switch flags := r.u32(); flags {
			case 0:
				r.expr()
			case 1:
			case 2:
				r.u32()
				r.expr()
			default:
				r.bad("data segment kind %d", flags)
			}
			r.skip(r.length())
		}
	case 12: // data count
		r.u32()
		return r.err
	case 13: // tags
		item = func() {
			r.byte()
			r.u32()
		}
	default:
		return fmt.Errorf("unknown section id %d", id)
	}
	for n := r.count(); n > 0 && r.err == nil; n-- {
		item()
	}
	return r.err
}

// wasmReader reads a module's bytes up to len(b); the first error stops
// it (every read after returns zero).
type wasmReader struct {
	b   []byte
	pos int
	err error
}

func (r *wasmReader) left() int { return len(r.b) - r.pos }

func (r *wasmReader) bad(format string, a ...any) {
	if r.err == nil {
		r.err = fmt.Errorf("at byte %d: "+format, append([]any{r.pos}, a...)...)
	}
}

func (r *wasmReader) fail(at int, what string) error {
	return fmt.Errorf("%s at byte %d: %v", what, at, r.err)
}

func (r *wasmReader) peek() byte {
	if r.err != nil || r.left() < 1 {
		return 0
	}
	return r.b[r.pos]
}

func (r *wasmReader) byte() byte {
	if r.err != nil {
		return 0
	}
	if r.left() < 1 {
		r.bad("unexpected end")
		return 0
	}
	r.pos++
	return r.b[r.pos-1]
}

func (r *wasmReader) skip(n uint32) {
	if r.err == nil && uint64(n) > uint64(r.left()) {
		r.bad("%d bytes declared, %d there", n, r.left())
		return
	}
	if r.err == nil {
		r.pos += int(n)
	}
}

// leb reads an unsigned LEB128 number of at most maxBytes bytes.
func (r *wasmReader) leb(maxBytes int) uint64 {
	var v uint64
	for i := 0; i < maxBytes; i++ {
		c := r.byte()
		if r.err != nil {
			return 0
		}
		v |= uint64(c&0x7f) << (7 * i)
		if c&0x80 == 0 {
			return v
		}
	}
	r.bad("number longer than %d bytes", maxBytes)
	return 0
}

func (r *wasmReader) u32() uint32 {
	v := r.leb(5)
	if v > 1<<32-1 {
		r.bad("number %d beyond 32 bits", v)
		return 0
	}
	return uint32(v)
}

// length reads a length that must fit in what remains.
func (r *wasmReader) length() uint32 {
	n := r.u32()
	if r.err == nil && uint64(n) > uint64(r.left()) {
		r.bad("length %d beyond the %d bytes that follow", n, r.left())
		return 0
	}
	return n
}

// count reads a vector's count: each item takes at least a byte.
func (r *wasmReader) count() uint32 { return r.length() }

func (r *wasmReader) name() { r.skip(r.length()) }

func (r *wasmReader) valType() {
	switch t := r.byte(); t {
	case 0x63, 0x64: // (ref null ht), (ref ht)
		r.leb(5)
	}
}

func (r *wasmReader) limits() {
	flags := r.byte()
	if flags > 0x07 {
		r.bad("limits flags 0x%x", flags)
		return
	}
	r.leb(10)
	if flags&1 != 0 {
		r.leb(10)
	}
}

func (r *wasmReader) importDesc() {
	switch kind := r.byte(); kind {
	case 0: // function
		r.u32()
	case 1: // table
		r.valType()
		r.limits()
	case 2: // memory
		r.limits()
	case 3: // global
		r.valType()
		r.byte()
	case 4: // tag
		r.byte()
		r.u32()
	default:
		r.bad("import kind %d", kind)
	}
}

// expr reads a constant expression, to its end.
func (r *wasmReader) expr() {
	for r.err == nil {
		switch op := r.byte(); op {
		case 0x0b: // end
			return
		case 0x41: // i32.const
			r.leb(5)
		case 0x42: // i64.const
			r.leb(10)
		case 0x43: // f32.const
			r.skip(4)
		case 0x44: // f64.const
			r.skip(8)
		case 0x23, 0xd2: // global.get, ref.func
			r.u32()
		case 0xd0: // ref.null
			r.leb(5)
		case 0x6a, 0x6b, 0x6c, 0x7c, 0x7d, 0x7e: // extended constants
		case 0xfd:
			if sub := r.u32(); sub != 12 && r.err == nil {
				r.bad("instruction 0xfd %d in a constant expression", sub)
				return
			}
			r.skip(16) // v128.const
		default:
			if r.err == nil {
				r.bad("instruction 0x%x in a constant expression", op)
			}
			return
		}
	}
}

func (r *wasmReader) element() {
	flags := r.u32()
	if flags > 7 {
		r.bad("element segment kind %d", flags)
		return
	}
	if flags&3 == 2 { // an explicit table index
		r.u32()
	}
	if flags&1 == 0 { // active: an offset
		r.expr()
	}
	if flags&3 != 0 { // an element kind or a reference type
		if flags&4 != 0 {
			r.valType()
		} else {
			r.byte()
		}
	}
	for n := r.count(); n > 0 && r.err == nil; n-- {
		if flags&4 != 0 {
			r.expr()
		} else {
			r.u32()
		}
	}
}

// codeEntry reads a function body's size and its locals; the body itself
// is wazero's to read.
func (r *wasmReader) codeEntry() {
	size := r.length()
	if r.err != nil {
		return
	}
	end := r.pos + int(size)
	e := &wasmReader{b: r.b[:end], pos: r.pos}
	var sum uint64
	for n := e.count(); n > 0 && e.err == nil; n-- {
		sum += uint64(e.u32())
		e.valType()
		if sum > maxWasmLocals {
			e.bad("more than %d locals in a function", maxWasmLocals)
		}
	}
	if e.err != nil {
		r.err = e.err
		return
	}
	r.pos = end
}
