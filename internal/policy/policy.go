// Package policy holds the operator's configuration of bentod: the
// middlebox node policy (which host calls, images, resources and
// destinations functions may use, per function and over all of them) and
// the daemon settings around it. It is read from a torrc-style file
// (bentorc) and served to clients as JSON.
package policy

import (
	"math"
	"runtime"
	"slices"
	"sort"
	"time"

	"github.com/torbento/bento/internal/exitpolicy"
	"github.com/torbento/bento/internal/safelog"
)

// Limits are resource amounts: per-function ceilings in a policy, or what a
// manifest asks for.
type Limits struct {
	Memory    int64         `json:"memory_bytes"`   // cgroup memory limit (no swap)
	CPU       float64       `json:"cpu_cores"`      // CPU bandwidth, in cores
	CPUTime   time.Duration `json:"cpu_time_ns"`    // total CPU time before the instance is stopped
	Processes int           `json:"processes"`      // pids limit (threads count)
	Storage   int64         `json:"storage_bytes"`  // storage API bytes, and the size of the scratch tmpfs
	Output    int64         `json:"output_bytes"`   // bytes sent to clients over the instance's life
	Lifetime  time.Duration `json:"lifetime_ns"`    // wall-clock life of the instance
	Steps     uint64        `json:"starlark_steps"` // Starlark execution steps per invocation
	Upload    int64         `json:"upload_bytes"`   // size of the uploaded function bundle
	Fetch     int64         `json:"fetch_bytes"`    // largest HTTP response body one fetch may return
}

// Policy is the middlebox node policy plus daemon settings.
type Policy struct {
	// Daemon settings (not part of the public policy).
	ListenAddress string // where clients connect; default 127.0.0.1:8888
	PolicyAddress string // HTTP address serving the policy JSON; "" disables
	DataDirectory string
	Runtime       string         // OCI runtime name: runc, crun or runsc
	RuntimePath   string         // path of the runtime binary; "" = search PATH
	RunnerPath    string         // path of bento-runner; "" = beside bentod
	LogLevel      string         // the lowest severity any Log line takes: err, warn, notice, info, debug
	Logs          []safelog.Sink // Log lines: where messages go (default: notice and above to stderr)
	SafeLogging   bool           // scrub addresses from logs (default on)
	// HeartbeatPeriod: a heartbeat line is logged this often (0: never).
	HeartbeatPeriod time.Duration

	// User is the user bentod switches to once it holds what needs root
	// ("" for none), where containers can run without root.
	User string

	// ControlSocket is the operator's control socket (bentoctl); ""
	// disables it. ControlSocketGroup may use it besides root.
	ControlSocket      string
	ControlSocketGroup string
	// MetricsPort serves Prometheus metrics over HTTP ("" disables it),
	// to the addresses MetricsPolicy accepts (tor's MetricsPortPolicy).
	MetricsPort   string
	MetricsPolicy []string
	// CompatListenAddress serves the original Bento's client protocol
	// (internal/compat; "" disables it, the default); what its clients
	// store runs under the manifest in CompatManifest.
	CompatListenAddress string
	CompatManifest      string
	Nickname            string // shown to clients

	// The co-resident tor (none when TorControlPort is empty).
	TorControlPort     string // "unix:/run/tor/control" or "127.0.0.1:9051"
	TorControlPassword string // HASHEDPASSWORD; else the cookie is used
	TorCookieFile      string // overrides the cookie path tor announces
	TorSocksPort       string // SocksPort for functions' Tor traffic and composition over .onion
	OnionService       bool   // publish bentod as an onion service
	OnionServicePort   int    // its virtual port (default: ListenAddress's port)

	// RestoreInstances: instances (tokens, code, stored data) survive a
	// restart of bentod, a crash included. Default on: a user's stored
	// data is lost to a restart only when the operator chose that.
	RestoreInstances bool

	// Daemon bounds bentod's own resources against hostile clients.
	Daemon Daemon

	// Composition bounds the instances and calls functions start.
	Composition Composition

	// FlashFlow is the relay's side of FlashFlow capacity measurement.
	FlashFlow FlashFlow

	// Box is the box's own life: a box (a dust mote, say) may announce
	// when it ends.
	Box Box

	// Middlebox node policy.
	APIs   map[string]bool
	Images []string
	// FSProtect (AllowFSProtect): a function may ask for FS Protect, its
	// stored data and output sealed with a key held only in memory.
	FSProtect    bool
	Max          Limits // per-function ceilings
	Aggregate    Aggregate
	Destinations *exitpolicy.Policy

	// Warnings found while parsing (ignored policy items and the like).
	Warnings []string
}

