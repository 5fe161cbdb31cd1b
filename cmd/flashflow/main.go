// Command flashflow runs FlashFlow's roles on stock tor: the coordinator
// (measures relays, writes the bandwidth file tor's directory authorities
// read) and the measurer (sends echo traffic through tor to the relay
// measured and checks it); the relay's side runs in bentod
// (FFListenAddress). See docs/flashflow.md.
//
//	flashflow keygen -cert FILE -key FILE
//	flashflow coordinator -listen ADDR -cert FILE -key FILE -measurers FP,... -targets FILE -dir DIR [-once | -period 24h -slot 60s]
//	flashflow measurer -coordinator ADDR -coordinator-pin FP -cert FILE -key FILE -tor-control ADDR -socks ADDR -via FP,...
//	flashflow coordinator ... -coordinators FILE -self ID -shared-secret FILE   (one of several, joint schedule)
//	flashflow schedule -coordinators FILE -self ID -shared-secret FILE -targets FILE [-srv BASE64 | -tor-control ADDR]
//	flashflow check FILE
//	flashflow simulate [-relays 7000] [-measurers 3] [-measurer-gbit 1] [-slot 60s]
package main

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/torbento/bento/internal/flashflow/coord"
	"github.com/torbento/bento/internal/flashflow/link"
	"github.com/torbento/bento/internal/flashflow/measurer"
	"github.com/torbento/bento/internal/flashflow/schedule"
	"github.com/torbento/bento/internal/flashflow/v3bw"
	"github.com/torbento/bento/internal/netlimit"
	"github.com/torbento/bento/internal/torctl"
)

const version = "0.1.0"

func main() { os.Exit(run(os.Args[1:])) }

func usage() int {
	fmt.Fprintln(os.Stderr, `usage: flashflow COMMAND [flags]

commands:
  keygen       create a TLS identity and print its fingerprint (the pin others configure)
  coordinator  measure relays and write the bandwidth file for tor's directory authorities
  measurer     send echo traffic for a coordinator
  schedule     print this coordinator's part of a joint (multi-coordinator) schedule
  check        read a bandwidth file as tor would and report what is wrong
  simulate     schedule a whole synthetic network and report how long one pass takes

Run "flashflow COMMAND -h" for a command's flags.`)
	return 2
}

func run(args []string) int {
	if len(args) == 0 {
		return usage()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	var err error
	switch args[0] {
	case "keygen":
		err = keygen(args[1:])
	case "coordinator":
		err = coordinator(ctx, args[1:], log)
	case "measurer":
		err = runMeasurer(ctx, args[1:], log)
	case "schedule":
		err = scheduleCmd(ctx, args[1:])
	case "check":
		err = check(args[1:])
	case "simulate":
		err = simulate(args[1:])
	case "-h", "-help", "--help", "help":
		usage()
		return 0
	default:
		fmt.Fprintf(os.Stderr, "flashflow: unknown command %q\n", args[0])
		return usage()
	}
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "flashflow:", err)
		return 1
	}
	return 0
}

