package policy

// API names the host calls a function can make. Each is a yes/no item of the
// middlebox node policy and must be listed in a manifest to be usable.
const (
	APISend       = "send"        // send bytes to the invoking client
	APIRecv       = "recv"        // receive bytes from the invoking client
	APILog        = "log"         // write to the instance's log
	APITime       = "time"        // wall clock
	APISleep      = "sleep"       // sleep
	APIRandom     = "random"      // random bytes
	APIStorage    = "storage"     // the instance's private key/value storage
	APIHTTPFetch  = "http.fetch"  // HTTP(S) fetch, checked against the destination policy
	APIBento      = "bento"       // deploy/invoke/shutdown functions on other Bento servers
	APIExit       = "exit"        // end the instance from inside (e.g. Dropbox after its last get)
	APITorFetch   = "tor.fetch"   // HTTP(S) through Tor circuits, .onion included
	APITorControl = "tor.control" // tor's control port through bentod's firewall: own circuits, streams, onion services
	APITorStream  = "tor.stream"  // TCP streams through Tor, and onion services whose connections the function accepts
	APINet        = "net"         // direct TCP streams to destinations the destination policy accepts
)

// APIs lists every known host call with a one-line description, in the
// order shown to operators.
var APIs = []struct{ Name, Doc string }{
	{APISend, "send output to the invoking client"},
	{APIRecv, "receive input from the invoking client"},
	{APILog, "write to the instance log (kept by bentod, shown to the shutdown-token holder)"},
	{APITime, "read the wall clock"},
	{APISleep, "sleep"},
	{APIRandom, "read random bytes"},
	{APIStorage, "private key/value storage, counted against the storage limit"},
	{APIExit, "end the instance from inside"},
	{APIHTTPFetch, "HTTP(S) requests to destinations the destination policy accepts"},
	{APINet, "direct TCP streams (net.dial, net.read, net.write, net.close) to destinations the destination policy accepts"},
	{APIBento, "deploy, invoke and shut down functions on other Bento servers (composition)"},
	{APITorFetch, "HTTP(S) requests through Tor circuits (.onion included); the exit relay's policy applies, not DestinationPolicy"},
	{APITorStream, "streams through Tor (tor.dial) and onion services of the function's own whose connections it accepts (tor.listen, tor.accept)"},
	{APITorControl, "tor's control port through bentod's firewall: build and close its own circuits, see only its own circuits and streams, publish onion services"},
}

// KnownAPI reports whether name is a host call.
func KnownAPI(name string) bool {
	for _, a := range APIs {
		if a.Name == name {
			return true
		}
	}
	return false
}

// DefaultAPIs are allowed when bentorc has no AllowAPI line: everything
// that cannot reach the network.
var DefaultAPIs = []string{APISend, APIRecv, APILog, APITime, APISleep, APIRandom, APIStorage, APIExit}
