package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"time"

	"github.com/torbento/bento/internal/flashflow/link"
	"github.com/torbento/bento/internal/flashflow/target"
	"github.com/torbento/bento/internal/policy"
	"github.com/torbento/bento/internal/safelog"
	"github.com/torbento/bento/internal/torlink"
)

// startFlashFlow serves FlashFlow's target side (measurement mode) when
// FFListenAddress is set: coordinators on that address, measurers' echo
// connections on FFEchoAddress, traffic counters from the relay's tor.
func startFlashFlow(ctx context.Context, p *policy.Policy, tl *torlink.Link, log *slog.Logger) error {
	ff := p.FlashFlow
	if tl == nil {
		return errors.New("FFListenAddress needs TorControlPort: the target reports its relay's traffic from tor's counters")
	}
	dir := filepath.Join(p.DataDirectory, "flashflow")
	id, err := link.LoadOrCreate(filepath.Join(dir, "target.crt"), filepath.Join(dir, "target.key"), "bentod flashflow target")
	if err != nil {
		return err
	}
	echoAP, err := netip.ParseAddrPort(ff.Echo)
	if err != nil {
		return fmt.Errorf("FFEchoAddress %q: %w", ff.Echo, err)
	}
	lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	local, err := tl.CountsLocal(lctx)
	cancel()
	if err != nil {
		log.Warn("flashflow: cannot read CountPrivateBandwidth; assuming 0", "err", err)
	}
	t, err := target.New(target.Config{
		Allowed: ff.Allowed, Coordinators: ff.Coordinators, Period: ff.Period, MaxDuration: ff.MaxDuration,
		EchoPort: echoAP.Port(), Traffic: tl.Traffic, LocalCounted: local, Log: log,
	}, id)
	if err != nil {
		return err
	}
	cln, err := net.Listen("tcp", ff.Listen)
	if err != nil {
		return fmt.Errorf("FFListenAddress: %w", err)
	}
	eln, err := net.Listen("tcp", ff.Echo)
	if err != nil {
		cln.Close()
		return fmt.Errorf("FFEchoAddress: %w", err)
	}
	go t.ServeControl(ctx, cln)
	go t.ServeEcho(ctx, eln)
	safelog.Notice(log, "flashflow: measurement mode", "allowed", ff.Allowed, "listen", cln.Addr().String(),
		"echo", eln.Addr().String(), "certificate", id.Fingerprint, "coordinators", len(ff.Coordinators))
	if ff.Allowed && len(ff.Coordinators) == 0 {
		log.Warn("flashflow: FFMeasurementsAllowed is 1 but FFAllowedCoordinators is empty: nobody can measure this relay")
	}
	return nil
}