func keygen(args []string) error {
	fs := flag.NewFlagSet("keygen", flag.ContinueOnError)
	cert := fs.String("cert", "flashflow.crt", "certificate file to create (or read)")
	key := fs.String("key", "flashflow.key", "key file to create (or read), mode 0600")
	if err := fs.Parse(args); err != nil {
		return err
	}
	id, err := link.LoadOrCreate(*cert, *key, "flashflow")
	if err != nil {
		return err
	}
	fmt.Println(id.Fingerprint)
	return nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// torFlags are the flags naming a tor's control port, one set per command.
type torFlags struct{ control, cookie, password *string }

func addTorFlags(fs *flag.FlagSet, control, what string) torFlags {
	return torFlags{
		control:  fs.String("tor-control", control, what),
		cookie:   fs.String("tor-cookie", "", "its cookie file (default: as tor announces)"),
		password: fs.String("tor-password", "", "its password (HASHEDPASSWORD)"),
	}
}

func (f torFlags) dial(ctx context.Context) (*torctl.Conn, error) {
	return dialTor(ctx, *f.control, *f.cookie, *f.password)
}

func dialTor(ctx context.Context, addr, cookie, password string) (*torctl.Conn, error) {
	return torctl.DialAuth(ctx, addr, torctl.Auth{Password: password, CookieFile: cookie})
}

func coordinator(ctx context.Context, args []string, log *slog.Logger) error {
	fs := flag.NewFlagSet("coordinator", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:9260", "address measurers connect to")
	cert := fs.String("cert", "coordinator.crt", "certificate (created with the key if both are missing)")
	key := fs.String("key", "coordinator.key", "key")
	measurers := fs.String("measurers", "", "pinned measurer certificate fingerprints, comma-separated")
	targets := fs.String("targets", "", "targets file: <relay fp> <bentod FlashFlow address> <bentod certificate fp> [<prior bytes/s>] per line")
	dir := fs.String("dir", "v3bw", "directory of bandwidth files; point V3BandwidthsFile at DIR/v3bw")
	once := fs.Bool("once", false, "measure every target once, write the file and exit (non-zero if any failed)")
	period := fs.Duration("period", 24*time.Hour, "without -once: every relay is measured once per period, on prop 316's schedule")
	slot := fs.Duration("slot", 60*time.Second, "length of a schedule slot (a measurement and its setup)")
	capacity := fs.Uint64("measurer-capacity", 125_000_000, "bytes/s each measurer can send (1 Gbit/s = 125000000)")
	wait := fs.Int("wait-measurers", 1, "measurers to wait for before measuring")
	duration := fs.Duration("duration", 30*time.Second, "length of a measurement")
	conns := fs.Int("conns", 160, "connections (circuits) to the target, split among measurers")
	mult := fs.Float64("multiplier", 2.25, "measurers send this times the relay's prior estimate")
	bg := fs.Int("bg-percent", coord.DefaultBGPercent, "background traffic share trusted, percent (max inflation 1/(1-r))")
	bucket := fs.Int("bucket", 125, "verify one echoed cell in this many")
	tor := addTorFlags(fs, "", "control port of the coordinator's tor client, to read relays' advertised bandwidth")
	compress := fs.Duration("compress-after", 24*time.Hour, "gzip bandwidth files older than this")
	del := fs.Duration("delete-after", 7*24*time.Hour, "delete bandwidth files older than this")
	jf := addJointFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	joint, err := jf.load()
	if err != nil {
		return err
	}
	if joint != nil && *once {
		return errors.New("-once measures every target now, outside any schedule: not with a joint schedule (-coordinators)")
	}
	id, err := link.LoadOrCreate(*cert, *key, "flashflow coordinator")
	if err != nil {
		return err
	}
	log.Info("flashflow coordinator", "certificate", id.Fingerprint)
	f, err := os.Open(*targets)
	if err != nil {
		return fmt.Errorf("-targets: %w", err)
	}
	ts, err := coord.ParseTargets(f)
	f.Close()
	if err != nil {
		return err
	}
	c, err := coord.New(coord.Config{Identity: id, Measurers: splitList(*measurers), Duration: *duration, BGPercent: *bg,
		Multiplier: *mult, Conns: *conns, Bucket: *bucket, Log: log})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		return err
	}
	store, err := coord.OpenStore(coord.DefaultResultsPath(*dir))
	if err != nil {
		return err
	}
	svc := &coord.Service{Coord: c, Store: store, Dir: &v3bw.Dir{Path: *dir, CompressAfter: *compress, DeleteAfter: *del},
		Started: time.Now(), Version: version}
	if *tor.control != "" {
		tc, err := tor.dial(ctx)
		if err != nil {
			return err
		}
		defer tc.Close()
		svc.Advertised = func(ctx context.Context, fp string) (uint64, error) { return advertised(ctx, tc, fp) }
		svc.SRV = func(ctx context.Context) ([32]byte, error) { return torSRV(ctx, tc) }
	}
	if joint != nil {
		if svc.SRV == nil {
			return errors.New("a joint schedule (-coordinators) reads the period's shared random value from tor: give -tor-control")
		}
		svc.Joint = joint
	}
	ln, err := netlimit.Listen(*listen)
	if err != nil {
		return err
	}
	go c.ServeMeasurers(ctx, ln)
	log.Info("waiting for measurers", "listen", ln.Addr().String(), "want", *wait)
	if err := c.WaitMeasurers(ctx, *wait); err != nil {
		return err
	}
	if *once {
		errs := svc.MeasureAll(ctx, ts)
		for _, e := range errs {
			log.Warn("measurement failed", "err", e)
		}
		path, err := svc.WriteFile(time.Now())
		if err != nil && !errors.Is(err, v3bw.ErrPrune) {
			log.Warn("no bandwidth file written", "err", err)
		} else {
			log.Info("bandwidth file written", "path", path, "link", svc.Dir.LinkPath())
		}
		if len(errs) > 0 {
			return fmt.Errorf("%d of %d measurements failed", len(errs), len(ts))
		}
		return err
	}
	if *capacity < 125_000 || *capacity > 1<<37 {
		return fmt.Errorf("-measurer-capacity %d: want bytes/s from 125000 (1 Mbit/s) to %d", *capacity, uint64(1)<<37)
	}
	if *slot < *duration+5*time.Second {
		return fmt.Errorf("-slot %v: a slot must hold the measurement (-duration %v) and its setup: at least %v", *slot, *duration, *duration+5*time.Second)
	}
	p := schedule.DefaultParams(*capacity * uint64(len(splitList(*measurers))))
	if joint != nil {
		p.Capacity = capacityOf(joint) // the deployment file's figure, as every coordinator sees it
	}
	p.Period, p.Slot, p.Multiplier = *period, *slot, *mult
	seed := func(uint64) [32]byte {
		var s [32]byte
		rand.Read(s[:]) // one coordinator: a secret schedule nobody else can compute
		return s
	}
	targetsNow := func() ([]coord.Target, error) {
		f, err := os.Open(*targets)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		return coord.ParseTargets(f)
	}
	return svc.Run(ctx, targetsNow, p, seed)
}

// advertised reads a relay's bandwidth-avg from its descriptor.
func advertised(ctx context.Context, c *torctl.Conn, fp string) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	info, err := c.GetInfo(ctx, "desc/id/"+fp)
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(info["desc/id/"+fp], "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 && f[0] == "bandwidth" {
			return strconv.ParseUint(f[1], 10, 64)
		}
	}
	return 0, fmt.Errorf("no bandwidth line in the descriptor of %s", fp)
}

