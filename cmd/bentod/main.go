// Command bentod is the Bento server a relay operator runs beside tor: it
// runs users' functions in sandboxes within the operator's middlebox node
// policy (bentorc).
//
// Usage:
//
//	bentod [-f bentorc] [--verify-config]
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/torbento/bento/internal/netlimit"
	"github.com/torbento/bento/internal/policy"
	"github.com/torbento/bento/internal/privs"
	"github.com/torbento/bento/internal/proto"
	"github.com/torbento/bento/internal/safelog"
	"github.com/torbento/bento/internal/server"
	"github.com/torbento/bento/internal/torlink"
)

func main() {
	os.Exit(run())
}

func run() int {
	conf := flag.String("f", "/etc/bento/bentorc", "configuration file (torrc-style)")
	verify := flag.Bool("verify-config", false, "check the configuration, print the effective policy, and exit")
	cpuProfile := flag.String("cpu-profile", "", "write a CPU profile to this file until bentod exits (for finding what makes it busy)")
	version := flag.Bool("version", false, "print bentod's version and exit")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: bentod [-f bentorc] [--verify-config] [--cpu-profile FILE] [--version]\n\n")
		flag.PrintDefaults()
	}
	flag.Parse() // -h and --help: the usage, exit 0
	if flag.NArg() > 0 {
		flag.Usage()
		return 2
	}
	if *version {
		fmt.Printf("bentod %s (protocol %d)\n", strings.TrimPrefix(server.Version, "bentod/"), proto.Version)
		return 0
	}
	p, err := policy.Load(*conf)
	if err != nil {
		fmt.Fprintf(os.Stderr, "bentod: %v\n", err)
		return 1
	}
	for _, w := range p.Warnings {
		fmt.Fprintf(os.Stderr, "bentod: warning: %s\n", w)
	}
	if *verify {
		b, _ := json.MarshalIndent(p.PublicView(), "", "  ")
		fmt.Printf("%s\nConfiguration was valid\n", b)
		return 0
	}
	safelog.SetSafe(p.SafeLogging)
	log := safelog.New(os.Stderr, p.LogLevel)
	// Signals are caught from here on and handled once bentod serves: one
	// that arrives while it starts (a restart's stop, a status request)
	// waits, rather than ending bentod by default before it can tidy up.
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM, syscall.SIGUSR1)
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			log.Error("cpu profile", "err", err)
			return 1
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			log.Error("cpu profile", "err", err)
			return 1
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	// bentod's own memory: Go's soft limit makes the collector work harder
	// before the process grows past it; the service's MemoryMax is the
	// hard ceiling (docs/operators.md).
	if p.Daemon.MaxMemory > 0 {
		debug.SetMemoryLimit(p.Daemon.MaxMemory)
	}
	checkDescriptors(p, log)
	// Keep only what runc and bentod need; nothing below can regain the rest.
	if err := privs.Drop(privs.Needed); err != nil {
		log.Error("dropping privileges", "err", err)
		return 1
	}
	// bentod yields the CPU to tor; the runtime and containers it starts
	// run lower still (sandbox.StartNice).
	if err := renice(p.Daemon.Nice); err != nil {
		log.Warn("setting bentod's priority (Nice)", "nice", p.Daemon.Nice, "err", err)
	}
	srv, err := server.New(server.Options{Policy: p, Logger: log})
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	if err := setupTLS(srv, p.DataDirectory, log); err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	// A start that fails from here on still ends what the server holds
	// (restored instances, an earlier bentod's containers).
	fail := func(msg string, err error) int {
		log.Error(msg, "err", err)
		srv.Close()
		return 1
	}
	rawLn, err := netlimit.Listen(p.ListenAddress)
	if err != nil {
		return fail("cannot listen", err)
	}
	ln := srv.LimitListener(rawLn, false)
	var hs *http.Server
	if p.PolicyAddress != "" {
		pln, err := netlimit.Listen(p.PolicyAddress)
		if err != nil {
			return fail("cannot listen for the policy", err)
		}
		hs = srv.PolicyServer()
		go func() {
			// It ends only when bentod does (netlimit's Accept never
			// fails otherwise); say so if it ever does.
			if err := hs.Serve(srv.LimitPolicyListener(pln)); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("the policy endpoint stopped", "err", err)
			}
		}()
		safelog.Notice(log, "serving the node policy", "addr", pln.Addr().String())
	}
	// Connections through bentod's onion service arrive on a listener of
	// their own, with limits of their own.
	onionTarget := ""
	if p.OnionService {
		oln, err := netlimit.Listen("127.0.0.1:0")
		if err != nil {
			return fail("cannot listen for the onion service", err)
		}
		onionTarget = oln.Addr().String()
		go srv.ServeOnion(srv.LimitListener(oln, true))
	}
	// The operator's own listening address is not a client's: not scrubbed.
	safelog.Notice(log, "bentod listening", "addr", ln.Addr().String(), "version", server.Version,
		"max_connections", p.Daemon.MaxConnections, "per_address", p.Daemon.MaxConnectionsPerAddr)
	// Clients are served from here on; the instances of an earlier bentod
	// come back meanwhile.
	go srv.Recover()

	// The tor beside us: onion service and the functions' control-port
	// firewall. Changing TorControlPort needs a restart.
	link, err := torlink.New(p, ln.Addr().String(), onionTarget, log)
	if err != nil {
		return fail("tor link", err)
	}
	linkCtx, stopLink := context.WithCancel(context.Background())
	defer stopLink()
	var box *boxAnnouncer
	if link != nil {
		srv.SetTor(link)
		if p.Box.Announce {
			box = announceBox(linkCtx, srv, link, log)
		}
		go link.Run(linkCtx)
	}
	var ff interface {
		SetAccess(allowed bool, coordinators []string) error
	}
	if p.FlashFlow.Listen != "" {
		t, err := startFlashFlow(linkCtx, p, link, log)
		if err != nil {
			return fail("flashflow", err)
		}
		ff = t
	}

	closed := make(chan struct{})
	go func() {
		for sig := range sigs {
			if sig == syscall.SIGUSR1 {
				logStatus(log, srv.Status())
				continue
			}
			if sig == syscall.SIGHUP {
				np, err := policy.Load(*conf)
				if err != nil {
					log.Warn("reload failed; keeping the old policy", "err", err)
					continue
				}
				srv.SetPolicy(np)
				safelog.SetSafe(np.SafeLogging)
				if ff != nil {
					// Who may measure, and whether anyone may; the
					// listeners' addresses need a restart.
					if err := ff.SetAccess(np.FlashFlow.Allowed, np.FlashFlow.Coordinators); err != nil {
						log.Warn("flashflow: keeping the old coordinators", "err", err)
					}
				}
				safelog.Notice(log, "policy reloaded")
				continue
			}
			safelog.Notice(log, "shutting down", "signal", sig.String())
			if hs != nil {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				hs.Shutdown(ctx)
				cancel()
			}
			srv.Close()
			if box != nil {
				box.withdraw(link)
			}
			stopLink()
			close(closed)
			return
		}
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, net.ErrClosed) {
		// Only a closed listener ends Serve; anything else is a bug.
		log.Error("serve", "err", err)
		srv.Close()
		return 1
	}
	<-closed // every instance has been torn down
	return 0
}

