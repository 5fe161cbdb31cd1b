//go:build wasip1

package bento

import "unsafe"

// The bento host module (docs/wasm.md). call returns 0 (done: the result
// and data wait), 1 (refused or failed: the message waits as the result)
// or -1 (bad pointers or lengths: the message waits as the result).
// result and data copy what waits into a buffer, as much as fits, and
// return its whole length.

//go:wasmimport bento call
func hostCall(name unsafe.Pointer, nameLen uint32, args unsafe.Pointer, argsLen uint32, data unsafe.Pointer, dataLen uint32) int32

//go:wasmimport bento result
func hostResult(buf unsafe.Pointer, bufCap uint32) int32

//go:wasmimport bento data
func hostData(buf unsafe.Pointer, bufCap uint32) int32

func ptr(b []byte) unsafe.Pointer {
	if len(b) == 0 {
		return nil
	}
	return unsafe.Pointer(&b[0])
}

// fetch copies what waits of one part (hostResult or hostData).
func fetch(part func(unsafe.Pointer, uint32) int32) []byte {
	n := part(nil, 0)
	if n <= 0 {
		return nil
	}
	b := make([]byte, n)
	part(ptr(b), uint32(n))
	return b
}

func rawCall(name string, args, data []byte) (status int32, result, body []byte) {
	nb := []byte(name)
	status = hostCall(ptr(nb), uint32(len(nb)), ptr(args), uint32(len(args)), ptr(data), uint32(len(data)))
	result = fetch(hostResult)
	if status == 0 {
		body = fetch(hostData)
	}
	return status, result, body
}
