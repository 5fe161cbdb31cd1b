/* A Bento function in C for the wasm image: greets whoever invokes it
 * and counts the greetings in the instance's storage. Built by the tests
 * with: clang --target=wasm32-wasi -O2 -I sdk/c -o main.wasm main.c */
#include <stdio.h>
#include <stdlib.h>

#include "bento.h"

int main(int argc, char **argv) {
	const char *name = argc > 1 ? argv[1] : "world";
	long n = 0;
	if (bento_call("storage.get", "{\"key\":\"greetings\"}", 0, 0) != BENTO_OK) {
		char *msg = bento_take(bento_result, 0);
		fprintf(stderr, "reading the count: %s\n", msg ? msg : "?");
		return 1;
	}
	char *res = bento_take(bento_result, 0);
	char *val = bento_take(bento_data, 0);
	if (res && strstr(res, "\"found\":true") && val)
		n = strtol(val, 0, 10);
	n++;
	char buf[32];
	int len = snprintf(buf, sizeof buf, "%ld", n);
	if (bento_call("storage.put", "{\"key\":\"greetings\"}", buf, (uint32_t)len) != BENTO_OK) {
		char *msg = bento_take(bento_result, 0);
		fprintf(stderr, "storing the count: %s\n", msg ? msg : "?");
		return 1;
	}
	printf("hello, %s! (greeting %ld, from C)\n", name, n);
	return 0;
}
