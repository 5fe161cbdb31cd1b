package dust

import (
	"encoding/hex"
	"fmt"
	"net/url"
	"strings"
	"time"
)

// Release is where a machine of its own gets bentod: a tarball holding
// bentod and bento-runner, checked against its SHA-256 before use.
type Release struct {
	URL    string
	SHA256 string
}

func (r Release) check() error {
	u, err := url.Parse(r.URL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("bentod release URL %q: want an https URL of a tarball holding bentod and bento-runner", r.URL)
	}
	if b, err := hex.DecodeString(r.SHA256); err != nil || len(b) != 32 {
		return fmt.Errorf("bentod release SHA-256 %q: want 64 hex digits", r.SHA256)
	}
	if strings.ContainsAny(r.URL, "'\"\\ \n") {
		return fmt.Errorf("bentod release URL %q: no quotes, spaces or backslashes", r.URL)
	}
	return nil
}

// Paths of a mote on a Debian machine of its own, where tor runs as
// Debian's tor@default service.
const (
	cloudBentoDir   = "/var/lib/bento"
	cloudBentorc    = "/etc/bento/bentorc"
	cloudTorControl = "unix:/run/tor/control"
	cloudTorCookie  = "/run/tor/control.authcookie"
)

// cloudTorrc is the relay's torrc on a machine of its own: Debian's
// service defaults (data directory, user, control socket, cookie) plus
// the mote's ports and the template's lines; it joins the public network.
func (t *Template) cloudTorrc() string {
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	w("# dust mote %q: rendered by bento from its template", t.Name)
	w("ORPort %d", DefaultPorts.OR)
	w("SocksPort 127.0.0.1:%d", DefaultPorts.Socks)
	w("ContactInfo dust-mote")
	for _, l := range t.Torrc {
		w("%s", strings.TrimSpace(l))
	}
	return b.String()
}

// cloudBentorc is the box's bentorc on a machine of its own.
func (t *Template) cloudBentorc(ends time.Time) string {
	return t.bentorc(boxPlace{data: cloudBentoDir, control: cloudTorControl, cookie: cloudTorCookie}, DefaultPorts, ends)
}

const bentodUnit = `[Unit]
Description=Bento box (bentod) of a dust mote
After=network-online.target tor@default.service
Wants=tor@default.service

[Service]
ExecStart=/usr/local/bin/bentod -f /etc/bento/bentorc
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
NoNewPrivileges=no
ProtectHome=yes
PrivateTmp=yes

[Install]
WantedBy=multi-user.target
`

// indent prefixes every line of s.
func indent(s, prefix string) string {
	lines := strings.Split(strings.TrimSuffix(s, "\n"), "\n")
	for i, l := range lines {
		lines[i] = prefix + l
	}
	return strings.Join(lines, "\n") + "\n"
}

// fetchScript installs bentod from the release, checked.
func (r Release) fetchScript(dir string) string {
	return fmt.Sprintf("set -eu; curl -fsSL '%s' -o %s/bento.tar.gz; echo '%s  %s/bento.tar.gz' | sha256sum -c -; tar -C /usr/local/bin -xzf %s/bento.tar.gz bentod bento-runner; rm %s/bento.tar.gz",
		r.URL, dir, strings.ToLower(r.SHA256), dir, dir, dir)
}

