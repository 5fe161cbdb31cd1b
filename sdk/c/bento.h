/*
 * bento.h: the host API of Bento's wasm image for functions in C
 * (clang --target=wasm32-wasi, with Debian's wasi-libc); docs/wasm.md
 * describes the ABI.
 *
 * A function is a WASI command: main runs once per invocation with the
 * invocation's arguments in argv[1..]; stdout is its output to the
 * client, stdin the client's input, stderr the instance log (a line per
 * entry). Any other host call goes through bento_call, by name, with JSON
 * arguments and bulk data; bentod checks it against the manifest's apis
 * and the operator's policy.
 */
#ifndef BENTO_H
#define BENTO_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* What bento_call returns. */
#define BENTO_OK 0        /* done: the JSON result and the data wait */
#define BENTO_REFUSED 1   /* refused or failed: the message waits as the result */
#define BENTO_BAD_ARGS -1 /* a pointer or length outside memory, a name or arguments too long */

__attribute__((import_module("bento"), import_name("call")))
int32_t bento_call_raw(const char *name, uint32_t name_len, const char *args, uint32_t args_len,
                       const void *data, uint32_t data_len);

/* Copy what the last call left (its JSON result or error message; its
 * bulk data) into buf, as much as fits in cap; return its whole length. */
__attribute__((import_module("bento"), import_name("result")))
int32_t bento_result(void *buf, uint32_t cap);
__attribute__((import_module("bento"), import_name("data")))
int32_t bento_data(void *buf, uint32_t cap);

/* bento_call carries out host call name with JSON args (NULL for none)
 * and data_len bytes of data. */
static inline int32_t bento_call(const char *name, const char *args, const void *data, uint32_t data_len) {
	return bento_call_raw(name, (uint32_t)strlen(name), args, args ? (uint32_t)strlen(args) : 0, data, data_len);
}

/* bento_take returns a malloc'd, NUL-terminated copy of what waits of
 * one part (bento_result or bento_data), its length in *len if len is
 * not NULL; NULL when out of memory. */
static inline char *bento_take(int32_t (*part)(void *, uint32_t), uint32_t *len) {
	int32_t n = part(0, 0);
	if (n < 0)
		n = 0;
	char *b = malloc((size_t)n + 1);
	if (!b)
		return 0;
	part(b, (uint32_t)n);
	b[n] = 0;
	if (len)
		*len = (uint32_t)n;
	return b;
}

#endif
