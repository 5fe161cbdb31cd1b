package torfw

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/torbento/bento/internal/torctl"
)

// Upstream gives the firewall bentod's control connection to tor.
type Upstream interface {
	Conn(ctx context.Context) (*torctl.Conn, error)
}

// Limits bound what one function may hold at once.
type Limits struct {
	Circuits int // circuits built with EXTENDCIRCUIT; default 8
	Onions   int // onion services; default 2
	Events   int // queued events before the oldest are dropped; default 256
}

// Events a function may subscribe to; their contents are filtered to what
// it owns (STATUS_CLIENT is the client side's bootstrap and reachability,
// which reveals nothing about other users).
var allowedEvents = map[string]bool{"CIRC": true, "STREAM": true, "CIRC_MINOR": true, "HS_DESC": true, "STATUS_CLIENT": true}

// trackedEvents are those bentod's own connection subscribes to for the
// firewall.
var trackedEvents = []string{"CIRC", "STREAM", "CIRC_MINOR", "HS_DESC", "STATUS_CLIENT"}

// GETINFO keys functions may read from tor as is: public network data
// only. circuit-status, stream-status and onions/current are answered with
// the function's own objects.
var getinfoExact = map[string]bool{
	"version": true, "status/bootstrap-phase": true, "network-liveness": true,
	"status/circuit-established": true, "status/enough-dir-info": true,
}
var getinfoPrefix = []string{"ns/id/", "ns/name/", "md/id/", "ip-to-country/", "current-time/"}

// Why each refused command is refused, for the 510 line.
var forbidden = map[string]string{
	"SETCONF": "would reconfigure the relay", "RESETCONF": "would reconfigure the relay",
	"LOADCONF": "would reconfigure the relay", "SAVECONF": "would rewrite the relay's torrc",
	"GETCONF": "would reveal the relay's configuration", "SIGNAL": "would act on the whole relay",
	"TAKEOWNERSHIP": "would tie the relay's life to a function", "DROPOWNERSHIP": "would change who owns tor",
	"MAPADDRESS": "would change address mappings for every user", "RESOLVE": "results go to every controller",
	"POSTDESCRIPTOR": "would change the relay's directory data", "HSPOST": "would publish descriptors for others",
	"HSFETCH": "not available to functions", "DROPGUARDS": "would change the relay's guards",
	"DROPTIMEOUTS": "would reset the relay's circuit timeouts", "SETROUTERPURPOSE": "obsolete",
	"SETCIRCUITPURPOSE": "not available to functions", "REDIRECTSTREAM": "could send a stream anywhere",
	"USEFEATURE": "not available to functions", "ONION_CLIENT_AUTH_ADD": "would change the relay's client keys",
	"ONION_CLIENT_AUTH_REMOVE": "would change the relay's client keys", "ONION_CLIENT_AUTH_VIEW": "would reveal client keys",
}

// Firewall mediates every function's access to tor's control port.
type Firewall struct {
	up     Upstream
	limits Limits
	// Listen returns the address tor should forward a function's onion
	// service port to (a listener bentod owns for that function). When
	// nil, functions cannot publish onion services.
	Listen func(owner string, virtPort int) (string, error)

	mu       sync.Mutex
	sessions map[string]*Session // by owner name
	circ     map[string]*Session
	strm     map[string]*Session
	onion    map[string]*Session
}

// New returns a firewall in front of up.
func New(up Upstream, l Limits) *Firewall {
	if l.Circuits == 0 {
		l.Circuits = 8
	}
	if l.Onions == 0 {
		l.Onions = 2
	}
	if l.Events == 0 {
		l.Events = 256
	}
	return &Firewall{up: up, limits: l, sessions: map[string]*Session{},
		circ: map[string]*Session{}, strm: map[string]*Session{}, onion: map[string]*Session{}}
}

// TrackedEvents are the events bentod's own control connection must
// subscribe to and pass to HandleEvent.
func TrackedEvents() []string { return append([]string(nil), trackedEvents...) }

// Reset runs on every new control connection: after a reconnection tor
// has forgotten the onion services functions created on the old connection
// (they went with it); so does the firewall.
func (fw *Firewall) Reset(ctx context.Context, c *torctl.Conn) error {
	fw.mu.Lock()
	for id, s := range fw.onion {
		delete(fw.onion, id)
		s.mu.Lock()
		delete(s.onions, id)
		s.mu.Unlock()
	}
	fw.mu.Unlock()
	return nil
}

