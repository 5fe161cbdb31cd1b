// Package privnet runs a private Tor network of Debian's tor for tests and
// demos: directory authorities, relays, exits and a client, all on
// loopback inside a network namespace that has nothing but lo (see
// Isolate), bootstrapped in about 10 s by aligning the authorities' first
// vote (../shared/research/privnet.md has the measurements behind every
// option used here).
//
// Safety: no tor is ever started with a default configuration. Each gets
// --defaults-torrc pointing at an empty file and -f a torrc of ours with
// TestingTorNetwork 1 and DirAuthority lines naming only our own loopback
// authorities; Start refuses to run unless LoopbackOnly says the network
// namespace has only lo; every tor is a child of the calling process and
// gets __OwningControllerProcess so it exits if that process dies; Stop
// signals only the PIDs it started.
package privnet

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/torbento/bento/internal/socks"
	"github.com/torbento/bento/internal/torctl"
)

// Password is the control-port password of every node (HASHEDPASSWORD);
// cookie authentication works too.
const Password = "privnet"

// Options shape the network. The zero value gives 3 authorities, 2 exits,
// 2 middle relays and a client: 8 tors. Onion services need 4 relays or
// more; several services hosted by one relay need a few more.
type Options struct {
	Authorities int // default 3
	Exits       int // default 2
	Middles     int // default 1
	// BasePort: ORPorts from BasePort, authority DirPorts from BasePort+100,
	// control ports from BasePort+200, exits' SocksPorts from BasePort+300.
	// Default 5000. Exits refuse connections back into the network
	// (to any ORPort or DirPort), so servers under test must not use these.
	BasePort int
	// SocksPort and ControlPort of the client. Defaults 9050 and 9051.
	SocksPort, ControlPort int
	// Tor and TorGencert are the binaries (default: from PATH).
	Tor, TorGencert string
	// Timeout bounds Start (default 90 s).
	Timeout time.Duration
	// Logf, if set, reports progress.
	Logf func(format string, args ...any)
	// NoExitSocks gives exits no SocksPort, so that they never act as
	// clients (a relay's own circuits exempt its connections from
	// RelayBandwidthRate for a while, which tests of rate limits avoid).
	NoExitSocks bool
	// Torrc, if set, returns extra torrc lines for a node (after ours;
	// tor lets a later line of a single-valued option win).
	Torrc func(nd *Node) []string
}

func (o *Options) defaults() {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&o.Authorities, 3)
	def(&o.Exits, 2)
	def(&o.Middles, 2)
	def(&o.BasePort, 5000)
	def(&o.SocksPort, 9050)
	def(&o.ControlPort, 9051)
	if o.Tor == "" {
		o.Tor = "tor"
	}
	if o.TorGencert == "" {
		o.TorGencert = "tor-gencert"
	}
	if o.Timeout == 0 {
		o.Timeout = 90 * time.Second
	}
}

// Role is what a node does.
type Role int

// Roles.
const (
	Authority Role = iota
	Exit
	Middle
	Client
)

// Node is one tor process.
type Node struct {
	Name string
	Role Role
	Dir  string // its DataDirectory; torrc, logs and the cookie are here
	// ORPort and DirPort are 0 where the node has none.
	ORPort, DirPort int
	// ControlPort is on 127.0.0.1; its cookie is Dir/control_auth_cookie.
	ControlPort int
	// SocksPort is 0 for authorities and middles; exits have one so that a
	// Bento server beside them can send functions' traffic through Tor.
	SocksPort   int
	Fingerprint string

	cmd    *exec.Cmd
	exited chan struct{}
}

// ControlAddr is the node's control port address.
func (n *Node) ControlAddr() string { return "127.0.0.1:" + strconv.Itoa(n.ControlPort) }

// SocksAddr is the node's SOCKS port address ("" if none).
func (n *Node) SocksAddr() string {
	if n.SocksPort == 0 {
		return ""
	}
	return "127.0.0.1:" + strconv.Itoa(n.SocksPort)
}

// ControlSocket is the node's control port as a unix socket, as Debian's
// tor offers it (/run/tor/control).
func (n *Node) ControlSocket() string { return filepath.Join(n.Dir, "control") }

// CookieFile is the node's control-port auth cookie.
func (n *Node) CookieFile() string { return filepath.Join(n.Dir, "control_auth_cookie") }

