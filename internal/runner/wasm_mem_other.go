//go:build !unix

package runner

import "github.com/tetratelabs/wazero/experimental"

// mmapAllocator is a Go slice of the maximum size where there is no mmap
// (Go's runtime maps large allocations lazily too).
var mmapAllocator experimental.MemoryAllocator = experimental.MemoryAllocatorFunc(heapMemory)
