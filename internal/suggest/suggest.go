// Package suggest finds the word a user most likely meant, for "did you
// mean" in error messages: the nearest of a few known names by edit
// distance, ignoring case.
package suggest

import "strings"

// Nearest returns the candidate within maxEdits edits of word (ignoring
// case) that is nearest to it, the first of equals; "" when none is that
// near.
func Nearest(word string, candidates []string, maxEdits int) string {
	best, bestD := "", maxEdits+1
	for _, c := range candidates {
		if d := Distance(strings.ToLower(word), strings.ToLower(c), bestD); d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

// Distance is the Levenshtein distance of a and b, or bound when it is at
// least that. Inputs longer than 64 bytes are never near anything (names
// are short, and an attacker's long input costs no quadratic time).
func Distance(a, b string, bound int) int {
	if len(a) > 64 || len(b) > 64 {
		return bound
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			c := prev[j-1]
			if a[i-1] != b[j-1] {
				c = 1 + min(prev[j-1], prev[j], cur[j-1])
			}
			cur[j] = c
		}
		prev, cur = cur, prev
	}
	return min(prev[len(b)], bound)
}