// PID returns the tor's process ID (0 if not running).
func (n *Node) PID() int {
	if n.cmd == nil || n.cmd.Process == nil {
		return 0
	}
	select {
	case <-n.exited:
		return 0
	default:
		return n.cmd.Process.Pid
	}
}

// Net is a running private network.
type Net struct {
	Dir   string
	Nodes []*Node
	opts  Options
	// Timings of the bring-up, from the launch of the relays.
	ConsensusAfter, ReadyAfter time.Duration

	mu      sync.Mutex
	stopped bool
}

// Node returns the node called name, or nil.
func (n *Net) Node(name string) *Node {
	for _, x := range n.Nodes {
		if x.Name == name {
			return x
		}
	}
	return nil
}

// Client is the client node.
func (n *Net) Client() *Node { return n.byRole(Client)[0] }

// Exits are the exit relays.
func (n *Net) Exits() []*Node { return n.byRole(Exit) }

func (n *Net) byRole(r Role) []*Node {
	var out []*Node
	for _, x := range n.Nodes {
		if x.Role == r {
			out = append(out, x)
		}
	}
	return out
}

func (n *Net) relays() []*Node {
	var out []*Node
	for _, x := range n.Nodes {
		if x.Role != Client {
			out = append(out, x)
		}
	}
	return out
}

func (n *Net) logf(format string, args ...any) {
	if n.opts.Logf != nil {
		n.opts.Logf(format, args...)
	}
}

// Start creates (or reuses the keys in) dir and starts the network,
// returning once the client and every exit's SOCKS port can carry a stream
// through an exit to 127.0.0.1. On error everything started is stopped.
func Start(ctx context.Context, dir string, opts Options) (*Net, error) {
	opts.defaults()
	if err := LoopbackOnly(); err != nil {
		return nil, err
	}
	for _, b := range []string{opts.Tor, opts.TorGencert} {
		if _, err := exec.LookPath(b); err != nil {
			return nil, fmt.Errorf("privnet: %s not found: install Debian's tor package (scripts/setup.sh does)", b)
		}
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	n := &Net{Dir: dir, opts: opts}
	n.layout()
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	if err := n.init(ctx); err != nil {
		return nil, err
	}
	if err := n.start(ctx); err != nil {
		n.Stop()
		return nil, err
	}
	return n, nil
}

func (n *Net) layout() {
	o := n.opts
	idx := 0
	add := func(name string, r Role) {
		nd := &Node{Name: name, Role: r, Dir: filepath.Join(n.Dir, name)}
		if r == Client {
			nd.ControlPort, nd.SocksPort = o.ControlPort, o.SocksPort
		} else {
			nd.ORPort = o.BasePort + idx
			nd.ControlPort = o.BasePort + 200 + idx
			if r == Authority {
				nd.DirPort = o.BasePort + 100 + idx
			}
			if r == Exit && !o.NoExitSocks {
				nd.SocksPort = o.BasePort + 300 + idx
			}
			idx++
		}
		n.Nodes = append(n.Nodes, nd)
	}
	for i := 0; i < o.Authorities; i++ {
		add(fmt.Sprintf("auth%d", i), Authority)
	}
	for i := 0; i < o.Exits; i++ {
		add(fmt.Sprintf("exit%d", i), Exit)
	}
	for i := 0; i < o.Middles; i++ {
		add(fmt.Sprintf("relay%d", i), Middle)
	}
	add("client", Client)
}

func (n *Net) emptyTorrc() string { return filepath.Join(n.Dir, "empty.torrc") }

// run runs a short-lived tor tool and returns its output.
func run(ctx context.Context, dir string, stdin string, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Stdin = strings.NewReader(stdin)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("privnet: %s %s: %v\n%s", name, strings.Join(args, " "), err, out.String())
	}
	return out.String(), nil
}

