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
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/torbento/bento/internal/compat"
	"github.com/torbento/bento/internal/control"
	"github.com/torbento/bento/internal/netlimit"
	"github.com/torbento/bento/internal/policy"
	"github.com/torbento/bento/internal/privs"
	"github.com/torbento/bento/internal/proto"
	"github.com/torbento/bento/internal/safelog"
	"github.com/torbento/bento/internal/sdnotify"
	"github.com/torbento/bento/internal/server"
	"github.com/torbento/bento/internal/torlink"
)

func main() {
	os.Exit(run())
}

// defaultConf is the configuration bentod reads when -f is not given; if
// it is missing, bentod runs with the built-in defaults, as tor does.
const defaultConf = "/etc/bento/bentorc"

func run() int {
	conf := flag.String("f", defaultConf, "configuration file (torrc-style)")
	verify := flag.Bool("verify-config", false, "check the configuration, print the effective policy, and exit")
	listOptions := flag.Bool("list-options", false, "list every configuration option with what it does, and exit")
	dumpConfig := flag.String("dump-config", "", "print the effective configuration and exit: \"short\" (what differs from the built-in defaults) or \"full\"")
	cpuProfile := flag.String("cpu-profile", "", "write a CPU profile to this file until bentod exits (for finding what makes it busy)")
	version := flag.Bool("version", false, "print bentod's version and exit")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: bentod [-f bentorc] [--verify-config] [--list-options] [--dump-config short|full] [--cpu-profile FILE] [--version]\n\n")
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
	if *listOptions {
		fmt.Print(policy.ListOptions())
		return 0
	}
	if *dumpConfig != "" && *dumpConfig != "short" && *dumpConfig != "full" {
		fmt.Fprintf(os.Stderr, "bentod: --dump-config takes \"short\" or \"full\", not %q\n", *dumpConfig)
		return 2
	}
	// Keep only what runc and bentod need; nothing below can regain the
	// rest. Drop re-executes bentod, so it comes before anything is read,
	// opened or said (which would otherwise happen twice).
	if err := privs.Drop(privs.Needed); err != nil {
		fmt.Fprintf(os.Stderr, "bentod: dropping privileges: %v\n", err)
		return 1
	}
	explicit := false
	flag.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "f" })
	cfg := confSource{path: *conf, explicit: explicit}
	p, builtin, err := cfg.load()
	if err != nil {
		fmt.Fprintf(os.Stderr, "bentod: %v\n", err)
		return 1
	}
	for _, w := range p.Warnings {
		fmt.Fprintf(os.Stderr, "bentod: warning: %s\n", w)
	}
	if *dumpConfig != "" {
		fmt.Print(policy.Dump(p, *dumpConfig == "full"))
		return 0
	}
	if p.CompatManifest != "" {
		// Refused loudly: the operator's manifest for the original
		// client's code must fit the policy.
		if _, err := compat.LoadTemplate(p.CompatManifest, p); err != nil {
			fmt.Fprintf(os.Stderr, "bentod: %v\n", err)
			return 1
		}
	}
	if *verify {
		b, _ := json.MarshalIndent(p.PublicView(), "", "  ")
		fmt.Printf("%s\nConfiguration was valid\n", b)
		return 0
	}
	safelog.SetSafe(p.SafeLogging)
	router := safelog.NewRouter()
	if err := router.Apply(p.Logs); err != nil {
		fmt.Fprintf(os.Stderr, "bentod: %v\n", err)
		return 1
	}
	log := router.Logger()
	if builtin {
		safelog.Notice(log, "no configuration file; running with the built-in defaults (bentod --dump-config full shows them)", "missing", cfg.path)
	}
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
	// systemd's notify socket is bentod's alone: no child (runc, which
	// would pass it into containers) inherits it.
	sdnotify.Take()
	var ctlLn net.Listener
	ctlGID := -1
	if p.ControlSocket != "" {
		if ctlLn, ctlGID, err = control.Listen(p.ControlSocket, p.ControlSocketGroup); err != nil {
			log.Error("cannot open the control socket", "err", err)
			return 1
		}
		defer os.Remove(p.ControlSocket)
		defer ctlLn.Close()
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
		srv.Close()
		return 1
	}
	d := &daemon{cfg: cfg, fromFile: !builtin, log: log, router: router, srv: srv, started: time.Now(), stopReq: make(chan string, 1)}
	d.pol.Store(p)
	if err := d.setCompat(p); err != nil {
		log.Error("cannot start", "err", err)
		srv.Close()
		return 1
	}
	// A start that fails from here on still ends what the server holds
	// (restored instances, an earlier bentod's containers).
	fail := func(msg string, err error) int {
		log.Error(msg, "err", err)
		d.closeListeners()
		srv.Close()
		return 1
	}
	// The listeners are bound as root (a port below 1024 needs it), then
	// bentod gives up root where it can (User), then they serve: no
	// client's container starts before the switch.
	raws, err := d.listen(p)
	if err != nil {
		return fail("cannot listen", err)
	}
	if err := switchUser(p, srv, log); err != nil {
		closeRaw(raws)
		return fail("cannot switch user", err)
	}
	d.mu.Lock()
	d.commit(p, raws)
	d.mu.Unlock()
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
	// Clients are served from here on; the instances of an earlier bentod
	// come back meanwhile.
	go srv.Recover()

	// The tor beside us: onion service and the functions' control-port
	// firewall. Changing TorControlPort needs a restart.
	link, err := torlink.New(p, d.clientAddr(), onionTarget, log)
	if err != nil {
		return fail("tor link", err)
	}
	linkCtx, stopLink := context.WithCancel(context.Background())
	defer stopLink()
	if link != nil {
		srv.SetTor(link)
		if p.Box.Announce {
			d.box = announceBox(linkCtx, srv, link, log)
		}
		go link.Run(linkCtx)
	}
	d.link, d.stopLink = link, stopLink
	if p.FlashFlow.Listen != "" {
		t, err := startFlashFlow(linkCtx, p, link, log)
		if err != nil {
			return fail("flashflow", err)
		}
		d.ff = t
	}
	if ctlLn != nil {
		go control.Serve(ctlLn, ctlGID, d.control)
		safelog.Notice(log, "control socket open", "path", p.ControlSocket, "group", groupName(ctlGID, p.ControlSocketGroup))
	}
	go d.heartbeat()
	d.notifyReady()
	for {
		select {
		case sig := <-sigs:
			switch sig {
			case syscall.SIGUSR1:
				logStatus(log, srv.Status())
			case syscall.SIGHUP:
				_ = d.reload()
			default:
				d.shutdown("signal " + sig.String())
				return 0
			}
		case why := <-d.stopReq: // bentoctl stop
			d.shutdown(why)
			return 0
		}
	}
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
