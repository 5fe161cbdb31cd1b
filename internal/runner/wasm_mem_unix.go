//go:build unix

package runner

import (
	"github.com/tetratelabs/wazero/experimental"
	"golang.org/x/sys/unix"
)

// mmapAllocator backs each linear memory with one anonymous mapping of
// its maximum size, of which only the pages a module touches are
// resident: growing it never copies (wazero's default appends to a Go
// slice, holding the old and the new memory at once while it grows, which
// took the cgroup over its limit before the page limit could refuse).
var mmapAllocator experimental.MemoryAllocator = experimental.MemoryAllocatorFunc(func(cap, max uint64) experimental.LinearMemory {
	if max == 0 || max > 1<<32 {
		return heapMemory(cap, max)
	}
	b, err := unix.Mmap(-1, 0, int(max), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANON|unix.MAP_NORESERVE)
	if err != nil {
		return heapMemory(cap, max)
	}
	return &mmapMemory{buf: b}
})

type mmapMemory struct{ buf []byte }

// Reallocate gives the first size bytes; the mapping's new pages read as
// zeros, as WebAssembly wants of grown memory.
func (m *mmapMemory) Reallocate(size uint64) []byte {
	if m.buf == nil || size > uint64(len(m.buf)) {
		return nil
	}
	return m.buf[:size]
}

func (m *mmapMemory) Free() {
	if m.buf != nil {
		_ = unix.Munmap(m.buf)
		m.buf = nil
	}
}