// Daemon bounds what clients can make bentod itself hold: connections,
// time, and memory in flight. See docs/SECURITY.md.
type Daemon struct {
	MaxConnections        int           // client connections served at once on ListenAddress
	MaxConnectionsPerAddr int           // ... from one address (IPv4 address, IPv6 /56)
	ConnectRate           float64       // new connections per second from one address (tor's DoSConnectionConnectRate)
	ConnectBurst          int           // ... and how many at once beyond the rate
	MaxOnionConnections   int           // connections arriving through bentod's onion service at once
	OnionMaxStreams       int           // streams one rendezvous circuit may open (tor's MaxStreams, closing the circuit beyond)
	HandshakeTimeout      time.Duration // a connection's hello must arrive within this
	IdleTimeout           time.Duration // an idle connection between requests is closed after this
	ConnectionLifetime    time.Duration // requests on one connection stop being served after this (sessions excepted)
	WriteTimeout          time.Duration // a client that reads nothing for this long is dropped (its output waits)
	MaxInFlight           int64         // bytes of uploads, host-call results and relayed output held at once
	MaxMemory             int64         // bentod's own memory ceiling (Go's soft limit; the unit's MemoryMax is the hard one)
	Nice                  int           // bentod's scheduling priority: above 0 yields the CPU to tor
}

// FlashFlow configures measurement mode: bentod as the target side of
// FlashFlow (docs/flashflow.md). Its listeners run when Listen is set;
// measurements are accepted only when Allowed is also set.
type FlashFlow struct {
	Allowed      bool          // FFMeasurementsAllowed: measurements on
	Listen       string        // FFListenAddress: where coordinators connect (TLS)
	Echo         string        // FFEchoAddress: the echo endpoint on the relay's loopback
	Coordinators []string      // FFAllowedCoordinators: pinned certificate fingerprints
	Period       time.Duration // FFMeasurementPeriod: at most two measurements per coordinator in this window
	MaxDuration  time.Duration // FFMaxMeasurementDuration: PARAMS to end, handshake included
}

// Box is when the box ends. Clients see it in the public policy and stop
// choosing the box in its drain period; deploys that would outlast it are
// refused (or shortened, when the manifest gives a min_lifetime); at the
// end every instance is shut down and its stored data wiped.
type Box struct {
	EndsAt   time.Time     // BoxEndsAt: the end, absolute (zero: none)
	Lifetime time.Duration // BoxLifetime: the end, counted from bentod's first start (kept in DataDirectory)
	Drain    time.Duration // BoxDrainPeriod: no new deploys this long before the end
	// Announce (BoxAnnounce): list the box in the directory, through the
	// relay's ContactInfo and a statement signed with the onion key.
	Announce bool
}

// KeyHolderMemory is the public policy's fs_protect when FS Protect's
// keys are held in bentod's memory, with no TEE and nothing attested.
const KeyHolderMemory = "bentod-memory"

// DefaultDrain is the drain period when bentorc gives none.
const DefaultDrain = 10 * time.Minute

// Composition bounds what functions start on Bento servers (remote.*),
// counted per root: the instance a client deployed and everything its
// functions started, on this server.
type Composition struct {
	MaxDepth     int // functions deploying functions deploying ...: at most this deep
	MaxInstances int // instances one root's functions may hold here at once
	MaxCalls     int // remote.* calls one root's functions may have in progress at once
}

// Aggregate bounds all instances together and keeps a reserve for the relay.
type Aggregate struct {
	Memory        int64   // memory all instances may use together
	CPU           float64 // cores all instances may use together
	ReserveMemory int64   // memory kept for tor and the system
	ReserveCPU    float64 // cores kept for tor and the system
	Instances     int     // instances at once
	// PerClient bounds the instances one client address may hold at once
	// (0: a quarter of Instances, at least 1). Clients reaching bentod
	// through Tor all come from the relay's loopback address and are not
	// told apart: only the other ceilings bound them.
	PerClient int
}

// Default returns the safe default policy: no network, small quotas.
func Default() *Policy {
	p := &Policy{
		ListenAddress:   "127.0.0.1:8888",
		PolicyAddress:   "127.0.0.1:8889",
		DataDirectory:   "/var/lib/bento",
		Runtime:         "runc",
		LogLevel:        "notice",
		Logs:            []safelog.Sink{{Min: "notice", Max: "err", Dest: "stderr"}},
		SafeLogging:     true,
		HeartbeatPeriod: 6 * time.Hour,
		APIs:            map[string]bool{},
		Images:          []string{"starlark"},
		Max: Limits{
			Memory:    64 << 20,
			CPU:       0.5,
			CPUTime:   60 * time.Second,
			Processes: 32,
			Storage:   16 << 20,
			Output:    16 << 20,
			Lifetime:  10 * time.Minute,
			Steps:     1e9,
			Upload:    1 << 20,
			Fetch:     16 << 20,
		},
		Aggregate: Aggregate{
			ReserveMemory: 512 << 20,
			ReserveCPU:    0.5,
			Instances:     128,
		},
		Destinations:     &exitpolicy.Policy{},
		RestoreInstances: true,
		Daemon: Daemon{
			MaxConnections:        512,
			MaxConnectionsPerAddr: 16,
			ConnectRate:           50,
			ConnectBurst:          100,
			MaxOnionConnections:   256,
			OnionMaxStreams:       16,
			HandshakeTimeout:      10 * time.Second,
			IdleTimeout:           60 * time.Second,
			ConnectionLifetime:    5 * time.Minute,
			WriteTimeout:          30 * time.Second,
			MaxInFlight:           128 << 20,
			MaxMemory:             512 << 20,
			Nice:                  5,
		},
		Composition: Composition{MaxDepth: 3, MaxInstances: 8, MaxCalls: 16},
		FlashFlow:   FlashFlow{Echo: "127.0.0.1:9252", Period: 24 * time.Hour, MaxDuration: 45 * time.Second},
		Box:         Box{Drain: DefaultDrain},
	}
	for _, a := range DefaultAPIs {
		p.APIs[a] = true
	}
	return p
}

