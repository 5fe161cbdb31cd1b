package main

import (
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/torbento/bento/client"
	"github.com/torbento/bento/internal/boxdir"
	"github.com/torbento/bento/internal/socks"
	"github.com/torbento/bento/internal/torctl"
)

// torControlFlags name the client's tor control port, for the directory.
type torControlFlags struct{ control, cookie *string }

func addTorControlFlags(fs *flag.FlagSet) torControlFlags {
	def := os.Getenv("BENTO_TOR_CONTROL")
	if def == "" {
		def = "127.0.0.1:9051"
	}
	return torControlFlags{
		control: fs.String("tor-control", def, "control port of the tor given with --tor-socks (HOST:PORT or unix:PATH)"),
		cookie:  fs.String("tor-cookie", "", "its cookie file (default: as tor announces)"),
	}
}

// directory connects to the client's tor for the directory of boxes; done
// closes the control connection.
func (c *cli) directory(f torControlFlags) (*client.Directory, func(), int) {
	if c.torSocks == "" {
		fmt.Fprintf(c.stderr, "bento: finding boxes needs Tor: give --tor-socks ADDR before the command (and --tor-control for the same tor)\n")
		return nil, nil, exitUsage
	}
	tc, err := torctl.DialAuth(c.ctx, *f.control, torctl.Auth{CookieFile: *f.cookie})
	if err != nil {
		fmt.Fprintf(c.stderr, "bento: %v\n", err)
		return nil, nil, exitConnect
	}
	d := &client.Directory{Tor: tc, Dialer: &socks.Dialer{Proxy: c.torSocks, Username: "bento-boxes-" + strconv.Itoa(os.Getpid()), Password: "bento"}}
	return d, func() { tc.Close() }, exitOK
}

func (c *cli) boxes(args []string) int {
	fs := flag.NewFlagSet("boxes", flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	check := fs.String("check", "", "function directory: say which boxes could take it now")
	asJSON := fs.Bool("json", false, "print JSON")
	tf := addTorControlFlags(fs)
	if err := c.parseAnywhere(fs, args); err != nil {
		return parseCode(err)
	}
	if fs.NArg() > 0 {
		return c.usageErr("boxes takes no arguments, only flags")
	}
	var fn *client.Function
	if *check != "" {
		var code int
		if fn, code = c.loadFunction(*check, nil); fn == nil {
			return code
		}
	}
	dir, done, code := c.directory(tf)
	if dir == nil {
		return code
	}
	defer done()
	boxes, rejected, err := dir.Boxes(c.ctx)
	if err != nil {
		fmt.Fprintf(c.stderr, "bento: %v\n", err)
		return exitConnect
	}
	now := time.Now()
	if *asJSON {
		type jbox struct {
			Relay        string    `json:"relay"`
			Fingerprint  string    `json:"fingerprint"`
			Addr         string    `json:"addr"`
			Images       []string  `json:"images"`
			EndsAt       time.Time `json:"ends_at,omitzero"`
			DrainAt      time.Time `json:"drain_at,omitzero"`
			Capacity     uint64    `json:"capacity_bytes_per_s"`
			Unmeasured   bool      `json:"unmeasured,omitempty"`
			PolicyDigest string    `json:"policy_sha256"`
			Fits         *bool     `json:"fits,omitempty"`
			Why          string    `json:"why,omitempty"`
		}
		type jrej struct {
			Relay       string `json:"relay"`
			Fingerprint string `json:"fingerprint"`
			Addr        string `json:"addr,omitempty"`
			Reason      string `json:"reason"`
		}
		out := struct {
			Boxes    []jbox `json:"boxes"`
			Rejected []jrej `json:"rejected"`
		}{Boxes: []jbox{}, Rejected: []jrej{}}
		for _, b := range boxes {
			j := jbox{Relay: b.Relay.Nickname, Fingerprint: b.Relay.Fingerprint, Addr: b.Addr(), Images: b.Policy.Images,
				EndsAt: b.Statement.EndsAt, DrainAt: b.Statement.DrainAt, Capacity: boxdir.Capacity(b), Unmeasured: b.Relay.Unmeasured,
				PolicyDigest: hex.EncodeToString(b.Statement.PolicyDigest[:])}
			if fn != nil {
				ok, why, _ := client.Fits(b, fn, now)
				j.Fits, j.Why = &ok, why
			}
			out.Boxes = append(out.Boxes, j)
		}
		for _, r := range rejected {
			out.Rejected = append(out.Rejected, jrej{r.Relay.Nickname, r.Relay.Fingerprint, r.Addr, r.Reason})
		}
		b, _ := json.MarshalIndent(out, "", "  ")
		fmt.Fprintln(c.stdout, string(b))
		return exitOK
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	head := "RELAY\tFINGERPRINT\tBOX\tIMAGES\tENDS\tCAPACITY\tPOLICY"
	if fn != nil {
		head += "\tFITS"
	}
	fmt.Fprintln(tw, head)
	for _, b := range boxes {
		ends := "never"
		if st := b.Statement; !st.EndsAt.IsZero() {
			ends = st.EndsAt.Format(time.RFC3339)
			if !now.Before(st.DrainAt) {
				ends += " (draining)"
			}
		}
		capacity := size(int64(boxdir.Capacity(b))) + "/s"
		if b.Relay.Unmeasured {
			capacity += " (unmeasured)"
		}
		line := fmt.Sprintf("%s\t%s\t%s\t%s\t%s\t%s\tsha256:%s", clean(b.Relay.Nickname), b.Relay.Fingerprint[:8], b.Addr(),
			clean(strings.Join(b.Policy.Images, ",")), ends, capacity, hex.EncodeToString(b.Statement.PolicyDigest[:4]))
		if fn != nil {
			if ok, why, _ := client.Fits(b, fn, now); ok {
				line += "\tyes"
			} else {
				line += "\tno: " + clean(why)
			}
		}
		fmt.Fprintln(tw, line)
	}
	tw.Flush()
	fmt.Fprintf(c.stdout, "%d boxes\n", len(boxes))
	for _, r := range rejected {
		fmt.Fprintf(c.stdout, "rejected: %s (%s) %s: %s\n", clean(r.Relay.Nickname), r.Relay.Fingerprint, r.Addr, clean(r.Reason))
	}
	return exitOK
}