// Session is one function's view of the control port.
type Session struct {
	fw    *Firewall
	owner string

	mu       sync.Mutex
	subs     map[string]bool
	queue    []*torctl.Reply
	dropped  int
	notify   chan struct{}
	circuits map[string]bool
	streams  map[string]bool
	onions   map[string]bool
	expect   map[string]chan string // SOCKS password → the new stream's ID
	closed   bool
}

// OwnsCircuit reports whether the function owns circuit id.
func (s *Session) OwnsCircuit(id string) bool { return s.ownsCircuit(id) }

// ExpectStream returns a channel that receives the ID of the stream tor
// reports as SENTCONNECT for this function with SOCKS password pw. bentod
// dials with a password of its own for each stream it must put on a chosen
// circuit, and moves it there with ATTACHSTREAM while it waits for the
// exit's answer: tor accepts ATTACHSTREAM for a stream it attached itself
// only in that state (without __LeaveStreamsUnattached, which bentod never
// sets on the relay's tor because every other stream would then wait for
// bentod).
func (s *Session) ExpectStream(pw string) <-chan string {
	ch := make(chan string, 1)
	s.mu.Lock()
	s.expect[pw] = ch
	s.mu.Unlock()
	return ch
}

// Unexpect drops an expectation that will not be met.
func (s *Session) Unexpect(pw string) {
	s.mu.Lock()
	delete(s.expect, pw)
	s.mu.Unlock()
}

// Open starts the session of owner, the SOCKS username bentod gives the
// function's Tor traffic.
func (fw *Firewall) Open(owner string) *Session {
	s := &Session{fw: fw, owner: owner, subs: map[string]bool{}, notify: make(chan struct{}, 1),
		circuits: map[string]bool{}, streams: map[string]bool{}, onions: map[string]bool{}, expect: map[string]chan string{}}
	fw.mu.Lock()
	fw.sessions[owner] = s
	fw.mu.Unlock()
	return s
}

// Owned lists what the session holds (for tests and status).
func (s *Session) Owned() (circuits, streams, onions []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id := range s.circuits {
		circuits = append(circuits, id)
	}
	for id := range s.streams {
		streams = append(streams, id)
	}
	for id := range s.onions {
		onions = append(onions, id)
	}
	return
}

func reply(code int, text string) *torctl.Reply {
	return &torctl.Reply{Status: code, Lines: []torctl.Line{{Status: code, Sep: ' ', Text: text}}}
}

// Filtered is the reply to a refused command.
func Filtered(why string) *torctl.Reply {
	return reply(510, "Command filtered: "+why)
}

