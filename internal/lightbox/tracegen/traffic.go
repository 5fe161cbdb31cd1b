package tracegen

import (
	"bytes"
	"fmt"
	"strings"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

const (
	us = time.Microsecond
	ms = time.Millisecond
)

// Flows of LAN.
const (
	lanTCP4 = 2976 // TCP over IPv4
	lanTCP6 = 24   // TCP over IPv6
	lanDNS4 = 88   // DNS over IPv4 (UDP)
	lanDNS6 = 8    // DNS over IPv6 (UDP)
	lanARP  = 24   // ARP requests, each answered
)

// lan is LAN: connections start every 10 ms for 30 s and last 20 to 50 s
// (keep-alive, interactive sessions, polling), so most are open at once.
func lan() *gen {
	g := newGen(layers.LinkTypeEthernet, 1)
	dns4, dns6 := g.local("10.0.0.53", 64), g.local("fd00::53", 64)
	// Workstations (Windows and Linux), printers and controllers (network
	// devices) on 10.0.2.0/23; a few reach the capture point through a
	// router, one hop down.
	var clients []*host
	for i := range 320 {
		ttl := []uint8{128, 128, 128, 128, 128, 128, 64, 64, 64, 255}[i%10]
		if i%7 == 0 {
			ttl--
		}
		clients = append(clients, g.local(fmt.Sprintf("10.0.%d.%d", 2+i/250, 1+i%250), ttl))
	}
	hosts := func(addrs ...string) []*host {
		var hs []*host
		for _, a := range addrs {
			switch {
			case strings.HasPrefix(a, "10."):
				hs = append(hs, g.local(a, 64))
			case strings.HasPrefix(a, "198."):
				hs = append(hs, g.remote(a, 51))
			default:
				hs = append(hs, g.remote(a, 116))
			}
		}
		return hs
	}
	win := func(hs []*host) []*host {
		for _, h := range hs {
			h.ttl = 128
		}
		return hs
	}
	services := []struct {
		port   uint16
		kind   string
		weight int
		hosts  []*host
	}{
		{80, "http", 18, hosts("10.0.1.10", "10.0.1.11", "198.51.100.20", "203.0.113.80")},
		{8080, "http", 4, hosts("10.0.1.12")},
		{443, "tls", 26, hosts("10.0.1.10", "203.0.113.10", "203.0.113.11", "198.51.100.30")},
		{22, "ssh", 10, hosts("10.0.1.20", "10.0.1.21")},
		{25, "smtp", 4, hosts("10.0.1.25")},
		{21, "ftp", 3, hosts("10.0.1.26")},
		{445, "smb", 12, win(hosts("10.0.1.30", "10.0.1.31"))},
		{3389, "rdp", 5, win(hosts("10.0.1.40", "10.0.1.41"))},
		{44818, "enip", 18, hosts("10.0.4.10", "10.0.4.11", "10.0.4.12")},
	}
	total := 0
	for _, s := range services {
		total += s.weight
	}
	for i := range lanTCP4 {
		start := epoch.Add(time.Duration(i)*10*ms + g.between(0, 10*ms))
		w := g.rng.IntN(total)
		si := 0
		for w >= services[si].weight {
			w -= services[si].weight
			si++
		}
		s := services[si]
		g.lanConn(start, clients[g.rng.IntN(len(clients))], uint16(20000+i), s.hosts[g.rng.IntN(len(s.hosts))], s.port, s.kind)
	}
	// IPv6: web and SSH inside fd00::/64.
	var clients6 []*host
	for i := range 12 {
		clients6 = append(clients6, g.local(fmt.Sprintf("fd00::2:%x", i+1), []uint8{64, 128}[i%2]))
	}
	web6, ssh6 := g.local("fd00::1:80", 64), g.local("fd00::1:22", 64)
	for i := range lanTCP6 {
		start := epoch.Add(time.Duration(i)*1250*ms + g.between(0, ms))
		if i%3 == 0 {
			g.lanConn(start, clients6[i%len(clients6)], uint16(40000+i), ssh6, 22, "ssh")
		} else {
			g.lanConn(start, clients6[i%len(clients6)], uint16(40000+i), web6, 80, "http")
		}
	}
	// DNS: some clients ask for the IPv6 address too, from the same port.
	for i := range lanDNS4 {
		t := epoch.Add(time.Duration(i)*340*ms + g.between(0, 300*ms))
		c, port := clients[g.rng.IntN(len(clients))], uint16(50000+i)
		name := fmt.Sprintf("srv-%02d.corp.example", g.rng.IntN(40))
		t = g.lookup(t, c, port, dns4, name, services[0].hosts[0].ip, g.between(200*us, 900*us))
		if i%4 == 0 {
			g.lookup(t.Add(30*us), c, port, dns4, name, web6.ip, g.between(200*us, 900*us))
		}
	}
	for i := range lanDNS6 {
		t := epoch.Add(time.Duration(i)*3700*ms + g.between(0, 300*ms))
		g.lookup(t, clients6[i], uint16(50200+i), dns6, "www.corp.example", web6.ip, g.between(200*us, 900*us))
	}
	for i := range lanARP {
		t := epoch.Add(time.Duration(i)*1300*ms + g.between(0, ms))
		g.arp(t, clients[g.rng.IntN(len(clients))], services[3+i%3].hosts[0])
	}
	return g
}

// lanConn is one LAN connection: a handshake, the service's talk, then
// idle until it ends with a FIN from each side (without the ACK of the
// second FIN: the monitor would count that lone ACK as one more flow), a
// reset, or not at all.
func (g *gen) lanConn(start time.Time, c *host, cport uint16, s *host, sport uint16, kind string) {
	rtt := 2 * g.between(60*us, 400*us)
	if bytes.Equal(s.mac, router) {
		rtt = 2 * g.between(8*ms, 40*ms)
	}
	k := g.dial(start, c, cport, s, sport, rtt, 1460)
	end := start.Add(g.between(20*time.Second, 50*time.Second))
	k.handshake()
	idle := func() { k.wait(g.between(500*ms, 6*time.Second)) }
	switch kind {
	case "http":
		for n := 0; ; n++ {
			g.get(k, "intranet.corp.example", fmt.Sprintf("/%s/%d", g.pick("app", "static", "api", "wiki"), g.rng.IntN(1000)),
				"200 OK", "text/html", g.text(g.intn(200, 2400)))
			if n == 1 || g.rng.IntN(10) >= 2 {
				break
			}
			idle()
		}
	case "tls":
		k.say(cli, tlsRecord(0x16, 0x0301, g.random(512)))
		k.say(srv, tlsRecord(0x16, 0x0303, g.random(g.intn(1500, 2800))))
		k.say(cli, append(tlsRecord(0x14, 0x0303, []byte{1}), tlsRecord(0x17, 0x0303, g.random(g.intn(100, 400)))...))
		idle()
		k.say(srv, tlsRecord(0x17, 0x0303, g.random(g.intn(100, 2800))))
	case "ssh":
		k.say(srv, []byte(g.pick("SSH-2.0-OpenSSH_9.6\r\n", "SSH-2.0-OpenSSH_8.9p1\r\n", "SSH-2.0-dropbear_2022.83\r\n")))
		k.say(cli, []byte(g.pick("SSH-2.0-OpenSSH_9.8\r\n", "SSH-2.0-PuTTY_Release_0.81\r\n")))
		k.say(cli, g.random(g.intn(1300, 1500)))
		k.say(srv, g.random(g.intn(1000, 1100)))
		for range g.intn(1, 3) {
			idle()
			k.say(cli, g.random(36))
			k.say(srv, g.random(g.intn(36, 300)))
		}
	case "smtp":
		for _, line := range []struct {
			from int
			text string
		}{
			{srv, "220 mx1.corp.example ESMTP ready\r\n"}, {cli, "EHLO ws.corp.example\r\n"},
			{srv, "250-mx1.corp.example\r\n250-SIZE 52428800\r\n250 8BITMIME\r\n"},
			{cli, "MAIL FROM:<report@corp.example>\r\n"}, {srv, "250 2.1.0 Ok\r\n"},
			{cli, "RCPT TO:<ops@corp.example>\r\n"}, {srv, "250 2.1.5 Ok\r\n"},
			{cli, "DATA\r\n"}, {srv, "354 End data with <CR><LF>.<CR><LF>\r\n"},
			{cli, "Subject: nightly report\r\n\r\n" + string(g.text(g.intn(300, 3000))) + "\r\n.\r\n"},
			{srv, "250 2.0.0 Ok: queued\r\n"}, {cli, "QUIT\r\n"}, {srv, "221 2.0.0 Bye\r\n"},
		} {
			k.say(line.from, []byte(line.text))
		}
	case "ftp":
		for _, line := range []struct {
			from int
			text string
		}{
			{srv, "220 corp.example FTP server ready\r\n"}, {cli, "USER anonymous\r\n"},
			{srv, "331 Please specify the password.\r\n"}, {cli, "PASS guest@\r\n"},
			{srv, "230 Login successful.\r\n"}, {cli, "PWD\r\n"}, {srv, "257 \"/\" is the current directory\r\n"},
			{cli, "QUIT\r\n"}, {srv, "221 Goodbye.\r\n"},
		} {
			k.say(line.from, []byte(line.text))
		}
	case "smb":
		smb := func(n int) []byte {
			return append([]byte{0, 0, byte(n >> 8), byte(n), 0xfe, 'S', 'M', 'B'}, g.random(n-4)...)
		}
		k.say(cli, smb(g.intn(100, 250)))
		k.say(srv, smb(g.intn(200, 400)))
		idle()
		k.say(cli, smb(g.intn(100, 200)))
		k.say(srv, smb(g.intn(100, 2800)))
	case "rdp":
		tpkt := func(n int) []byte { return append([]byte{3, 0, byte(n >> 8), byte(n)}, g.random(n-4)...) }
		k.say(cli, tpkt(43))
		k.say(srv, tpkt(19))
		for range g.intn(1, 3) {
			k.wait(g.between(30*ms, 2*time.Second))
			k.say(cli, tpkt(g.intn(30, 200)))
			k.say(srv, tpkt(g.intn(100, 1400)))
		}
	case "enip":
		// EtherNet/IP: RegisterSession, then polls of a controller
		// (SendRRData).
		encap := func(cmd byte, n int) []byte {
			return append([]byte{cmd, 0, byte(n), byte(n >> 8)}, g.random(20+n)...)
		}
		k.say(cli, encap(0x65, 4))
		k.say(srv, encap(0x65, 4))
		for range g.intn(1, 4) {
			k.wait(g.between(200*ms, 3*time.Second))
			k.say(cli, encap(0x6f, g.intn(20, 60)))
			k.say(srv, encap(0x6f, g.intn(30, 100)))
		}
	}
	if k.t.Before(end) {
		k.t = end
	}
	switch r := g.rng.IntN(20); {
	case r < 14:
		k.close([]int{cli, cli, srv}[r%3], false)
	case r < 17:
		k.reset([]int{cli, cli, srv}[r%3])
	}
}

// get sends a GET and its response.
func (g *gen) get(k *conn, host, path, status, ctype string, body []byte) {
	k.say(cli, fmt.Appendf(nil, "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: tracegen/1.0\r\nAccept: */*\r\n\r\n", path, host))
	k.wait(g.between(100*us, 3*ms))
	k.say(srv, append(fmt.Appendf(nil, "HTTP/1.1 %s\r\nServer: bento-test\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n",
		status, ctype, len(body)), body...))
}

// tlsRecord returns a TLS record.
func tlsRecord(typ byte, version uint16, body []byte) []byte {
	return append([]byte{typ, byte(version >> 8), byte(version), byte(len(body) >> 8), byte(len(body))}, body...)
}

// office is Office.
func office() *gen {
	g := newGen(layers.LinkTypeEthernet, 2)
	t0 := epoch
	gw := g.local("192.168.1.1", 64)
	pc := g.local("192.168.1.10", 128)
	lx := g.local("192.168.1.11", 64)
	mac := g.local("192.168.1.12", 64)
	web := g.remote("203.0.113.10", 54)
	files := g.remote("198.51.100.20", 51)
	shell := g.remote("203.0.113.22", 57)
	mail := g.remote("203.0.113.30", 113)

	g.arp(t0, pc, gw)

	// HTTPS from the Windows PC.
	t := g.lookup(t0.Add(2*ms), pc, 53211, gw, "www.example.com", web.ip, 3*ms)
	k := g.dial(t.Add(ms), pc, 49710, web, 443, 24*ms, 1460)
	k.handshake()
	k.say(cli, tlsRecord(0x16, 0x0301, g.random(512)))
	k.say(srv, tlsRecord(0x16, 0x0303, g.random(4000)))
	k.say(cli, append(tlsRecord(0x14, 0x0303, []byte{1}), tlsRecord(0x16, 0x0303, g.random(80))...))
	k.say(srv, append(tlsRecord(0x14, 0x0303, []byte{1}), tlsRecord(0x16, 0x0303, g.random(40))...))
	for range 5 {
		k.wait(g.between(20*ms, 80*ms))
		k.say(cli, tlsRecord(0x17, 0x0303, g.random(g.intn(300, 600))))
		k.say(srv, tlsRecord(0x17, 0x0303, g.random(g.intn(1000, 6000))))
	}
	k.close(cli, true)

	// The Mac polls the same site.
	k = g.dial(t0.Add(600*ms), mac, 52200, web, 443, 24*ms, 1460)
	k.handshake()
	k.say(cli, tlsRecord(0x16, 0x0301, g.random(512)))
	k.say(srv, tlsRecord(0x16, 0x0303, g.random(3000)))
	k.say(cli, append(tlsRecord(0x14, 0x0303, []byte{1}), tlsRecord(0x16, 0x0303, g.random(80))...))
	k.say(srv, append(tlsRecord(0x14, 0x0303, []byte{1}), tlsRecord(0x16, 0x0303, g.random(40))...))
	k.say(cli, tlsRecord(0x17, 0x0303, g.random(420)))
	k.say(srv, tlsRecord(0x17, 0x0303, g.random(2200)))
	k.close(srv, true)

	// A download over HTTP; a copy of its last bytes arrives after the
	// connection closed (a retransmission of data sent before the
	// server's FIN: a stateful firewall passes it while the connection
	// lingers, an IDS must not scan it twice).
	t = g.lookup(t0.Add(90*ms), lx, 40511, gw, "files.example.org", files.ip, 4*ms)
	h := g.dial(t.Add(ms), lx, 51514, files, 80, 40*ms, 1460)
	h.handshake()
	body := g.text(20000)
	g.get(h, "files.example.org", "/pub/notes.txt", "200 OK", "text/plain", body)
	h.close(srv, true)
	h.wait(60 * ms)
	h.seg(srv, ack|psh, h.seq[srv]-1-100, h.seq[cli], body[len(body)-100:], nil)

	// SSH with some typing.
	t = g.lookup(t0.Add(140*ms), mac, 5353, gw, "shell.example.net", shell.ip, 3*ms)
	s := g.dial(t.Add(ms), mac, 52100, shell, 22, 30*ms, 1460)
	s.handshake()
	s.say(srv, []byte("SSH-2.0-OpenSSH_9.6\r\n"))
	s.say(cli, []byte("SSH-2.0-OpenSSH_9.8\r\n"))
	s.say(cli, g.random(1400))
	s.say(srv, g.random(1080))
	s.say(cli, g.random(48))
	s.say(srv, g.random(564))
	s.say(cli, g.random(16))
	for range 24 {
		s.wait(g.between(10*ms, 25*ms))
		s.say(cli, g.random(36))
		s.say(srv, g.random(36))
	}
	s.say(srv, g.random(212))
	s.close(cli, true)

	// A port scan from outside: the closed ports answer with a reset.
	scanner := g.remote("198.51.100.66", 241)
	for i, port := range []uint16{22, 23, 445, 3389} {
		p := g.dial(t0.Add(400*ms+time.Duration(i)*3*ms), scanner, 61000, pc, port, 2*ms, 1460)
		p.seg(cli, syn, p.seq[cli], 0, nil, synOptions(1460)[:1])
		if port == 23 || port == 3389 {
			p.turn(srv)
			p.seg(srv, rst|ack, 0, p.seq[cli]+1, nil, nil)
		}
	}

	g.ping(t0.Add(700*ms), lx, g.remote("198.51.100.1", 57), 0x4b1d, 1, 18*ms)

	// Mail submission, reset by the client after QUIT.
	m := g.dial(t0.Add(800*ms), pc, 49720, mail, 587, 28*ms, 1460)
	m.handshake()
	m.say(srv, []byte("220 mail.example.net ESMTP\r\n"))
	m.say(cli, []byte("EHLO pc10\r\n"))
	m.say(srv, []byte("250-mail.example.net\r\n250-STARTTLS\r\n250 AUTH PLAIN\r\n"))
	m.say(cli, []byte("QUIT\r\n"))
	m.say(srv, []byte("221 Bye\r\n"))
	m.reset(cli)

	// Backscatter: a SYN-ACK for a SYN nobody inside sent.
	g.stray = true
	b := g.dial(t0.Add(1050*ms), lx, 40123, g.remote("203.0.113.99", 49), 80, 2*ms, 1460)
	b.seg(srv, syn|ack, b.seq[srv], b.seq[cli]+1, nil, synOptions(1400))
	g.stray = false

	g.lookup(t0.Add(1100*ms), lx, 40512, gw, "time.example.org", files.ip, 3*ms)
	g.arp(t0.Add(1200*ms), gw, mac)
	return g
}

// httpConversations is HTTP (and, cut, Truncated).
func httpConversations() *gen {
	g := newGen(layers.LinkTypeEthernet, 3)
	t0 := epoch
	www, api := g.local("10.0.1.80", 64), g.local("10.0.1.81", 64)
	www6 := g.local("fd00::1:80", 64)
	// Browsers: a page, its stylesheet, script and image, a missing icon,
	// over one kept-alive connection each.
	for i := range 4 {
		c := g.local(fmt.Sprintf("10.0.3.%d", 20+i), []uint8{64, 128}[i%2])
		k := g.dial(t0.Add(time.Duration(i)*70*ms), c, uint16(41000+i), www, 80, 2*g.between(100*us, 300*us), 1460)
		k.handshake()
		g.get(k, "www.corp.example", "/", "200 OK", "text/html", g.text(g.intn(4000, 7000)))
		k.wait(g.between(2*ms, 6*ms))
		g.get(k, "www.corp.example", "/style.css", "200 OK", "text/css", g.text(g.intn(2000, 3200)))
		g.get(k, "www.corp.example", "/app.js", "200 OK", "application/javascript", g.text(g.intn(8000, 12000)))
		g.get(k, "www.corp.example", "/logo.png", "200 OK", "image/png", append([]byte("\x89PNG\r\n\x1a\n"), g.random(g.intn(15000, 22000))...))
		g.get(k, "www.corp.example", "/favicon.ico", "404 Not Found", "text/html", []byte("<h1>Not Found</h1>\n"))
		k.wait(g.between(300*ms, 900*ms))
		k.close(cli, true)
	}

	// An API: a multi-segment POST, a conditional GET.
	c := g.local("10.0.3.30", 64)
	a := g.dial(t0.Add(50*ms), c, 42000, api, 8080, 600*us, 1460)
	a.handshake()
	doc := append([]byte(`{"records":"`), g.text(5200)...)
	doc = append(doc, `"}`...)
	a.say(cli, append(fmt.Appendf(nil, "POST /v1/upload HTTP/1.1\r\nHost: api.corp.example:8080\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", len(doc)), doc...))
	a.say(srv, []byte("HTTP/1.1 201 Created\r\nLocation: /v1/items/7\r\nContent-Length: 0\r\n\r\n"))
	a.say(cli, []byte("GET /v1/items/7 HTTP/1.1\r\nHost: api.corp.example:8080\r\nIf-None-Match: \"7-1\"\r\n\r\n"))
	a.say(srv, []byte("HTTP/1.1 304 Not Modified\r\nETag: \"7-1\"\r\n\r\n"))
	a.close(srv, true)

	// A small MSS: the request line is split inside "HTTP/1.", two
	// segments of the response come out of order, and one comes again.
	c = g.local("10.0.3.31", 128)
	m := g.dial(t0.Add(120*ms), c, 42001, www, 80, 2*ms, 536)
	m.handshake()
	req := []byte("GET /downloads/report.txt HTTP/1.1\r\nHost: www.corp.example\r\n\r\n")
	cut := len("GET /downloads/report.txt HTTP")
	m.send(cli, [][]byte{req[:cut], req[cut:]}, burst{swap: -1, retransmit: -1})
	resp := append([]byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12000\r\n\r\n"), g.text(12000)...)
	m.send(srv, chop(resp, m.mss), burst{swap: 5, retransmit: 9})
	m.close(cli, true)

	// IPv6 and a chunked body.
	c6 := g.local("fd00::3:20", 64)
	v := g.dial(t0.Add(300*ms), c6, 42002, www6, 80, 400*us, 1440)
	v.handshake()
	v.say(cli, []byte("GET /feed HTTP/1.1\r\nHost: www.corp.example\r\n\r\n"))
	chunked := []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n")
	for range 5 {
		part := g.text(g.intn(900, 1800))
		chunked = append(fmt.Appendf(chunked, "%x\r\n", len(part)), part...)
		chunked = append(chunked, "\r\n"...)
	}
	v.say(srv, append(chunked, "0\r\n\r\n"...))
	v.close(cli, true)

	// HTTP/1.0: the server closes.
	o := g.dial(t0.Add(400*ms), g.local("10.0.3.32", 255), 42003, www, 80, 300*us, 1460)
	o.handshake()
	o.say(cli, []byte("GET /legacy HTTP/1.0\r\n\r\n"))
	o.say(srv, append([]byte("HTTP/1.0 200 OK\r\nConnection: close\r\nContent-Type: text/plain\r\n\r\n"), g.text(2500)...))
	o.close(srv, true)
	return g
}

// orport is ORPort.
func orport() *gen {
	g := newGen(layers.LinkTypeEthernet, 4)
	k := g.dial(epoch, g.local("192.168.1.2", 64), 50432, g.remote("203.0.113.9", 50), 9001, 36*ms, 1460)
	k.gap = 240 * us // 50 Mbit/s
	k.handshake()
	k.say(cli, tlsRecord(0x16, 0x0301, g.random(512)))
	k.say(srv, tlsRecord(0x16, 0x0303, g.random(3800)))
	k.say(cli, append(tlsRecord(0x16, 0x0303, g.random(70)), append(tlsRecord(0x14, 0x0303, []byte{1}), tlsRecord(0x16, 0x0303, g.random(40))...)...))
	k.say(srv, append(tlsRecord(0x14, 0x0303, []byte{1}), tlsRecord(0x16, 0x0303, g.random(40))...))
	// Link handshake and circuit: cells of 514 bytes in records.
	k.say(cli, tlsRecord(0x17, 0x0303, g.random(2*514)))
	k.say(srv, tlsRecord(0x17, 0x0303, g.random(4*514)))
	k.say(cli, tlsRecord(0x17, 0x0303, g.random(514)))
	k.say(srv, tlsRecord(0x17, 0x0303, g.random(514)))
	// The download: 31 cells a record.
	var stream []byte
	for len(stream) < 1_300_000 {
		stream = append(stream, tlsRecord(0x17, 0x0303, g.random(31*514))...)
	}
	k.say(cli, tlsRecord(0x17, 0x0303, g.random(514)))
	k.say(srv, stream)
	k.close(cli, true)
	return g
}

// tso is TSO.
func tso() *gen {
	g := newGen(layers.LinkTypeEthernet, 5)
	g.ifaces = append(g.ifaces, pcapgo.NgInterface{Name: "eth1", LinkType: layers.LinkTypeEthernet, TimestampResolution: 9, SnapLength: 128})
	k := g.dial(epoch.Add(417), g.local("10.0.5.10", 64), 41000, g.local("10.0.5.20", 64), 5201, 183_457, 1448)
	k.gap = 9_731
	k.handshake()
	k.say(cli, []byte("bento-tso-test-cookie-00000000000000\x00"))
	k.say(srv, []byte{9})
	sizes := []int{65160, 26064, 8948, 1448, 43440, 17376}
	var segs [][]byte
	for i := range 84 {
		segs = append(segs, g.random(sizes[i%len(sizes)]))
	}
	k.send(cli, segs, burst{swap: -1, retransmit: -1})
	k.close(cli, true)

	// On the second interface, a UDP stream captured 128 bytes deep.
	g.intf = 1
	src, dst := g.local("10.0.6.5", 64), g.local("10.0.6.9", 64)
	t := epoch.Add(1_234_567)
	for range 60 {
		i := g.datagram(t, src, 5004, dst, 5004, gopacket.Payload(g.random(1316)))
		g.pkts[i].data = g.pkts[i].data[:128]
		t = t.Add(1_370_011)
	}
	return g
}

// rawIP is RawIP.
func rawIP() *gen {
	g := newGen(layers.LinkTypeRaw, 6)
	t := epoch.Add(417)
	for _, v := range []struct{ a, b string }{{"10.99.0.1", "10.99.0.2"}, {"fd00:99::1", "fd00:99::2"}} {
		a, b := g.local(v.a, 64), g.local(v.b, 64)
		for i := range 3 {
			g.datagram(t, a, 38211, b, 9999, gopacket.Payload(fmt.Sprintf("hi%d\n", i+1)))
			t = t.Add(1_000_213)
		}
		k := g.dial(t, a, 40000, b, 7, 311_018, 1400)
		k.handshake()
		for _, n := range []int{200, 3000} {
			msg := g.text(n)
			k.say(cli, msg)
			k.say(srv, msg)
		}
		k.close(cli, true)
		t = g.ping(k.t.Add(2_000_003), a, b, 0x1d, 1, 411_113)
		t = g.ping(t.Add(999_999), a, b, 0x1d, 2, 398_017)
	}
	return g
}
