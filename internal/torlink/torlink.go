// Package torlink is bentod's link to the tor beside it: one control
// connection kept open across tor restarts (torctl.Keeper), on which bentod
// publishes itself as an onion service with a key kept in its data
// directory. The service is tied to that connection (no Detach), so it
// disappears when bentod does and is published again after tor restarts.
package torlink

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/torbento/bento/internal/atomicfile"
	"github.com/torbento/bento/internal/exitpolicy"
	"github.com/torbento/bento/internal/policy"
	"github.com/torbento/bento/internal/safelog"
	"github.com/torbento/bento/internal/torctl"
)

// KeyFile is the onion service's private key, in DataDirectory.
const KeyFile = "onion_service_key"

// HostnameFile holds the onion address (like tor's HiddenServiceDir/hostname).
const HostnameFile = "onion_hostname"

// Link is bentod's control connection to tor.
type Link struct {
	keeper   *torctl.Keeper
	dataDir  string
	onion    bool
	virtPort int
	target   string
	streams  int // MaxStreams per rendezvous circuit (0: tor's default, unlimited)
	log      *slog.Logger

	mu        sync.Mutex
	serviceID string
	onConnect []func(ctx context.Context, c *torctl.Conn) error
	published []func(id string, c *torctl.Conn)
	events    map[string]bool
	handlers  []func(*torctl.Reply)
	uploaded  map[string]chan struct{} // onion service IDs waiting for their first upload
	uploads   map[string]*uploadCount  // descriptor uploads under way, by service ID
	exit      *exitpolicy.Policy       // the relay's exit policy, read at each connection
}

// ExitPolicy returns the relay's exit policy as tor reported it on the
// current connection, or nil before the first connection.
func (l *Link) ExitPolicy() *exitpolicy.Policy {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.exit
}

// uploadCount follows the HS_DESC events of one service's first upload.
type uploadCount struct{ started, done, ok int }

// Subscribe asks for events on every connection and passes them to h,
// from the reading goroutine and in order. Call it before Run.
func (l *Link) Subscribe(events []string, h func(*torctl.Reply)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range events {
		l.events[e] = true
	}
	l.handlers = append(l.handlers, h)
}

func (l *Link) dispatch(r *torctl.Reply) {
	failed := "" // a descriptor upload of a service someone waits for that failed
	l.mu.Lock()
	hs := make([]func(*torctl.Reply), len(l.handlers))
	copy(hs, l.handlers)
	if words, _, err := torctl.ParseLine(r.Lines[0].Text); err == nil && len(words) >= 3 && words[0] == "HS_DESC" {
		id := words[2]
		u := l.uploads[id]
		if _, waiting := l.uploaded[id]; !waiting {
			// Only services someone waits for are followed (a waiter is
			// registered as ADD_ONION answers, before any upload starts).
		} else if u == nil {
			u = &uploadCount{}
			l.uploads[id] = u
		}
		switch {
		case u == nil:
		case words[1] == "UPLOAD":
			u.started++
		case words[1] == "UPLOADED":
			u.done++
			u.ok++
		case words[1] == "FAILED":
			u.done++
			failed = r.Lines[0].Text
		}
		// Ready once every HSDir tor is uploading to has answered and one
		// at least took the descriptor: a client asking any of them then
		// finds it.
		if ch, waiting := l.uploaded[id]; waiting && u != nil && u.ok > 0 && u.done >= u.started {
			close(ch)
			delete(l.uploaded, id)
			delete(l.uploads, id)
		}
	}
	l.mu.Unlock()
	if failed != "" {
		l.log.Info("an upload of the onion service's descriptor failed; tor goes on with the other HSDirs", "event", failed)
	}
	for _, h := range hs {
		h(r)
	}
}

// StopWaiting forgets a wait that gave up (a service that never finished
// its upload).
func (l *Link) StopWaiting(id string) {
	l.mu.Lock()
	delete(l.uploaded, id)
	delete(l.uploads, id)
	l.mu.Unlock()
}

// WaitUploaded returns a channel closed when tor has uploaded a descriptor
// of onion service id to the HSDirs responsible for it (every upload it
// started has been answered, one at least accepted): from then on clients
// can find it.
// Clients that look a service up too early are told it does not exist and
// do not ask the same HSDirs again for 15 minutes.
func (l *Link) WaitUploaded(id string) <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	ch, ok := l.uploaded[id]
	if !ok {
		ch = make(chan struct{})
		l.uploaded[id] = ch
	}
	return ch
}

