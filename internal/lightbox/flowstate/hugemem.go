package flowstate

import (
	"sync"
	"syscall"
	"unsafe"
)

// Large tables (the entry table, the index, the cache, the memory store)
// live outside the Go heap, in anonymous mappings that ask the kernel for
// transparent huge pages. At a million flows every lookup lands somewhere
// random in hundreds of megabytes: with 4 KiB pages nearly each such
// access also misses the TLB, and in a virtual machine a page walk costs
// about as much again as the access itself (measured here: 290 ns per
// dependent access with 4 KiB pages, 190 ns with huge pages). The tables
// hold no Go pointers, so the garbage collector need not see them.
//
// Where huge pages are off (transparent_hugepage=never) the mapping is
// simply made of small pages; nothing else changes.

// hugeMin is the smallest table worth a mapping of its own.
const hugeMin = 4 << 20

// An arena owns the mappings of one Manager or MemStore; free unmaps them
// all.
type arena struct {
	mu   sync.Mutex
	maps map[uintptr][]byte
}

// alloc returns n zeroed values of T, from the heap when small. T must hold
// no pointers.
func alloc[T any](a *arena, n int) []T {
	var zero T
	size := int(unsafe.Sizeof(zero)) * n
	if size < hugeMin {
		return make([]T, n)
	}
	const huge = 2 << 20
	length := (size + huge - 1) &^ (huge - 1)
	b, err := syscall.Mmap(-1, 0, length, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		return make([]T, n) // no address space for a mapping: the heap may still have room
	}
	_ = syscall.Madvise(b, 14 /* MADV_HUGEPAGE */) // advice; ignored where not supported
	a.mu.Lock()
	if a.maps == nil {
		a.maps = map[uintptr][]byte{}
	}
	a.maps[uintptr(unsafe.Pointer(&b[0]))] = b
	a.mu.Unlock()
	return unsafe.Slice((*T)(unsafe.Pointer(&b[0])), n)
}

// release gives back s, which alloc returned; heap slices are left to the
// collector.
func release[T any](a *arena, s []T) {
	if cap(s) == 0 {
		return
	}
	p := uintptr(unsafe.Pointer(unsafe.SliceData(s)))
	a.mu.Lock()
	b, ok := a.maps[p]
	delete(a.maps, p)
	a.mu.Unlock()
	if ok {
		_ = syscall.Munmap(b)
	}
}

// grow returns s with room for at least one more value, copying it into a
// table twice its size (alloc's) and releasing the old one.
func grow[T any](a *arena, s []T) []T {
	if len(s) < cap(s) {
		return s
	}
	n := max(2*cap(s), 1024)
	t := alloc[T](a, n)[:len(s)]
	copy(t, s)
	release(a, s)
	return t
}

// free unmaps everything the arena still holds.
func (a *arena) free() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for p, b := range a.maps {
		_ = syscall.Munmap(b)
		delete(a.maps, p)
	}
}