// CloudInit renders a cloud-init user-data file for a Debian machine of
// the mote's own: it installs Debian's tor and runc and bentod from r,
// configures both from the template, starts them, and powers the machine
// off at the end (the box's end plus a minute). The machine runs nothing
// else.
func (t *Template) CloudInit(r Release, start time.Time) (string, error) {
	if err := r.check(); err != nil {
		return "", err
	}
	ends := start.Add(t.Lifetime).UTC().Truncate(time.Second)
	off := ends.Add(time.Minute)
	var b strings.Builder
	fmt.Fprintf(&b, `#cloud-config
# Dust mote %q, rendered by bento from its template: Debian's tor and runc,
# bentod from %s (SHA-256 checked), nothing else. The box ends at %s;
# the machine powers off a minute later.
package_update: true
packages:
  - tor
  - runc
  - curl
write_files:
  - path: /etc/tor/torrc
    permissions: "0644"
    content: |
%s  - path: %s
    permissions: "0600"
    content: |
%s  - path: /etc/systemd/system/bentod.service
    permissions: "0644"
    content: |
%sruncmd:
  - [sh, -c, %q]
  - [systemctl, restart, tor@default]
  - [systemctl, daemon-reload]
  - [systemctl, enable, --now, bentod]
  - [systemd-run, --on-calendar=%s, systemctl, poweroff]
`, t.Name, r.URL, ends.Format(time.RFC3339),
		indent(t.cloudTorrc(), "      "), cloudBentorc,
		indent(t.cloudBentorc(ends), "      "),
		indent(bentodUnit, "      "),
		r.fetchScript("/root"),
		off.Format("2006-01-02 15:04:05 UTC"))
	return b.String(), nil
}

// Kubernetes renders a Kubernetes Job (and the ConfigMap of its
// configuration) for users who outgrow one machine: one pod running tor
// and bentod from the template in image (a Debian image: tor and runc are
// installed at start), ended by the Job's activeDeadlineSeconds at the
// mote's end. The pod is privileged: bentod starts runc containers.
func (t *Template) Kubernetes(r Release, image string, start time.Time) (string, error) {
	if err := r.check(); err != nil {
		return "", err
	}
	if image == "" || strings.ContainsAny(image, " \n\"'") {
		return "", fmt.Errorf("image %q: want a Debian container image such as debian:trixie-slim", image)
	}
	ends := start.Add(t.Lifetime).UTC().Truncate(time.Second)
	name := "bento-mote-" + strings.ToLower(t.Name)
	script := strings.Join([]string{
		"set -eu",
		"apt-get update -q",
		"DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends tor runc curl ca-certificates",
		r.fetchScript("/tmp"),
		"mkdir -p /var/lib/tor /var/lib/bento && chown debian-tor /var/lib/tor",
		"tor --defaults-torrc /dev/null -f /mote/torrc &",
		"exec bentod -f /mote/bentorc",
	}, "\n")
	torrc := "User debian-tor\nDataDirectory /var/lib/tor\nControlPort 127.0.0.1:9051\nCookieAuthentication 1\nCookieAuthFile /var/lib/tor/control_auth_cookie\n" + t.cloudTorrc()
	bentorc := strings.NewReplacer(
		"TorControlPort "+cloudTorControl, "TorControlPort 127.0.0.1:9051",
		"TorCookieFile "+cloudTorCookie, "TorCookieFile /var/lib/tor/control_auth_cookie",
	).Replace(t.cloudBentorc(ends))
	var b strings.Builder
	fmt.Fprintf(&b, `# Dust mote %q, rendered by bento from its template: tor and bentod in
# one pod until %s (activeDeadlineSeconds), then the Job ends.
apiVersion: v1
kind: ConfigMap
metadata:
  name: %s
  labels:
    app.kubernetes.io/name: bento-mote
data:
  torrc: |
%s  bentorc: |
%s---
apiVersion: batch/v1
kind: Job
metadata:
  name: %s
  labels:
    app.kubernetes.io/name: bento-mote
spec:
  activeDeadlineSeconds: %d
  backoffLimit: 0
  ttlSecondsAfterFinished: 300
  template:
    metadata:
      labels:
        app.kubernetes.io/name: bento-mote
    spec:
      restartPolicy: Never
      containers:
        - name: mote
          image: %s
          command: ["/bin/sh", "-c"]
          args:
            - |
%s          securityContext:
            privileged: true
          ports:
            - containerPort: %d
              name: orport
          volumeMounts:
            - name: config
              mountPath: /mote
              readOnly: true
      volumes:
        - name: config
          configMap:
            name: %s
`, t.Name, ends.Format(time.RFC3339), name, indent(torrc, "    "), indent(bentorc, "    "), name,
		int64(t.Lifetime.Seconds()), image, indent(script, "              "), DefaultPorts.OR, name)
	return b.String(), nil
}
