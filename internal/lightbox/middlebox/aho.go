package middlebox

// matcher is an Aho-Corasick automaton compiled to a dense DFA over
// lowercased bytes. Its state is one int32, which the IDS keeps in each
// flow direction's state, so matching continues across packets without
// rescanning. Case-sensitive patterns are confirmed against the stream's
// tail, which the IDS keeps as well.
type matcher struct {
	next [][256]int32 // transitions
	out  [][]int32    // patterns (rule indexes) ending at each state
}

// MaxMatcherStates bounds the automaton (about 1 KB each).
const MaxMatcherStates = 1 << 16

func lower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

func buildMatcher(patterns [][]byte) *matcher {
	m := &matcher{next: make([][256]int32, 1), out: make([][]int32, 1)}
	for i, p := range patterns {
		s := int32(0)
		for _, c := range p {
			c = lower(c)
			if m.next[s][c] == 0 {
				m.next = append(m.next, [256]int32{})
				m.out = append(m.out, nil)
				m.next[s][c] = int32(len(m.next) - 1)
			}
			s = m.next[s][c]
		}
		m.out[s] = append(m.out[s], int32(i))
	}
	// Breadth-first: failure links folded into the transitions.
	fail := make([]int32, len(m.next))
	var queue []int32
	for c := 0; c < 256; c++ {
		if s := m.next[0][c]; s != 0 {
			queue = append(queue, s)
		}
	}
	for len(queue) > 0 {
		s := queue[0]
		queue = queue[1:]
		m.out[s] = append(m.out[s], m.out[fail[s]]...)
		for c := 0; c < 256; c++ {
			t := m.next[s][c]
			if t != 0 {
				fail[t] = m.next[fail[s]][c]
				queue = append(queue, t)
			} else {
				m.next[s][c] = m.next[fail[s]][c]
			}
		}
	}
	return m
}