// Do carries out one command line from the function and returns the reply
// it may see. It never returns a Go error for a refused command: the
// refusal is a 510 (or 552 for an ID the function does not own, the same
// answer tor gives for an ID that does not exist).
func (s *Session) Do(ctx context.Context, line string) (*torctl.Reply, error) {
	cmd, err := Parse(line)
	if err != nil {
		return reply(513, "Syntax error: "+err.Error()), nil
	}
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return nil, fmt.Errorf("control session closed")
	}
	args := cmd.Args()
	switch kw := cmd.Keyword(); kw {
	case "AUTHENTICATE", "AUTHCHALLENGE":
		return reply(250, "OK"), nil // the function is already who it is
	case "PROTOCOLINFO":
		return &torctl.Reply{Status: 250, Lines: []torctl.Line{
			{Status: 250, Sep: '-', Text: "PROTOCOLINFO 1"},
			{Status: 250, Sep: '-', Text: "AUTH METHODS=NULL"},
			{Status: 250, Sep: ' ', Text: "OK"}}}, nil
	case "QUIT":
		return reply(250, "closing connection"), nil
	case "GETINFO":
		return s.getinfo(ctx, args)
	case "SETEVENTS":
		return s.setevents(args), nil
	case "EXTENDCIRCUIT":
		return s.extendCircuit(ctx, cmd, args)
	case "CLOSECIRCUIT":
		if len(args) < 1 || len(args) > 2 || (len(args) == 2 && args[1] != "IfUnused") {
			return reply(512, "Syntax error: CLOSECIRCUIT CircuitID [IfUnused]"), nil
		}
		if !s.ownsCircuit(args[0]) {
			return reply(552, fmt.Sprintf("Unknown circuit %q", args[0])), nil
		}
		return s.forward(ctx, cmd)
	case "ATTACHSTREAM":
		if len(args) < 2 || len(args) > 3 || (len(args) == 3 && !strings.HasPrefix(args[2], "HOP=")) {
			return reply(512, "Syntax error: ATTACHSTREAM StreamID CircuitID [HOP=n]"), nil
		}
		if !s.ownsStream(args[0]) {
			return reply(552, fmt.Sprintf("Unknown stream %q", args[0])), nil
		}
		if args[1] != "0" && !s.ownsCircuit(args[1]) {
			return reply(552, fmt.Sprintf("Unknown circuit %q", args[1])), nil
		}
		return s.forward(ctx, cmd)
	case "CLOSESTREAM":
		if len(args) < 2 {
			return reply(512, "Syntax error: CLOSESTREAM StreamID Reason"), nil
		}
		if !s.ownsStream(args[0]) {
			return reply(552, fmt.Sprintf("Unknown stream %q", args[0])), nil
		}
		if _, err := strconv.Atoi(args[1]); err != nil {
			return reply(512, "Syntax error: the reason must be a number"), nil
		}
		c, _ := torctl.NewCommand("CLOSESTREAM", args[0], args[1])
		return s.forward(ctx, c)
	case "ADD_ONION":
		return s.addOnion(ctx, args)
	case "DEL_ONION":
		if len(args) != 1 {
			return reply(512, "Syntax error: DEL_ONION ServiceID"), nil
		}
		s.mu.Lock()
		owned := s.onions[args[0]]
		s.mu.Unlock()
		if !owned {
			return reply(552, "Unknown Onion Service id"), nil
		}
		r, err := s.forward(ctx, cmd)
		if err == nil && r.OK() {
			s.fw.mu.Lock()
			delete(s.fw.onion, args[0])
			s.fw.mu.Unlock()
			s.mu.Lock()
			delete(s.onions, args[0])
			s.mu.Unlock()
		}
		return r, err
	default:
		if why := forbidden[kw]; why != "" {
			return Filtered(kw + " " + why), nil
		}
		return Filtered(kw + " is not available to functions"), nil
	}
}

// forward sends an allowed command to tor.
func (s *Session) forward(ctx context.Context, cmd torctl.Command) (*torctl.Reply, error) {
	c, err := s.fw.up.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("tor's control port is unavailable: %w", err)
	}
	return c.Send(ctx, cmd)
}

func (s *Session) ownsCircuit(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return validID(id) && s.circuits[id]
}

func (s *Session) ownsStream(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return validID(id) && s.streams[id]
}

func getinfoAllowed(key string) bool {
	if getinfoExact[key] {
		return true
	}
	for _, p := range getinfoPrefix {
		if strings.HasPrefix(key, p) && len(key) > len(p) {
			return true
		}
	}
	return false
}

func (s *Session) getinfo(ctx context.Context, keys []string) (*torctl.Reply, error) {
	if len(keys) == 0 {
		return reply(512, "Missing GETINFO key"), nil
	}
	for _, k := range keys {
		if k != "circuit-status" && k != "stream-status" && k != "onions/current" && !getinfoAllowed(k) {
			return Filtered(fmt.Sprintf("GETINFO %s is not on the functions' allow-list", k)), nil
		}
	}
	out := &torctl.Reply{Status: 250}
	for _, k := range keys {
		switch {
		case k == "circuit-status" || k == "stream-status":
			r, err := s.forward(ctx, torctl.MustCommand("GETINFO", k))
			if err != nil {
				return nil, err
			}
			if !r.OK() {
				return r, nil
			}
			var keep []string
			for _, l := range strings.Split(r.GetInfo()[k], "\n") {
				id, _, _ := strings.Cut(l, " ")
				if id != "" && ((k == "circuit-status" && s.ownsCircuit(id)) || (k == "stream-status" && s.ownsStream(id))) {
					keep = append(keep, l)
				}
			}
			out.Lines = append(out.Lines, dataLine(k, keep))
		case k == "onions/current":
			_, _, onions := s.Owned()
			out.Lines = append(out.Lines, dataLine(k, onions))
		case getinfoAllowed(k):
			c, err := torctl.NewCommand("GETINFO", k)
			if err != nil {
				return reply(512, err.Error()), nil
			}
			r, err := s.forward(ctx, c)
			if err != nil {
				return nil, err
			}
			if !r.OK() {
				return r, nil
			}
			out.Lines = append(out.Lines, r.Lines[:len(r.Lines)-1]...)
		default:
			return Filtered(fmt.Sprintf("GETINFO %s is not on the functions' allow-list", k)), nil
		}
	}
	out.Lines = append(out.Lines, torctl.Line{Status: 250, Sep: ' ', Text: "OK"})
	return out, nil
}

