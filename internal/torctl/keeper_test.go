package torctl

import (
	"bufio"
	"context"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestKeeperReconnects: when tor drops the connection (a restart), the
// keeper dials again, authenticates and runs Setup again.
func TestKeeperReconnects(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var accepted atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n := accepted.Add(1)
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					line, err := br.ReadString('\n')
					if err != nil {
						return
					}
					switch {
					case strings.HasPrefix(line, "PROTOCOLINFO"):
						c.Write([]byte("250-PROTOCOLINFO 1\r\n250-AUTH METHODS=NULL\r\n250 OK\r\n"))
					case strings.HasPrefix(line, "AUTHENTICATE"):
						c.Write([]byte("250 OK\r\n"))
					case strings.HasPrefix(line, "SETEVENTS"):
						c.Write([]byte("250 OK\r\n"))
						if n == 1 {
							return // the first tor "restarts" right after setup
						}
					default:
						c.Write([]byte("510 Unrecognized command\r\n"))
					}
				}
			}()
		}
	}()
	var setups atomic.Int32
	k := &Keeper{Network: "tcp", Addr: ln.Addr().String(),
		Setup: func(ctx context.Context, c *Conn) error {
			setups.Add(1)
			_, err := c.Do(ctx, MustCommand("SETEVENTS", "CIRC"))
			return err
		}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { k.Run(ctx); close(done) }()
	deadline := time.Now().Add(10 * time.Second)
	for setups.Load() < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("setups = %d, want 2 (reconnection)", setups.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	c, err := k.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if r, err := c.Send(ctx, MustCommand("GETINFO", "version")); err != nil || r.Status != 510 {
		t.Fatalf("on the new connection: %v %v", r, err)
	}
	cancel()
	<-done
}