// checkDescriptors warns when the descriptor limit cannot cover what the
// policy lets clients and functions hold.
func checkDescriptors(p *policy.Policy, log *slog.Logger) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return
	}
	if need := descriptorsNeeded(p); lim.Cur < need {
		log.Warn("the descriptor limit is below what the policy may need; raise it (LimitNOFILE= in the service unit, ulimit -n) or lower MaxConnections/MaxInstances",
			"limit", lim.Cur, "needed", need)
	}
}

// descriptorsNeeded is what the policy lets clients and functions make
// bentod hold: every connection on its listeners, and a few per instance
// (more with Tor streams).
func descriptorsNeeded(p *policy.Policy) uint64 {
	perInstance := uint64(8)
	if p.APIs[policy.APITorStream] {
		perInstance += 64 + 8
	}
	return uint64(p.Daemon.MaxConnections+p.Daemon.MaxOnionConnections+64+64) + perInstance*uint64(p.Aggregate.Instances)
}

// renice sets the scheduling priority of every thread of bentod (Linux
// keeps one per thread; threads made later inherit it from these).
func renice(n int) error {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return err
	}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := syscall.Setpriority(syscall.PRIO_PROCESS, tid, n); err != nil && err != syscall.ESRCH {
			return err
		}
	}
	return nil
}

// logStatus writes what bentod holds as one log line (SIGUSR1, as tor
// dumps its statistics): instances, bytes in flight, each listener's
// connections and refusals, and the process's own memory and descriptors.
func logStatus(log *slog.Logger, st server.Status) {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	fds, _ := os.ReadDir("/proc/self/fd")
	attrs := []any{"instances", st.Instances, "in_flight_bytes", st.InFlight, "in_flight_peak_bytes", st.InFlightPeak,
		"in_flight_limit_bytes", st.InFlightLimit, "heap_bytes", ms.HeapInuse, "go_sys_bytes", ms.Sys, "descriptors", len(fds), "goroutines", runtime.NumGoroutine()}
	for _, l := range st.Listeners {
		attrs = append(attrs, l.Name+"_open", l.Open, l.Name+"_addresses", l.Addresses, l.Name+"_accepted", l.Accepted,
			l.Name+"_refused", l.RefusedTotal+l.RefusedPerAddr+l.RefusedRate, l.Name+"_evicted", l.Evicted, l.Name+"_accept_errors", l.AcceptErrors,
			l.Name+"_drop_periods", l.DropPeriods, l.Name+"_dropped", l.Dropped)
	}
	safelog.Notice(log, "status", attrs...)
}