func dataLine(key string, lines []string) torctl.Line {
	d := []byte{}
	if len(lines) > 0 {
		d = []byte(strings.Join(lines, "\n") + "\n")
	}
	return torctl.Line{Status: 250, Sep: '+', Text: key + "=", Data: d}
}

func (s *Session) setevents(args []string) *torctl.Reply {
	subs := map[string]bool{}
	for _, a := range args {
		e := strings.ToUpper(a)
		if e == "EXTENDED" {
			continue
		}
		if !allowedEvents[e] {
			return Filtered(fmt.Sprintf("event %s is not available to functions (allowed: CIRC, STREAM, CIRC_MINOR, HS_DESC, STATUS_CLIENT)", a))
		}
		subs[e] = true
	}
	s.mu.Lock()
	s.subs = subs
	s.mu.Unlock()
	return reply(250, "OK")
}

// validPathItem accepts a server spec: $FINGERPRINT[~nick|=nick] or a nickname.
func validPathItem(p string) bool {
	if p == "" || len(p) > 64 {
		return false
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '$' || c == '~' || c == '=') {
			return false
		}
	}
	return true
}

func (s *Session) extendCircuit(ctx context.Context, cmd torctl.Command, args []string) (*torctl.Reply, error) {
	if len(args) == 0 || len(args) > 3 {
		return reply(512, "Syntax error: EXTENDCIRCUIT CircuitID [ServerSpec[,ServerSpec...]] [purpose=general|controller]"), nil
	}
	id := args[0]
	for _, a := range args[1:] {
		if k, v, ok := kvArg(a); ok && strings.EqualFold(k, "purpose") {
			if v != "general" && v != "controller" {
				return Filtered("EXTENDCIRCUIT purpose must be general or controller"), nil
			}
			continue
		}
		for _, p := range strings.Split(a, ",") {
			if !validPathItem(p) {
				return reply(512, fmt.Sprintf("Syntax error: bad server spec %q", p)), nil
			}
		}
	}
	if id == "0" {
		s.mu.Lock()
		n := len(s.circuits)
		s.mu.Unlock()
		if n >= s.fw.limits.Circuits {
			return Filtered(fmt.Sprintf("a function may hold at most %d circuits; close one first", s.fw.limits.Circuits)), nil
		}
	} else if !s.ownsCircuit(id) {
		return reply(552, fmt.Sprintf("Unknown circuit %q", id)), nil
	}
	r, err := s.forward(ctx, cmd)
	if err != nil || !r.OK() {
		return r, err
	}
	words, _, _ := torctl.ParseLine(r.Lines[0].Text)
	if len(words) == 2 && words[0] == "EXTENDED" && validID(words[1]) {
		s.fw.mu.Lock()
		s.fw.circ[words[1]] = s
		s.fw.mu.Unlock()
		s.mu.Lock()
		s.circuits[words[1]] = true
		s.mu.Unlock()
	}
	return r, nil
}

