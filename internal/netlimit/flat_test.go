package netlimit

import (
	"fmt"
	"testing"
	"time"
)

// A table full of busy connections spread evenly over many addresses, as
// a flood from many addresses leaves it: a newcomer from a new address
// still gets a connection of an address at its fair share.
func TestFlatFloodAdmitsNewcomer(t *testing.T) {
	l := listen(t, Config{Total: 16, PerAddr: 8})
	got := serve(t, l)
	for a := 0; a < 4; a++ {
		for i := 0; i < 4; i++ {
			dialFrom(t, fmt.Sprintf("127.0.2.%d", a+1), l.Addr())
			c := <-got
			Prove(c)
			SetIdle(c, false)
		}
	}
	c := dialFrom(t, "127.0.3.1", l.Addr())
	select {
	case <-got:
	case <-time.After(2 * time.Second):
		ok, said := refused(c)
		t.Fatalf("newcomer not admitted (refused %v: %q); stats %+v", ok, said, l.Stats())
	}
}
