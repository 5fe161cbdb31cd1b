// Command lightbox runs the two ends of a LightBox tunnel.
//
//	lightbox middlebox -listen ADDR -psk FILE [-run forward|monitor|firewall|ids] [-rules FILE] [-model bounce|direct] [-out FILE]
//	lightbox gateway   -connect ADDR -psk FILE (-in CAPTURE [-realtime] | -tun NAME [-packets N]) [-rate N] [-record-size N] [-out FILE] [-tun-out NAME]
//
// The gateway reads a pcap, pcapng or gzip-compressed capture and sends
// its packets through etap; the middlebox receives them, processes them,
// and bounces them back (the gateway writes them to -out) or sends them on
// directly (written to its own -out).
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/gopacket/gopacket/layers"

	"github.com/torbento/bento/internal/lightbox"
	"github.com/torbento/bento/internal/lightbox/capture"
	"github.com/torbento/bento/internal/lightbox/defrag"
	"github.com/torbento/bento/internal/lightbox/etap"
	"github.com/torbento/bento/internal/lightbox/middlebox"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "middlebox":
		err = runMiddlebox(os.Args[2:])
	case "gateway":
		err = runGateway(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "lightbox:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprint(os.Stderr, `usage:
  lightbox middlebox -listen ADDR -psk FILE [-run forward|monitor|firewall|ids] [-rules FILE] [-model bounce|direct] [-out FILE] [-report FILE]
  lightbox gateway   -connect ADDR -psk FILE (-in CAPTURE [-realtime] | -tun NAME [-packets N]) [-rate N] [-record-size N] [-out FILE] [-tun-out NAME]
`)
	os.Exit(2)
}

func runMiddlebox(args []string) error {
	fs := flag.NewFlagSet("middlebox", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:8890", "address to accept the gateway on")
	pskFile := fs.String("psk", "", "pre-shared key file")
	model := fs.String("model", lightbox.Bounce, "bounce (return packets to the gateway) or direct (send them on)")
	out := fs.String("out", "", "direct model: capture file to write processed packets to")
	link := fs.Int("linktype", 0, "link type of the packets (0: the one the gateway tells, Ethernet if it does not): "+middlebox.SupportedLinks)
	run := fs.String("run", "forward", "middlebox to run: forward, monitor, firewall or ids")
	rulesFile := fs.String("rules", "", "ids: Snort-style rules file")
	report := fs.String("report", "", "file for the middlebox's report (default: standard output)")
	inside := fs.String("inside", "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16", "firewall: inside networks")
	allowed := fs.String("allow", "", "firewall: inside services reachable from outside, ADDR:PORT,...")
	cache := fs.Int("cache", 0, "flow states kept in trusted memory (0: as many as fit in -cache-mb)")
	cacheMB := fs.Int("cache-mb", lightbox.DefaultCacheBytes>>20, "MiB of trusted memory for cached flow states, when -cache is 0")
	fragPolicy := fs.String("frag-policy", "linux", "overlapping IPv4 fragments: linux (a duplicate inside bytes held is dropped, any other overlap discards the datagram, as Linux since 4.19), first (the bytes that came first stand) or last (the bytes that came last); IPv6 always takes linux's (RFC 5722, RFC 8200)")
	checksums := fs.String("checksums", "on", "ids: drop packets with wrong IPv4, TCP or UDP checksums as a host does: on, off (a capture taken on a host with checksum offload), or auto (on, unless more than 10% of the first 100 are wrong; an attacker can turn it off with 11 bad packets)")
	idle := fs.Duration("idle", lightbox.DefaultIdleTimeout, "flows idle this long are forgotten (new, closing and closed TCP connections, UDP, other protocols)")
	idleEst := fs.Duration("idle-established", lightbox.DefaultEstablishedTimeout, "established TCP connections idle this long are forgotten (hosts keep them for hours)")
	flowMB := fs.Int("flow-mb", lightbox.DefaultFlowBytes>>20, "MiB for tracked flows (1-1048576); when full, new flows displace flows that are not established connections, else are not tracked")
	reorderMB := fs.Int("reorder-mb", middlebox.DefaultReorderMemCap>>20, "ids: MiB for TCP data held out of order beyond each flow's window (1-65536)")
	fs.Parse(args)
	if *reorderMB < 1 || *reorderMB > 65536 {
		return fmt.Errorf("-reorder-mb %d: want 1 to 65536 MiB", *reorderMB)
	}
	if *flowMB < 1 || *flowMB > 1<<20 {
		return fmt.Errorf("-flow-mb %d: want 1 to 1048576 MiB", *flowMB)
	}
	if *idle < time.Second || *idle > 24*time.Hour {
		return fmt.Errorf("-idle %v: want 1s to 24h", *idle)
	}
	if *idleEst < *idle || *idleEst > 30*24*time.Hour {
		return fmt.Errorf("-idle-established %v: want from -idle (%v) to 720h", *idleEst, *idle)
	}
	psk, err := lightbox.ReadPSK(*pskFile)
	if err != nil {
		return err
	}
	pc := lightbox.ProcessorConfig{Name: *run, LinkType: layers.LinkType(*link), CacheEntries: *cache, CacheBytes: *cacheMB << 20, Report: os.Stdout,
		Reorder: middlebox.ReorderConfig{MemCap: *reorderMB << 20}, IdleTimeout: *idle, EstablishedTimeout: *idleEst, FlowBytes: *flowMB << 20}
	if pc.FragPolicy, err = defrag.ParsePolicy(*fragPolicy); err != nil {
		return fmt.Errorf("-frag-policy: %v", err)
	}
	if pc.Checksums, err = middlebox.ParseChecksumMode(*checksums); err != nil {
		return fmt.Errorf("-checksums: %v", err)
	}
	for _, s := range splitList(*inside) {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return fmt.Errorf("-inside: %v", err)
		}
		pc.Inside = append(pc.Inside, p)
	}
	for _, s := range splitList(*allowed) {
		a, err := netip.ParseAddrPort(s)
		if err != nil {
			return fmt.Errorf("-allow: %v", err)
		}
		pc.Allowed = append(pc.Allowed, a)
	}
	if *report != "" {
		f, err := os.Create(*report)
		if err != nil {
			return err
		}
		defer f.Close()
		pc.Report = f
	}
	if *run == "ids" {
		f, err := os.Open(*rulesFile)
		if err != nil {
			return fmt.Errorf("-rules: %v", err)
		}
		pc.Rules, err = middlebox.ParseRules(f)
		f.Close()
		if err != nil {
			return fmt.Errorf("%s: %v", *rulesFile, err)
		}
	}
	// The processor is made once the gateway has said its link type.
	finish := func() error { return nil }
	setup := func(told layers.LinkType) (lightbox.Processor, error) {
		switch {
		case *link != 0 && told != 0 && layers.LinkType(*link) != told:
			return nil, fmt.Errorf("-linktype %d, but the gateway's packets are link type %d (%s): leave -linktype out to take the gateway's", *link, int(told), told)
		case *link != 0:
			pc.LinkType = layers.LinkType(*link)
		case told != 0:
			pc.LinkType = told
		default:
			pc.LinkType = layers.LinkTypeEthernet
		}
		proc, fin, err := lightbox.NewProcessor(pc)
		if err != nil {
			return nil, err
		}
		finish = fin
		return proc, nil
	}
	if _, err := middlebox.NewDecoder(layers.LinkType(*link)); *link != 0 && err != nil {
		return fmt.Errorf("-linktype: %v", err)
	}
	cfg := lightbox.MiddleboxConfig{Etap: etap.Config{PSK: psk}, Model: *model, LinkType: layers.LinkType(*link), Setup: setup}
	if *model == lightbox.Direct {
		f, err := os.Create(*out)
		if err != nil {
			return err
		}
		defer f.Close()
		cfg.Out = f
	}
	conn, err := lightbox.Listen(*listen)
	if err != nil {
		return err
	}
	cfg.Conn = conn
	st, err := lightbox.RunMiddlebox(cfg)
	fmt.Fprintf(os.Stderr, "middlebox: %d packets, %d records in, %d out, %v\n", st.Packets, st.Records.RecordsIn, st.Records.RecordsOut, st.Elapsed)
	if ferr := finish(); err == nil {
		err = ferr
	}
	return err
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

func runGateway(args []string) error {
	fs := flag.NewFlagSet("gateway", flag.ExitOnError)
	connect := fs.String("connect", "127.0.0.1:8890", "middlebox address")
	pskFile := fs.String("psk", "", "pre-shared key file")
	in := fs.String("in", "", "capture to send (pcap, pcapng, or gzip of either)")
	tunName := fs.String("tun", "", "send live packets from this TUN device instead of a capture")
	maxPkts := fs.Int("packets", 0, "with -tun: stop after this many packets (0: until interrupted)")
	realtime := fs.Bool("realtime", false, "replay at the capture's own timing")
	rate := fs.Float64("rate", 0, "constant rate in records per second (0: as fast as possible)")
	size := fs.Int("record-size", etap.DefaultRecordSize, "record size in bytes")
	out := fs.String("out", "", "bounce model: capture file to write returned packets to")
	tunOut := fs.String("tun-out", "", "bounce model: inject returned packets into this TUN device")
	fs.Parse(args)
	psk, err := lightbox.ReadPSK(*pskFile)
	if err != nil {
		return err
	}
	var c *capture.Capture
	var tun *capture.TUN
	switch {
	case *tunName != "":
		if tun, err = capture.OpenTUN(*tunName); err != nil {
			return err
		}
		defer tun.Close()
	case *in != "":
		if c, err = capture.ReadFile(*in); err != nil {
			return err
		}
		if c.Truncated {
			fmt.Fprintf(os.Stderr, "gateway: %s is cut short in the middle of a packet; sending the %d whole packets\n", *in, len(c.Packets))
		}
	default:
		return fmt.Errorf("give a capture (-in FILE) or a TUN device (-tun NAME)")
	}
	conn, err := net.Dial("tcp", *connect)
	if err != nil {
		return err
	}
	cfg := lightbox.GatewayConfig{Conn: conn, Etap: etap.Config{PSK: psk, RecordSize: *size}, Options: etap.Options{Rate: *rate},
		Capture: c, TUN: tun, Packets: *maxPkts, Realtime: *realtime}
	if *out != "" {
		f, err := os.Create(*out)
		if err != nil {
			return err
		}
		defer f.Close()
		cfg.Returned = f
	}
	if *tunOut != "" {
		if cfg.ReturnTUN, err = capture.OpenTUN(*tunOut); err != nil {
			return err
		}
		defer cfg.ReturnTUN.Close()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if tun != nil {
		fmt.Fprintf(os.Stderr, "gateway: reading packets from %s\n", *tunName)
	}
	sent, back, err := lightbox.RunGateway(ctx, cfg)
	fmt.Fprintf(os.Stderr, "gateway: sent %d packets in %d records (%d padding), got %d back, %v\n",
		sent.Packets, sent.Records.RecordsOut, sent.Records.PaddingOut, back.Packets, back.Elapsed)
	return err
}
