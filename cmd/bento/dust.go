package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"text/tabwriter"
	"time"

	"github.com/torbento/bento/internal/dust"
)

// The mote supervisor moves its goroutine's thread into the mote's network
// namespace for good: that goroutine must own the main thread, which the
// runtime never ends (a locked thread that is not the main one ends with
// its goroutine; the main one would be parked, in the mote's namespace).
func init() {
	if len(os.Args) > 2 && os.Args[1] == "dust" && os.Args[2] == "supervise" {
		runtime.LockOSThread()
	}
}

const dustUsage = `usage:
  bento dust up     --template FILE (--network-torrc FILE | --public-network) [--lifetime DUR] [--drain DUR] [--state DIR] [--netns=false]
                    spawn a mote here: a tor relay and a box beside it, until its end
                    (joining a given network, in a network namespace of its own unless --netns=false)
  bento dust ls     [--state DIR] [--json]   the motes spawned here
  bento dust down   NAME [--state DIR]       end a mote now
  bento dust render --template FILE (--torrc | --bentorc | --cloud-init | --kubernetes)
                    [--bentod-url URL --bentod-sha256 HEX] [--image IMAGE]
                    print what a template makes: a Debian VM's cloud-init user-data, a Kubernetes Job

--state defaults to $BENTO_DUST_DIR, else /var/lib/bento/dust as root, else ~/.local/share/bento/dust.
`

func dustState() string {
	if d := os.Getenv("BENTO_DUST_DIR"); d != "" {
		return d
	}
	if os.Geteuid() == 0 {
		return "/var/lib/bento/dust"
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".local", "share", "bento", "dust")
}