// New prepares a link for policy p. listen is the address clients reach
// bentod on directly, whose port the onion service offers (unless
// OnionServicePort says otherwise); target is the address the onion
// service forwards to, a listener of its own so that connections through
// Tor have their own limits. It returns nil when p names no TorControlPort.
func New(p *policy.Policy, listen, target string, log *slog.Logger) (*Link, error) {
	if p.TorControlPort == "" {
		return nil, nil
	}
	_, port, err := net.SplitHostPort(listen)
	if err != nil {
		return nil, err
	}
	vp, _ := strconv.Atoi(port)
	if p.OnionServicePort != 0 {
		vp = p.OnionServicePort
	}
	l := &Link{dataDir: p.DataDirectory, onion: p.OnionService, virtPort: vp, target: target, streams: p.Daemon.OnionMaxStreams, log: log,
		events: map[string]bool{"HS_DESC": true}, uploaded: map[string]chan struct{}{}, uploads: map[string]*uploadCount{}}
	network, addr := torctl.ParseAddr(p.TorControlPort)
	l.keeper = &torctl.Keeper{
		Network: network, Addr: addr,
		Auth:  torctl.Auth{Password: p.TorControlPassword, CookieFile: p.TorCookieFile},
		Setup: l.setup,
		Logf: func(format string, args ...any) {
			safelog.Notice(log, fmt.Sprintf(format, args...))
		},
	}
	return l, nil
}

// OnConnect adds a function run on every new control connection, after the
// onion service is published (the firewall subscribes to events here).
func (l *Link) OnConnect(f func(ctx context.Context, c *torctl.Conn) error) {
	l.mu.Lock()
	l.onConnect = append(l.onConnect, f)
	l.mu.Unlock()
}

// Run keeps the link until ctx ends.
// OnPublished registers f to run, on the connection that published it,
// each time bentod's onion service is up (at start and after tor
// restarts), with the service ID.
func (l *Link) OnPublished(f func(id string, c *torctl.Conn)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.published = append(l.published, f)
}

// Logger is the link's logger.
func (l *Link) Logger() *slog.Logger { return l.log }

// VirtPort is the onion service's port.
func (l *Link) VirtPort() int { return l.virtPort }

// KeyPath is where the onion service's key is kept.
func (l *Link) KeyPath() string { return filepath.Join(l.dataDir, KeyFile) }

func (l *Link) Run(ctx context.Context) { l.keeper.Run(ctx) }

// Conn returns the current control connection, waiting until ctx ends.
func (l *Link) Conn(ctx context.Context) (*torctl.Conn, error) { return l.keeper.Conn(ctx) }

// Onion returns bentod's onion address as HOST:PORT ("" until published).
func (l *Link) Onion() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.serviceID == "" {
		return ""
	}
	return l.serviceID + ".onion:" + strconv.Itoa(l.virtPort)
}

func (l *Link) setup(ctx context.Context, c *torctl.Conn) error {
	c.OnEvent(l.dispatch)
	l.mu.Lock()
	var evs []string
	for e := range l.events {
		evs = append(evs, e)
	}
	l.mu.Unlock()
	sort.Strings(evs)
	cmd, err := torctl.NewCommand("SETEVENTS", evs...)
	if err != nil {
		return err
	}
	if _, err := c.Do(ctx, cmd); err != nil {
		return fmt.Errorf("subscribing to events: %w", err)
	}
	// Direct connections from functions stay within what the relay itself
	// would carry as an exit.
	info, err := c.GetInfo(ctx, "exit-policy/full")
	if err != nil {
		return fmt.Errorf("reading the relay's exit policy: %w", err)
	}
	ep, _, err := exitpolicy.Parse(info["exit-policy/full"])
	if err != nil {
		return fmt.Errorf("parsing the relay's exit policy: %w", err)
	}
	l.mu.Lock()
	l.exit = ep
	l.mu.Unlock()
	if l.onion {
		if err := l.publish(ctx, c); err != nil {
			return err
		}
	}
	l.mu.Lock()
	fs := append([]func(context.Context, *torctl.Conn) error(nil), l.onConnect...)
	l.mu.Unlock()
	for _, f := range fs {
		if err := f(ctx, c); err != nil {
			return err
		}
	}
	return nil
}