func (s *Session) addOnion(ctx context.Context, args []string) (*torctl.Reply, error) {
	if len(args) < 2 {
		return reply(512, "Syntax error: ADD_ONION KeyType:KeyBlob [Flags=...] Port=VIRTPORT ..."), nil
	}
	key := args[0]
	if key != "NEW:ED25519-V3" && key != "NEW:BEST" && !strings.HasPrefix(key, "ED25519-V3:") {
		return Filtered("ADD_ONION takes NEW:ED25519-V3, NEW:BEST or an ED25519-V3 key"), nil
	}
	if key == "NEW:BEST" {
		key = "NEW:ED25519-V3"
	}
	out := []string{key}
	var ports []int
	maxStreams := ""
	for _, a := range args[1:] {
		k, v, ok := kvArg(a)
		if !ok {
			return reply(512, fmt.Sprintf("Syntax error: %q", a)), nil
		}
		switch strings.ToLower(k) {
		case "flags":
			for _, f := range strings.Split(v, ",") {
				switch f {
				case "DiscardPK", "MaxStreamsCloseCircuit":
				case "Detach":
					return Filtered("ADD_ONION Flags=Detach: a function's onion services end with it"), nil
				default:
					return Filtered(fmt.Sprintf("ADD_ONION flag %s is not available to functions", f)), nil
				}
			}
		case "maxstreams":
			if n, err := strconv.Atoi(v); err != nil || n < 0 || n > 65535 {
				return reply(512, "Syntax error: MaxStreams"), nil
			}
			maxStreams = v
		case "port":
			virt, target, hasTarget := strings.Cut(v, ",")
			n, err := strconv.Atoi(virt)
			if err != nil || n < 1 || n > 65535 {
				return reply(512, fmt.Sprintf("Syntax error: bad virtual port %q", virt)), nil
			}
			if hasTarget && target != "" {
				return Filtered("ADD_ONION Port targets are chosen by bentod: write Port=VIRTPORT and accept connections with tor.accept"), nil
			}
			ports = append(ports, n)
		default:
			return Filtered(fmt.Sprintf("ADD_ONION %s is not available to functions", k)), nil
		}
	}
	if len(ports) == 0 {
		return reply(512, "Syntax error: ADD_ONION needs a Port=VIRTPORT"), nil
	}
	if s.fw.Listen == nil {
		return Filtered("this node does not let functions accept connections"), nil
	}
	s.mu.Lock()
	n := len(s.onions)
	s.mu.Unlock()
	if n >= s.fw.limits.Onions {
		return Filtered(fmt.Sprintf("a function may publish at most %d onion services", s.fw.limits.Onions)), nil
	}
	out = append(out, "Flags=DiscardPK")
	if maxStreams != "" {
		out = append(out, "MaxStreams="+maxStreams)
	}
	for _, p := range ports {
		target, err := s.fw.Listen(s.owner, p)
		if err != nil {
			return Filtered("cannot accept connections: " + err.Error()), nil
		}
		out = append(out, fmt.Sprintf("Port=%d,%s", p, target))
	}
	cmd, err := torctl.NewCommand("ADD_ONION", out...)
	if err != nil {
		return reply(512, err.Error()), nil
	}
	r, err := s.forward(ctx, cmd)
	if err != nil || !r.OK() {
		return r, err
	}
	filtered := &torctl.Reply{Status: r.Status}
	for _, l := range r.Lines {
		if strings.HasPrefix(l.Text, "PrivateKey=") {
			continue // never with DiscardPK; dropped should tor ever send one
		}
		if id, ok := strings.CutPrefix(l.Text, "ServiceID="); ok && validServiceID(id) {
			s.fw.mu.Lock()
			s.fw.onion[id] = s
			s.fw.mu.Unlock()
			s.mu.Lock()
			s.onions[id] = true
			s.mu.Unlock()
		}
		filtered.Lines = append(filtered.Lines, l)
	}
	return filtered, nil
}

func circuitsOf(s *Session) map[string]bool { return s.circuits }
func streamsOf(s *Session) map[string]bool  { return s.streams }

func ended(status string) bool { return status == "CLOSED" || status == "FAILED" }

// adopt returns the session owning id in table. An ID nobody owns yet is
// adopted by the session whose SOCKS username tor reported (user), if any.
// fw.mu is held.
func (fw *Firewall) adopt(table map[string]*Session, owned func(*Session) map[string]bool, id, user string) *Session {
	if s := table[id]; s != nil || user == "" {
		return s
	}
	s := fw.sessions[user]
	if s != nil {
		table[id] = s
		s.mu.Lock()
		owned(s)[id] = true
		s.mu.Unlock()
	}
	return s
}

// forget returns a function that drops id from table and from its owner,
// to run once the event has been delivered.
func (fw *Firewall) forget(table map[string]*Session, owned func(*Session) map[string]bool, id string, owner *Session) func() {
	return func() {
		fw.mu.Lock()
		delete(table, id)
		fw.mu.Unlock()
		owner.mu.Lock()
		delete(owned(owner), id)
		owner.mu.Unlock()
	}
}

