package main

import (
	"context"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"github.com/torbento/bento/internal/boxdir"
	"github.com/torbento/bento/internal/safelog"
	"github.com/torbento/bento/internal/server"
	"github.com/torbento/bento/internal/torctl"
	"github.com/torbento/bento/internal/torlink"
)

// boxAnnouncer lists the box in the directory (BoxAnnounce 1): each time
// the onion service is up it adds the box's field to the relay's
// ContactInfo and has the policy carry the signed statement; at shutdown
// it takes the field away again.
type boxAnnouncer struct {
	announced atomic.Bool
	ann       atomic.Pointer[boxdir.Announcement]
}

// reannounceEvery: tor drops a SETCONF'd ContactInfo when it reloads its
// torrc (SIGHUP; Debian's logrotate sends one daily) while the onion
// service lives on, so the field is checked again this often.
const reannounceEvery = 2 * time.Minute

func announceBox(ctx context.Context, srv *server.Server, link *torlink.Link, log *slog.Logger) *boxAnnouncer {
	a := &boxAnnouncer{}
	go func() {
		t := time.NewTicker(reannounceEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			ann := a.ann.Load()
			if ann == nil {
				continue
			}
			cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			c, err := link.Conn(cctx)
			if err == nil {
				_, err = boxdir.Announce(cctx, c, *ann)
			}
			cancel()
			if err != nil && ctx.Err() == nil {
				log.Warn("box: checking the relay's ContactInfo", "err", err)
			}
		}
	}()
	link.OnPublished(func(id string, c *torctl.Conn) {
		key, err := os.ReadFile(link.KeyPath())
		if err != nil {
			log.Warn("box not announced: reading the onion service key", "err", err)
			return
		}
		signer, err := boxdir.ParseTorKey(string(key))
		if err != nil {
			log.Warn("box not announced", "err", err)
			return
		}
		if signer.Onion() != id {
			log.Warn("box not announced: the onion service key on disk is not the published service's", "onion", id+".onion")
			return
		}
		ann := boxdir.Announcement{Onion: id, Port: link.VirtPort()}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		fp, err := boxdir.Announce(ctx, c, ann)
		if err != nil {
			log.Warn("box not announced", "err", err)
			return
		}
		srv.SetBoxIdentity(fp, ann, signer)
		a.ann.Store(&ann)
		a.announced.Store(true)
		safelog.Notice(log, "box announced in the relay's ContactInfo", "field", ann.ContactField(), "relay", fp)
	})
	return a
}

// withdraw takes the field out of the relay's ContactInfo, so that clients
// stop finding a box that is gone.
func (a *boxAnnouncer) withdraw(link *torlink.Link) {
	if !a.announced.Load() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	c, err := link.Conn(ctx)
	if err == nil {
		err = boxdir.Withdraw(ctx, c)
	}
	if err != nil {
		safelog.Notice(link.Logger(), "the box's field stays in the relay's ContactInfo until tor restarts", "err", err)
	}
}