func runMeasurer(ctx context.Context, args []string, log *slog.Logger) error {
	fs := flag.NewFlagSet("measurer", flag.ContinueOnError)
	coordAddr := fs.String("coordinator", "127.0.0.1:9260", "coordinator address")
	pin := fs.String("coordinator-pin", "", "the coordinator's certificate fingerprint (several, comma-separated, while it rotates)")
	cert := fs.String("cert", "measurer.crt", "certificate (created with the key if both are missing)")
	key := fs.String("key", "measurer.key", "key")
	torf := addTorFlags(fs, "127.0.0.1:9051", "control port of the measurer's own tor client")
	socksAddr := fs.String("socks", "127.0.0.1:9050", "that tor's SocksPort")
	via := fs.String("via", "", "first-hop relay fingerprints (the deployment's own relays), comma-separated")
	if err := fs.Parse(args); err != nil {
		return err
	}
	id, err := link.LoadOrCreate(*cert, *key, "flashflow measurer")
	if err != nil {
		return err
	}
	log.Info("flashflow measurer", "certificate", id.Fingerprint)
	tc, err := torf.dial(ctx)
	if err != nil {
		return err
	}
	defer tc.Close()
	tor, err := measurer.NewTor(ctx, tc, *socksAddr)
	if err != nil {
		return err
	}
	defer tor.Close()
	return measurer.Run(ctx, measurer.Config{Coordinator: *coordAddr, CoordinatorPin: splitList(*pin), Identity: id,
		Paths: tor, Via: splitList(*via), Log: log})
}

func check(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: flashflow check FILE")
	}
	f, problems, err := v3bw.ReadFileLenient(args[0])
	if err != nil {
		return err
	}
	fmt.Printf("%s: version %s, timestamp %s, %d relay lines\n", args[0], f.Version, f.Timestamp.UTC().Format(time.RFC3339), len(f.Relays))
	if f.Stale(time.Now()) {
		fmt.Println("stale: tor ignores a file whose timestamp is more than 3 days old")
	}
	for _, p := range problems {
		fmt.Println(p)
	}
	if len(problems) > 0 {
		return fmt.Errorf("%d lines tor would ignore", len(problems))
	}
	return nil
}

func simulate(args []string) error {
	fs := flag.NewFlagSet("simulate", flag.ContinueOnError)
	n := fs.Int("relays", 7000, "relays in the synthetic network")
	meas := fs.Int("measurers", 3, "measurers")
	gbit := fs.Float64("measurer-gbit", 1, "capacity of each measurer, Gbit/s")
	slot := fs.Duration("slot", 60*time.Second, "slot length")
	d := fs.Duration("duration", 30*time.Second, "measurement length")
	if err := fs.Parse(args); err != nil {
		return err
	}
	relays := schedule.SyntheticNetwork(*n, [32]byte{1})
	p := schedule.DefaultParams(uint64(float64(*meas) * *gbit * 125_000_000))
	p.Slot = *slot
	fmt.Println(schedule.Simulate(p, relays, *d))
	return nil
}