// finish fills in aggregate ceilings that depend on the machine.
func (p *Policy) finish(memTotal int64) {
	if p.Aggregate.Memory == 0 {
		p.Aggregate.Memory = max(memTotal-p.Aggregate.ReserveMemory, 0)
	}
	if p.Aggregate.CPU == 0 {
		p.Aggregate.CPU = math.Max(float64(runtime.NumCPU())-p.Aggregate.ReserveCPU, 0)
	}
}

// AllowedAPIs returns the allowed host calls, sorted.
func (p *Policy) AllowedAPIs() []string {
	var out []string
	for a, ok := range p.APIs {
		if ok {
			out = append(out, a)
		}
	}
	sort.Strings(out)
	return out
}

// BuiltinImages are the images bentod can run: Starlark, and WebAssembly
// modules (WASI preview 1) run by wazero inside the same sandbox, and
// Python run by Debian's CPython (docs/python.md).
var BuiltinImages = []string{"starlark", "wasm", "python"}

// BuiltinImage reports whether name is one of BuiltinImages.
func BuiltinImage(name string) bool { return slices.Contains(BuiltinImages, name) }

// HasImage reports whether the policy offers the image.
func (p *Policy) HasImage(name string) bool {
	for _, i := range p.Images {
		if i == name {
			return true
		}
	}
	return false
}

// Public is the policy as served to clients: what a function may ask for.
// It holds no paths, addresses or other daemon settings.
type Public struct {
	Version  int      `json:"version"`
	Nickname string   `json:"nickname,omitempty"`
	APIs     []string `json:"apis"`
	Images   []string `json:"images"`
	// FSProtect is set when functions may ask for FS Protect: it names
	// where the key is held (KeyHolderMemory, nothing attested). A TEE would name itself here and give its attestation.
	FSProtect    string   `json:"fs_protect,omitempty"`
	Max          Limits   `json:"max"`
	Destinations []string `json:"destinations"` // tor exit-policy items; deny when none match
	Free         struct {
		Memory    int64   `json:"memory_bytes"`
		CPU       float64 `json:"cpu_cores"`
		Instances int     `json:"instances"`
	} `json:"free"`
	// Box is set when the box has an end, or stands beside a relay.
	Box *PublicBox `json:"box,omitempty"`
}

// PublicBox is what clients learn of the box itself: when it ends, and
// the signed statement binding its onion address to its relay (package
// boxdir).
type PublicBox struct {
	EndsAt    *time.Time `json:"ends_at,omitempty"`  // no new deploys from DrainAt; everything ends here
	DrainAt   *time.Time `json:"drain_at,omitempty"` // deploys are refused from here on
	Statement string     `json:"statement,omitempty"`
}

// PublicView returns the public form of the policy.
func (p *Policy) PublicView() *Public {
	pub := &Public{
		Version:      1,
		Nickname:     p.Nickname,
		APIs:         p.AllowedAPIs(),
		Images:       append([]string(nil), p.Images...),
		Max:          p.Max,
		Destinations: append([]string{}, p.Destinations.Items...),
	}
	if p.FSProtect {
		pub.FSProtect = KeyHolderMemory
	}
	if pub.APIs == nil {
		pub.APIs = []string{}
	}
	return pub
}

// FromPublic rebuilds the checkable part of a policy from its public form,
// so a client can check a manifest before uploading it.
func FromPublic(pub *Public) (*Policy, error) {
	p := &Policy{APIs: map[string]bool{}, Images: pub.Images, Max: pub.Max, Nickname: pub.Nickname, FSProtect: pub.FSProtect != ""}
	for _, a := range pub.APIs {
		p.APIs[a] = true
	}
	dest := &exitpolicy.Policy{}
	for _, item := range pub.Destinations {
		q, _, err := exitpolicy.Parse(item)
		if err != nil {
			return nil, err
		}
		dest.Append(q)
	}
	p.Destinations = dest
	return p, nil
}
