package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"time"

	"github.com/torbento/bento/internal/flashflow/link"
	"github.com/torbento/bento/internal/flashflow/target"
	"github.com/torbento/bento/internal/netlimit"
	"github.com/torbento/bento/internal/policy"
	"github.com/torbento/bento/internal/safelog"
	"github.com/torbento/bento/internal/torlink"
)

// startFlashFlow serves FlashFlow's target side (measurement mode) when
// FFListenAddress is set: coordinators on that address, measurers' echo
// connections on FFEchoAddress, traffic counters from the relay's tor.
func startFlashFlow(ctx context.Context, p *policy.Policy, tl *torlink.Link, log *slog.Logger) (*target.Target, error) {
	ff := p.FlashFlow
	if tl == nil {
		return nil, errors.New("FFListenAddress needs TorControlPort: the target reports its relay's traffic from tor's counters")
	}
	dir := filepath.Join(p.DataDirectory, "flashflow")
	id, err := link.LoadOrCreate(filepath.Join(dir, "target.crt"), filepath.Join(dir, "target.key"), "bentod flashflow target")
	if err != nil {
		return nil, err
	}
	echoAP, err := netip.ParseAddrPort(ff.Echo)
	if err != nil {
		return nil, fmt.Errorf("FFEchoAddress %q: %w", ff.Echo, err)
	}
	t, err := target.New(target.Config{
		Allowed: ff.Allowed, Coordinators: ff.Coordinators, Period: ff.Period, MaxDuration: ff.MaxDuration,
		EchoPort: echoAP.Port(), Traffic: tl.Traffic, LocalCounted: tl.CountsLocal, Log: log,
	}, id)
	if err != nil {
		return nil, err
	}
	cln, err := netlimit.Listen(ff.Listen)
	if err != nil {
		return nil, fmt.Errorf("FFListenAddress: %w", err)
	}
	eln, err := netlimit.Listen(ff.Echo)
	if err != nil {
		cln.Close()
		return nil, fmt.Errorf("FFEchoAddress: %w", err)
	}
	go t.ServeControl(ctx, cln)
	go t.ServeEcho(ctx, eln)
	safelog.Notice(log, "flashflow: measurement mode", "allowed", ff.Allowed, "listen", cln.Addr().String(),
		"echo", eln.Addr().String(), "certificate", id.Fingerprint, "coordinators", len(ff.Coordinators))
	if ff.Allowed && len(ff.Coordinators) == 0 {
		log.Warn("flashflow: FFMeasurementsAllowed is 1 but FFAllowedCoordinators is empty: nobody can measure this relay")
	}
	go checkExitPolicy(ctx, tl, echoAP, log)
	return t, nil
}

// checkExitPolicy warns, once tor's exit policy is known, when it does
// not let measurers reach the echo port, or when it lets anyone reach
// other private addresses (ExitPolicyRejectPrivate 0 without "reject
// private:*" after the echo port's line).
func checkExitPolicy(ctx context.Context, tl *torlink.Link, echo netip.AddrPort, log *slog.Logger) {
	for i := 0; i < 120 && tl.ExitPolicy() == nil; i++ {
		select {
		case <-ctx.Done():
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
	ep := tl.ExitPolicy()
	if ep == nil {
		return
	}
	if !ep.Allows(echo.Addr(), echo.Port()) {
		log.Warn("flashflow: the relay's exit policy does not accept the echo port, so measurers cannot reach it; add \"ExitPolicy accept " + echo.String() + "\" (with ExitPolicyRejectPrivate 0) before the other ExitPolicy lines")
	}
	for _, probe := range []netip.AddrPort{
		netip.AddrPortFrom(echo.Addr(), echo.Port()+1), netip.MustParseAddrPort("127.0.0.1:22"),
		netip.MustParseAddrPort("10.0.0.1:80"), netip.MustParseAddrPort("192.168.1.1:80"),
		netip.MustParseAddrPort("169.254.169.254:80"),
	} {
		if probe.Port() != 0 && ep.Allows(probe.Addr(), probe.Port()) {
			log.Warn("flashflow: the relay's exit policy accepts private addresses besides the echo port (for example " + probe.String() + "): add \"ExitPolicy reject private:*\" right after the echo port's line")
			return
		}
	}
}