// init generates the keys that are missing and writes every torrc.
func (n *Net) init(ctx context.Context) error {
	if err := os.MkdirAll(n.Dir, 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(n.emptyTorrc(), nil, 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(n.Dir, "resolv.conf"), []byte("nameserver 127.0.0.1\n"), 0o600); err != nil {
		return err
	}
	var wg sync.WaitGroup
	errs := make([]error, len(n.Nodes))
	for i, nd := range n.Nodes {
		if err := os.MkdirAll(filepath.Join(nd.Dir, "keys"), 0o700); err != nil {
			return err
		}
		_ = os.Chmod(nd.Dir, 0o700)
		if nd.Role == Client {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = n.genKeys(ctx, nd)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	out, err := run(ctx, n.Dir, "", n.opts.Tor, "--defaults-torrc", n.emptyTorrc(), "-f", n.emptyTorrc(),
		"--hash-password", Password, "--Log", "err stderr")
	if err != nil {
		return err
	}
	hash := strings.TrimSpace(out[strings.LastIndex(strings.TrimSpace(out), "\n")+1:])
	if !strings.HasPrefix(hash, "16:") {
		return fmt.Errorf("privnet: tor --hash-password printed %q", out)
	}
	return n.writeTorrcs(hash)
}

func (n *Net) genKeys(ctx context.Context, nd *Node) error {
	keys := filepath.Join(nd.Dir, "keys")
	if nd.Role == Authority {
		if _, err := os.Stat(filepath.Join(keys, "authority_certificate")); err != nil {
			// Empty passphrase on stdin: the identity key is stored unencrypted.
			if _, err := run(ctx, keys, "\n", n.opts.TorGencert, "--create-identity-key", "-m", "12",
				"-a", fmt.Sprintf("127.0.0.1:%d", nd.DirPort),
				"-i", "authority_identity_key", "-s", "authority_signing_key", "-c", "authority_certificate",
				"--passphrase-fd", "0"); err != nil {
				return err
			}
		}
	}
	fpFile := filepath.Join(nd.Dir, "fingerprint")
	if _, err := os.Stat(fpFile); err != nil {
		// --list-fingerprint only creates keys and exits. The placeholder
		// DirAuthority keeps even this run away from the public authorities.
		if _, err := run(ctx, nd.Dir, "", n.opts.Tor, "--defaults-torrc", n.emptyTorrc(), "-f", n.emptyTorrc(),
			"--list-fingerprint", "--DataDirectory", nd.Dir, "--Nickname", nd.Name,
			"--ORPort", fmt.Sprintf("127.0.0.1:%d", nd.ORPort), "--Address", "127.0.0.1",
			"--TestingTorNetwork", "1", "--ContactInfo", "privnet@localhost", "--ExitRelay", "0",
			"--DirAuthority", "placeholder orport=1 127.0.0.1:1 FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF",
			"--Log", "err stderr"); err != nil {
			return err
		}
	}
	b, err := os.ReadFile(fpFile)
	if err != nil {
		return err
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return fmt.Errorf("privnet: bad fingerprint file %s", fpFile)
	}
	nd.Fingerprint = f[1]
	return nil
}

func v3ident(nd *Node) (string, error) {
	b, err := os.ReadFile(filepath.Join(nd.Dir, "keys", "authority_certificate"))
	if err != nil {
		return "", err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if fp, ok := strings.CutPrefix(l, "fingerprint "); ok {
			return strings.TrimSpace(fp), nil
		}
	}
	return "", errors.New("privnet: no fingerprint in authority certificate")
}

// DirAuthorityLines returns the torrc lines naming the network's
// authorities, for a tor of the caller's own that must join the network.
func (n *Net) DirAuthorityLines() (string, error) {
	var b strings.Builder
	for _, a := range n.byRole(Authority) {
		id, err := v3ident(a)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(&b, "DirAuthority %s orport=%d v3ident=%s 127.0.0.1:%d %s\n", a.Name, a.ORPort, id, a.DirPort, a.Fingerprint)
	}
	return b.String(), nil
}

// JoinTorrc returns the torrc lines a relay of the caller's own needs to
// join the network (a dust mote, say): the testing network, our
// authorities only, and the settings of a network on loopback.
func (n *Net) JoinTorrc() (string, error) {
	auths, err := n.DirAuthorityLines()
	if err != nil {
		return "", err
	}
	return "TestingTorNetwork 1\n" + auths +
		"Address 127.0.0.1\nAssumeReachable 1\nAddressDisableIPv6 1\n" +
		"LearnCircuitBuildTimeout 0\nCircuitBuildTimeout 30\nNumCPUs 1\n" +
		"# a network of a handful of relays leaves vanguards-lite too few nodes for onion services\n" +
		"VanguardsLiteEnabled 0\n", nil
}

func (n *Net) writeTorrcs(hash string) error {
	auths, err := n.DirAuthorityLines()
	if err != nil {
		return err
	}
	for _, nd := range n.Nodes {
		var b strings.Builder
		w := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
		w("# written by bento's privnet package: node %s", nd.Name)
		w("TestingTorNetwork 1")
		w("DataDirectory %s", nd.Dir)
		w("Nickname %s", nd.Name)
		w("PidFile %s/pid", nd.Dir)
		w("RunAsDaemon 0")
		w("Log notice file %s/notice.log", nd.Dir)
		w("SafeLogging 0")
		w("LogTimeGranularity 1")
		w("ShutdownWaitLength 0")
		w("NumCPUs 1")
		// Tor learns its circuit build timeout from the builds it sees,
		// which on loopback take milliseconds; when the 2-core machine is
		// then loaded, builds overrun the learned timeout and are abandoned
		// by the dozen ("Resetting timeout to 60000ms after 18 timeouts"),
		// an onion service's rendezvous circuits among them, and clients
		// wait minutes. A network on loopback needs a fixed timeout.
		w("LearnCircuitBuildTimeout 0")
		w("CircuitBuildTimeout 30")
		w("AddressDisableIPv6 1")
		w("ControlPort 127.0.0.1:%d", nd.ControlPort)
		w("ControlSocket %s", nd.ControlSocket())
		w("CookieAuthentication 1")
		w("HashedControlPassword %s", hash)
		b.WriteString("# our authorities only: the public ones are never configured\n")
		b.WriteString(auths)
		if nd.Role == Client {
			// ExtendedErrors: onion-service failures come back as tor's
			// own SOCKS codes (descriptor not found, introduction
			// failed, ...), which bento decodes and retries.
			w("SocksPort 127.0.0.1:%d ExtendedErrors", nd.SocksPort)
			w("PathsNeededToBuildCircuits 0.67")
			w("FetchDirInfoEarly 1")
			// Exits accept only 127.0.0.1, which a microdescriptor policy
			// summary cannot express: use full descriptors.
			w("UseMicrodescriptors 0")
			// As for the exits below: vanguards-lite keeps a client's
			// guards apart from its layer-2 vanguards, and among a handful
			// of relays that can leave no guard for an onion-service
			// circuit ("All current guards excluded by path restriction
			// type 2", then "Failed to find node for hop #1" for minutes,
			// seen once in TestDustMote).
			w("VanguardsLiteEnabled 0")
		} else {
			if nd.SocksPort != 0 {
				w("SocksPort 127.0.0.1:%d ExtendedErrors", nd.SocksPort)
				w("UseMicrodescriptors 0")
			} else {
				w("SocksPort 0")
			}
			w("ORPort 127.0.0.1:%d", nd.ORPort)
			w("Address 127.0.0.1")
			w("ContactInfo privnet@localhost")
			w("AssumeReachable 1")
			w("ServerDNSResolvConfFile %s", filepath.Join(n.Dir, "resolv.conf"))
			w("ServerDNSDetectHijacking 0")
			w("ServerDNSAllowBrokenConfig 1")
			if nd.Role == Exit {
				// Exits host Bento's onion services. In a network of a
				// handful of relays, vanguards-lite leaves too few nodes for
				// a third hop once the host, its guard and its layer-2
				// vanguards are excluded ("Failed to find node for hop #3"
				// for introduction circuits); the public network has
				// thousands of relays and does not need this.
				w("VanguardsLiteEnabled 0")
				w("ExitRelay 1")
				w("RefuseUnknownExits 0")
				w("ExitPolicyRejectPrivate 0")
				w("ExitPolicy accept 127.0.0.1:*")
				w("ExitPolicy reject *:*")
			} else {
				w("ExitRelay 0")
				w("ExitPolicy reject *:*")
			}
		}
		if nd.Role == Authority {
			w("DirPort 127.0.0.1:%d", nd.DirPort)
			w("AuthoritativeDirectory 1")
			w("V3AuthoritativeDirectory 1")
			w("AuthDirTestReachability 0")
			w("TestingV3AuthInitialVotingInterval 10")
			w("TestingV3AuthInitialVoteDelay 2")
			w("TestingV3AuthInitialDistDelay 2")
			w("V3AuthVotingInterval 10")
			w("V3AuthVoteDelay 2")
			w("V3AuthDistDelay 2")
			w("V3AuthNIntervalsValid 2")
			w("TestingDirAuthVoteExit *")
			w("TestingDirAuthVoteGuard *")
			w("TestingDirAuthVoteHSDir *")
			w("TestingMinExitFlagThreshold 0")
		}
		if n.opts.Torrc != nil {
			for _, l := range n.opts.Torrc(nd) {
				kw, _, _ := strings.Cut(strings.TrimSpace(l), " ")
				if unsafeKeyword[strings.ToLower(kw)] || strings.ContainsAny(l, "\n\r") {
					return fmt.Errorf("privnet: extra torrc line %q for %s: this option would let tor leave the private network", l, nd.Name)
				}
				w("%s", l)
			}
		}
		if err := os.WriteFile(filepath.Join(nd.Dir, "torrc"), []byte(b.String()), 0o600); err != nil {
			return err
		}
	}
	return nil
}

// unsafeKeyword lists the options extra torrc lines may not set: those
// that name directory authorities or turn the testing network off.
var unsafeKeyword = map[string]bool{
	"testingtornetwork": true, "dirauthority": true, "alternatedirauthority": true,
	"alternatebridgeauthority": true, "fallbackdir": true, "usedefaultfallbackdirs": true,
	"bridge": true, "usebridges": true, "%include": true,
}

// resetState removes what a previous run left in a node's directory but
// its keys, fingerprint and torrc.
func resetState(dir string) {
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		switch e.Name() {
		case "keys", "fingerprint", "fingerprint-ed25519", "torrc":
		default:
			os.RemoveAll(filepath.Join(dir, e.Name()))
		}
	}
}

func (n *Net) launch(ctx context.Context, extra map[string][]string, nodes ...*Node) error {
	if err := LoopbackOnly(); err != nil {
		return err
	}
	for _, nd := range nodes {
		resetState(nd.Dir)
		log, err := os.Create(filepath.Join(nd.Dir, "start.log"))
		if err != nil {
			return err
		}
		args := []string{"--defaults-torrc", n.emptyTorrc(), "-f", filepath.Join(nd.Dir, "torrc"),
			"--__OwningControllerProcess", strconv.Itoa(os.Getpid())}
		args = append(args, extra[nd.Name]...)
		cmd := exec.Command(n.opts.Tor, args...)
		cmd.Stdout, cmd.Stderr = log, log
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
		if err := cmd.Start(); err != nil {
			log.Close()
			return fmt.Errorf("privnet: starting tor %s: %w", nd.Name, err)
		}
		log.Close()
		nd.cmd, nd.exited = cmd, make(chan struct{})
		go func() { _ = cmd.Wait(); close(nd.exited) }()
	}
	// Ready when the control port answers.
	for _, nd := range nodes {
		for {
			c, err := net.DialTimeout("tcp", nd.ControlAddr(), time.Second)
			if err == nil {
				c.Close()
				break
			}
			select {
			case <-nd.exited:
				return fmt.Errorf("privnet: tor %s exited at start:\n%s", nd.Name, tail(filepath.Join(nd.Dir, "start.log")))
			case <-ctx.Done():
				return fmt.Errorf("privnet: tor %s did not open its control port: %w", nd.Name, ctx.Err())
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	return nil
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return strings.Join(lines, "\n")
}

// votingOffset picks TestingV3AuthVotingStartOffset so that the first vote
// happens lead after launch, once every relay has uploaded its descriptor;
// the first consensus then lists them all (privnet.md §3).
func votingOffset(launch time.Time, lead time.Duration) int {
	const interval, voteDelay, distDelay = 10, 2, 2
	first := launch.Add(lead).Unix() + voteDelay + distDelay + 1
	return int(first % 86400 % interval)
}

func (n *Net) start(ctx context.Context) error {
	t0 := time.Now()
	off := strconv.Itoa(votingOffset(t0, 2500*time.Millisecond))
	extra := map[string][]string{}
	for _, a := range n.byRole(Authority) {
		extra[a.Name] = []string{"--TestingV3AuthVotingStartOffset", off}
	}
	if err := n.launch(ctx, extra, n.relays()...); err != nil {
		return err
	}
	n.logf("privnet: %d relays started", len(n.relays()))
	want := len(n.relays())
	auth := n.byRole(Authority)[0]
	if err := n.poll(ctx, "the authorities' consensus to list every relay", func() (bool, error) {
		return n.consensusSize(ctx, auth) >= want, nil
	}); err != nil {
		return err
	}
	n.ConsensusAfter = time.Since(t0)
	n.logf("privnet: consensus lists all %d relays after %.1fs", want, n.ConsensusAfter.Seconds())
	// Relays backed off after early 404s; a HUP makes them fetch now.
	for _, nd := range n.relays() {
		if nd.Role != Authority {
			_ = nd.cmd.Process.Signal(syscall.SIGHUP)
		}
	}
	cl := n.Client()
	if err := n.launch(ctx, nil, cl); err != nil {
		return err
	}
	if err := n.poll(ctx, "the client to bootstrap", func() (bool, error) {
		c, err := n.Control(ctx, cl)
		if err != nil {
			return false, nil
		}
		defer c.Close()
		info, err := c.GetInfo(ctx, "status/bootstrap-phase")
		if err != nil || !strings.Contains(info["status/bootstrap-phase"], "PROGRESS=100") {
			return false, nil
		}
		if n.consensusSize(ctx, cl) < want {
			return false, nil
		}
		d, err := c.GetInfo(ctx, "desc/all-recent")
		return err == nil && strings.Count(d["desc/all-recent"], "\nrouter ")+boolInt(strings.HasPrefix(d["desc/all-recent"], "router ")) >= want, nil
	}); err != nil {
		return err
	}
	// A stream through an exit back to 127.0.0.1, from the client and from
	// each exit's own SOCKS port. The target is the client's SocksPort,
	// which answers HTTP with "501 Tor is not an HTTP Proxy".
	for _, nd := range append([]*Node{cl}, n.Exits()...) {
		if nd.SocksPort == 0 {
			continue
		}
		if err := n.poll(ctx, "a stream through "+nd.Name+"'s SOCKS port", func() (bool, error) {
			return probe(ctx, nd.SocksAddr(), cl.SocksAddr()) == nil, nil
		}); err != nil {
			return err
		}
	}
	n.ReadyAfter = time.Since(t0)
	n.logf("privnet: ready after %.1fs", n.ReadyAfter.Seconds())
	return nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func probe(ctx context.Context, socksAddr, target string) error {
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	d := &socks.Dialer{Proxy: socksAddr}
	c, err := d.DialContext(pctx, "tcp", target)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.0\r\n\r\n"); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "HTTP/1.0 501") {
		return fmt.Errorf("probe answered %q", line)
	}
	return nil
}

func (n *Net) poll(ctx context.Context, what string, f func() (bool, error)) error {
	for {
		for _, nd := range n.Nodes {
			if nd.cmd == nil {
				continue
			}
			select {
			case <-nd.exited:
				return fmt.Errorf("privnet: tor %s died while waiting for %s:\n%s", nd.Name, what, tail(filepath.Join(nd.Dir, "notice.log")))
			default:
			}
		}
		ok, err := f()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("privnet: timed out waiting for %s", what)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (n *Net) consensusSize(ctx context.Context, nd *Node) int {
	c, err := n.Control(ctx, nd)
	if err != nil {
		return 0
	}
	defer c.Close()
	info, err := c.GetInfo(ctx, "ns/all")
	if err != nil {
		return 0
	}
	cnt := 0
	for _, l := range strings.Split(info["ns/all"], "\n") {
		if strings.HasPrefix(l, "r ") {
			cnt++
		}
	}
	return cnt
}

// Control opens an authenticated control connection to nd (cookie).
func (n *Net) Control(ctx context.Context, nd *Node) (*torctl.Conn, error) {
	c, err := torctl.Dial(ctx, "tcp", nd.ControlAddr())
	if err != nil {
		return nil, err
	}
	if err := c.Authenticate(ctx, torctl.Auth{CookieFile: nd.CookieFile()}); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Stop ends every tor the network started (SIGTERM, then SIGKILL after
// 5 s) and waits for them. It is safe to call more than once.
func (n *Net) Stop() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.stopped {
		return
	}
	n.stopped = true
	for _, nd := range n.Nodes {
		if nd.PID() != 0 {
			_ = nd.cmd.Process.Signal(syscall.SIGTERM)
		}
	}
	until := time.Now().Add(5 * time.Second)
	for _, nd := range n.Nodes {
		if nd.cmd == nil {
			continue
		}
		select {
		case <-nd.exited:
		case <-time.After(time.Until(until)):
			_ = nd.cmd.Process.Kill()
			<-nd.exited
		}
	}
}

// Restart stops one relay (SIGTERM, as a tor restart by its operator
// does) and starts it again with the same keys, returning once its control
// port answers. Controllers connected to it lose their connection.
func (n *Net) Restart(ctx context.Context, nd *Node) error {
	if nd.Role == Authority {
		return errors.New("privnet: restarting an authority is not supported")
	}
	if nd.PID() != 0 {
		_ = nd.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-nd.exited:
		case <-time.After(10 * time.Second):
			_ = nd.cmd.Process.Kill()
			<-nd.exited
		}
	}
	return n.launch(ctx, nil, nd)
}