func (c *cli) dust(args []string) int {
	if len(args) == 0 {
		fmt.Fprint(c.stderr, dustUsage)
		return exitUsage
	}
	if args[0] == "-h" || args[0] == "-help" || args[0] == "--help" {
		fmt.Fprint(c.stdout, dustUsage)
		return exitOK
	}
	fs := flag.NewFlagSet("dust "+args[0], flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	state := fs.String("state", dustState(), "directory of the motes")
	switch args[0] {
	case "supervise": // the detached supervisor `dust up` starts
		if len(args) != 2 {
			return exitUsage
		}
		if err := dust.Supervise(args[1]); err != nil {
			fmt.Fprintf(c.stderr, "bento dust supervise: %v\n", err)
			return exitServer
		}
		return exitOK
	case "up":
		tmpl := fs.String("template", "", "the mote's template (templates/mote.toml)")
		network := fs.String("network-torrc", "", "torrc lines of the Tor network to join (its DirAuthority lines, for a test network)")
		public := fs.Bool("public-network", false, "join the public Tor network")
		ownNetns := fs.Bool("netns", true, "with --network-torrc, run the mote in a network namespace of its own, its Tor ports bridged to the network's (needs root; --netns=false shares the host's)")
		lifetime := fs.Duration("lifetime", 0, "override the template's lifetime (e.g. 90m)")
		drain := fs.Duration("drain", 0, "override the template's drain period (e.g. 5m)")
		torBin := fs.String("tor", "tor", "the tor binary")
		bentod := fs.String("bentod", "", "the bentod binary (default: beside bento)")
		if err := c.parseAnywhere(fs, args[1:]); err != nil {
			return parseCode(err)
		}
		t, code := c.loadTemplate(*tmpl)
		if t == nil {
			return code
		}
		if *drain > 0 {
			t.Drain = *drain
		}
		var netTorrc []byte
		if *network != "" {
			var err error
			if netTorrc, err = os.ReadFile(*network); err != nil {
				fmt.Fprintf(c.stderr, "bento: --network-torrc: %v\n", err)
				return exitUsage
			}
		}
		self, err := os.Executable()
		if err != nil {
			fmt.Fprintf(c.stderr, "bento: %v\n", err)
			return exitServer
		}
		m, err := dust.Up(c.ctx, dust.UpOptions{StateDir: *state, Template: t, Lifetime: *lifetime, NetworkTorrc: string(netTorrc),
			Public: *public, OwnNetns: *ownNetns, Tor: *torBin, Bentod: *bentod, Self: self})
		if err != nil {
			fmt.Fprintf(c.stderr, "bento: %v\n", err)
			return exitServer
		}
		fmt.Fprintf(c.stdout, "mote %s is up\n  box     %s\n  relay   %s\n  ends    %s (no new functions from %s)\n", m.Name, m.Onion, m.Relay,
			m.EndsAt.Format(time.RFC3339), m.DrainAt.Format(time.RFC3339))
		if m.Netns != "" {
			fmt.Fprintf(c.stdout, "  network namespace %s of its own (only lo; its Tor traffic bridged to the network's)\n", m.Netns)
		}
		return exitOK
	case "ls":
		asJSON := fs.Bool("json", false, "print JSON")
		if err := c.parseAnywhere(fs, args[1:]); err != nil {
			return parseCode(err)
		}
		motes, err := dust.List(*state)
		if err != nil {
			fmt.Fprintf(c.stderr, "bento: %v\n", err)
			return exitServer
		}
		if *asJSON {
			if motes == nil {
				motes = []dust.Listed{}
			}
			b, _ := json.MarshalIndent(motes, "", "  ")
			fmt.Fprintln(c.stdout, string(b))
			return exitOK
		}
		tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tSTATE\tBOX\tRELAY\tENDS")
		for _, m := range motes {
			st := m.State
			if !m.Alive && st != dust.StateFailed {
				st = "gone (bento dust down " + m.Name + " cleans up)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", m.Name, st, m.Onion, m.Relay, m.EndsAt.Format(time.RFC3339))
		}
		tw.Flush()
		return exitOK
	case "down":
		if err := c.parseAnywhere(fs, args[1:]); err != nil {
			return parseCode(err)
		}
		if fs.NArg() != 1 {
			fmt.Fprint(c.stderr, dustUsage)
			return exitUsage
		}
		if err := dust.Down(c.ctx, *state, fs.Arg(0), time.Minute); err != nil {
			fmt.Fprintf(c.stderr, "bento: %v\n", err)
			return exitNotFound
		}
		fmt.Fprintf(c.stdout, "mote %s is down\n", fs.Arg(0))
		return exitOK
	case "render":
		tmpl := fs.String("template", "", "the mote's template")
		cloudInit := fs.Bool("cloud-init", false, "a cloud-init user-data file for a Debian machine of the mote's own")
		k8s := fs.Bool("kubernetes", false, "a Kubernetes Job (and its ConfigMap)")
		url := fs.String("bentod-url", "", "https URL of a tarball holding bentod and bento-runner (cloud-init, kubernetes)")
		sum := fs.String("bentod-sha256", "", "its SHA-256")
		image := fs.String("image", "debian:trixie-slim", "the container image (kubernetes)")
		torrc := fs.Bool("torrc", false, "the relay's torrc lines")
		bentorc := fs.Bool("bentorc", false, "the box's bentorc lines")
		if err := c.parseAnywhere(fs, args[1:]); err != nil {
			return parseCode(err)
		}
		t, code := c.loadTemplate(*tmpl)
		if t == nil {
			return code
		}
		var out string
		var err error
		rel := dust.Release{URL: *url, SHA256: *sum}
		switch {
		case *cloudInit:
			out, err = t.CloudInit(rel, time.Now())
		case *k8s:
			out, err = t.Kubernetes(rel, *image, time.Now())
		case *torrc:
			out = t.RenderTorrc("/var/lib/bento/mote", dust.DefaultPorts, "")
		case *bentorc:
			out = t.RenderBentorc("/var/lib/bento/mote", dust.DefaultPorts, time.Now().Add(t.Lifetime))
		default:
			fmt.Fprint(c.stderr, dustUsage)
			return exitUsage
		}
		if err != nil {
			fmt.Fprintf(c.stderr, "bento: %v\n", err)
			return exitServer
		}
		fmt.Fprint(c.stdout, out)
		return exitOK
	}
	fmt.Fprintf(c.stderr, "bento: unknown dust command %q\n\n%s", args[0], dustUsage)
	return exitUsage
}

func (c *cli) loadTemplate(path string) (*dust.Template, int) {
	if path == "" {
		fmt.Fprintf(c.stderr, "bento: give --template FILE (templates/mote.toml is one)\n")
		return nil, exitUsage
	}
	b, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintf(c.stderr, "bento: %v\n", err)
		return nil, exitUsage
	}
	t, err := dust.ParseTemplate(b)
	if err != nil {
		fmt.Fprintf(c.stderr, "bento: %s: %v\n", path, err)
		return nil, exitUsage
	}
	return t, exitOK
}