func (l *Link) publish(ctx context.Context, c *torctl.Conn) error {
	keyPath := filepath.Join(l.dataDir, KeyFile)
	key := "NEW:ED25519-V3"
	var flags, args []string
	if l.streams > 0 {
		// tor's own per-client bound: a rendezvous circuit (one client's
		// connection to the service) that opens more streams is closed.
		flags = append(flags, "MaxStreamsCloseCircuit")
		args = append(args, "MaxStreams="+strconv.Itoa(l.streams))
	}
	b, err := os.ReadFile(keyPath)
	switch {
	case err == nil:
		key = strings.TrimSpace(string(b))
		if !strings.HasPrefix(key, "ED25519-V3:") || torctl.ValidArg(key) != nil {
			return fmt.Errorf("onion service key %s is damaged (want one ED25519-V3:... line); move it away to make a new address", keyPath)
		}
		flags = append(flags, "DiscardPK")
	case errors.Is(err, os.ErrNotExist):
	default:
		return fmt.Errorf("reading the onion service key: %w", err)
	}
	cmdArgs := []string{key}
	if len(flags) > 0 {
		cmdArgs = append(cmdArgs, "Flags="+strings.Join(flags, ","))
	}
	cmdArgs = append(append(cmdArgs, args...), fmt.Sprintf("Port=%d,%s", l.virtPort, l.target))
	cmd, err := torctl.NewCommand("ADD_ONION", cmdArgs...)
	if err != nil {
		return err
	}
	r, err := c.Do(ctx, cmd)
	if err != nil {
		return fmt.Errorf("publishing the onion service: %w", err)
	}
	id, priv := "", ""
	for _, line := range r.Lines {
		if v, ok := strings.CutPrefix(line.Text, "ServiceID="); ok {
			id = v
		}
		if v, ok := strings.CutPrefix(line.Text, "PrivateKey="); ok {
			priv = v
		}
	}
	if id == "" {
		return fmt.Errorf("ADD_ONION reply has no ServiceID")
	}
	up := l.WaitUploaded(id)
	if priv != "" {
		tmp := keyPath + ".tmp"
		if err := os.WriteFile(tmp, []byte(priv+"\n"), 0o600); err != nil {
			return fmt.Errorf("saving the onion service key: %w", err)
		}
		if err := os.Rename(tmp, keyPath); err != nil {
			return fmt.Errorf("saving the onion service key: %w", err)
		}
	}
	// Announce the address once clients can find it.
	go func() {
		select {
		case <-up:
		case <-c.Done():
			return
		case <-time.After(2 * time.Minute):
			l.log.Warn("onion service descriptor not uploaded after 2 minutes; announcing the address anyway", "onion", id+".onion")
		}
		// Atomically: whoever polls for the file never reads it half written.
		if err := atomicfile.Write(filepath.Join(l.dataDir, HostnameFile), []byte(id+".onion\n"), 0o644); err != nil {
			l.log.Warn("writing the onion hostname", "err", err)
		}
		l.mu.Lock()
		l.serviceID = id
		l.mu.Unlock()
		// The onion address is what clients are meant to use: not scrubbed.
		safelog.Notice(l.log, "onion service published", "onion", id+".onion", "port", l.virtPort)
		l.mu.Lock()
		fs := slices.Clone(l.published)
		l.mu.Unlock()
		for _, f := range fs {
			f(id, c)
		}
	}()
	return nil
}

// Traffic returns the bytes tor has read and written since it started
// (GETINFO traffic/read and traffic/written).
func (l *Link) Traffic(ctx context.Context) (read, written uint64, err error) {
	c, err := l.keeper.Conn(ctx)
	if err != nil {
		return 0, 0, err
	}
	info, err := c.GetInfo(ctx, "traffic/read", "traffic/written")
	if err != nil {
		return 0, 0, err
	}
	read, err = strconv.ParseUint(info["traffic/read"], 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("tor's traffic/read %q: %w", info["traffic/read"], err)
	}
	written, err = strconv.ParseUint(info["traffic/written"], 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("tor's traffic/written %q: %w", info["traffic/written"], err)
	}
	return read, written, nil
}

// CountsLocal reports whether tor counts (and rate-limits) connections to
// private addresses such as loopback (CountPrivateBandwidth 1).
func (l *Link) CountsLocal(ctx context.Context) (bool, error) {
	c, err := l.keeper.Conn(ctx)
	if err != nil {
		return false, err
	}
	r, err := c.Do(ctx, torctl.MustCommand("GETCONF", "CountPrivateBandwidth"))
	if err != nil {
		return false, err
	}
	for _, ln := range r.Lines {
		if v, ok := strings.CutPrefix(ln.Text, "CountPrivateBandwidth="); ok {
			return v == "1", nil
		}
	}
	return false, nil
}