// HandleEvent takes an event from bentod's own connection, updates
// ownership and passes it to the owning function if it subscribed.
func (fw *Firewall) HandleEvent(r *torctl.Reply) {
	if len(r.Lines) == 0 {
		return
	}
	words, kv, err := torctl.ParseLine(r.Lines[0].Text)
	if err != nil || len(words) == 0 {
		return
	}
	ev := words[0]
	var owner *Session
	var closed func()
	fw.mu.Lock()
	switch ev {
	case "CIRC", "CIRC_MINOR":
		if len(words) < 3 {
			break
		}
		id, user := words[1], ""
		if ev == "CIRC" {
			user = kv["SOCKS_USERNAME"] // CIRC_MINOR never adopts
		}
		owner = fw.adopt(fw.circ, circuitsOf, id, user)
		if ev == "CIRC" && ended(words[2]) && owner != nil {
			closed = fw.forget(fw.circ, circuitsOf, id, owner)
		}
	case "STREAM":
		if len(words) < 3 {
			break
		}
		id := words[1]
		owner = fw.adopt(fw.strm, streamsOf, id, kv["SOCKS_USERNAME"])
		if owner != nil && words[2] == "SENTCONNECT" {
			owner.mu.Lock()
			if ch, ok := owner.expect[kv["SOCKS_PASSWORD"]]; ok && kv["SOCKS_USERNAME"] == owner.owner {
				ch <- id
				delete(owner.expect, kv["SOCKS_PASSWORD"])
			}
			owner.mu.Unlock()
		}
		if ended(words[2]) && owner != nil {
			closed = fw.forget(fw.strm, streamsOf, id, owner)
		}
	case "HS_DESC":
		if len(words) >= 3 {
			owner = fw.onion[strings.TrimSuffix(words[2], ".onion")]
		}
	case "STATUS_CLIENT":
		for _, s := range fw.sessions {
			s.deliver(ev, r)
		}
	}
	fw.mu.Unlock()
	if owner != nil {
		owner.deliver(ev, r)
	}
	if closed != nil {
		closed()
	}
}

func (s *Session) deliver(ev string, r *torctl.Reply) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.subs[ev] || s.closed {
		return
	}
	if len(s.queue) >= s.fw.limits.Events {
		s.queue = s.queue[1:]
		s.dropped++
	}
	s.queue = append(s.queue, r)
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// NextEvent returns the next event for the function, or nil when ctx ends
// first.
func (s *Session) NextEvent(ctx context.Context) *torctl.Reply {
	for {
		s.mu.Lock()
		if len(s.queue) > 0 {
			r := s.queue[0]
			s.queue = s.queue[1:]
			s.mu.Unlock()
			return r
		}
		s.mu.Unlock()
		select {
		case <-s.notify:
		case <-ctx.Done():
			return nil
		}
	}
}

// Close removes everything the function created: its onion services, its
// circuits (and with them its streams), then forgets it.
func (s *Session) Close(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	circuits, streams, onions := s.Owned()
	fw := s.fw
	fw.mu.Lock()
	delete(fw.sessions, s.owner)
	fw.mu.Unlock()
	var errs []string
	if len(circuits)+len(streams)+len(onions) > 0 {
		c, err := fw.up.Conn(ctx)
		if err != nil {
			return fmt.Errorf("cleaning up after %s: %w", s.owner, err)
		}
		for _, id := range onions {
			if _, err := c.Do(ctx, torctl.MustCommand("DEL_ONION", id)); err != nil {
				errs = append(errs, err.Error())
			}
		}
		for _, id := range streams {
			// 6 = DONE; an already closed stream answers 552, which is fine.
			_, _ = c.Send(ctx, torctl.MustCommand("CLOSESTREAM", id, "6"))
		}
		for _, id := range circuits {
			_, _ = c.Send(ctx, torctl.MustCommand("CLOSECIRCUIT", id))
		}
	}
	fw.mu.Lock()
	for _, id := range circuits {
		if fw.circ[id] == s {
			delete(fw.circ, id)
		}
	}
	for _, id := range streams {
		if fw.strm[id] == s {
			delete(fw.strm, id)
		}
	}
	for _, id := range onions {
		if fw.onion[id] == s {
			delete(fw.onion, id)
		}
	}
	fw.mu.Unlock()
	if len(errs) > 0 {
		return fmt.Errorf("cleaning up after %s: %s", s.owner, strings.Join(errs, "; "))
	}
	return nil
}
