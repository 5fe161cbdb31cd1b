package main

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/torbento/bento/internal/flashflow/coord"
	"github.com/torbento/bento/internal/flashflow/schedule"
	"github.com/torbento/bento/internal/torctl"
)

// jointFlags are the flags of a joint (multi-coordinator) schedule.
type jointFlags struct {
	coordinators, self, secret *string
}

func addJointFlags(fs *flag.FlagSet) jointFlags {
	return jointFlags{
		coordinators: fs.String("coordinators", "", "joint schedule: the deployment file, <coordinator ID> <measurer capacity bytes/s> per line, the same at every coordinator"),
		self:         fs.String("self", "", "joint schedule: this coordinator's ID in -coordinators"),
		secret:       fs.String("shared-secret", "", "joint schedule: file holding the secret the coordinators share (64 hex digits, mode 0600)"),
	}
}

// load returns the joint configuration, nil without -coordinators.
func (f jointFlags) load() (*coord.Joint, error) {
	if *f.coordinators == "" {
		if *f.self != "" || *f.secret != "" {
			return nil, errors.New("-self and -shared-secret need -coordinators")
		}
		return nil, nil
	}
	if *f.self == "" || *f.secret == "" {
		return nil, errors.New("-coordinators needs -self (this coordinator's ID) and -shared-secret")
	}
	fh, err := os.Open(*f.coordinators)
	if err != nil {
		return nil, fmt.Errorf("-coordinators: %w", err)
	}
	cs, err := coord.ParseCoordinators(fh)
	fh.Close()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", *f.coordinators, err)
	}
	secret, err := coord.ReadSecret(*f.secret)
	if err != nil {
		return nil, err
	}
	j := &coord.Joint{Self: *f.self, Coordinators: cs, Secret: secret}
	if err := j.Validate(); err != nil {
		return nil, fmt.Errorf("%w (%s lists %s)", err, *f.coordinators, coordIDs(cs))
	}
	return j, nil
}

// capacity is this coordinator's measurer capacity in the deployment.
func capacityOf(j *coord.Joint) uint64 {
	for _, c := range j.Coordinators {
		if c.ID == j.Self {
			return c.Capacity
		}
	}
	return 0
}

func coordIDs(cs []schedule.Coordinator) string {
	ids := make([]string, len(cs))
	for i, c := range cs {
		ids[i] = c.ID
	}
	return strings.Join(ids, ", ")
}

// torSRV reads the shared random value of tor's consensus; zero and an
// error when it has none.
func torSRV(ctx context.Context, c *torctl.Conn) ([32]byte, error) {
	var v [32]byte
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	m, err := c.GetInfo(ctx, "sr/current")
	if err != nil {
		return v, err
	}
	return parseSRV(m["sr/current"])
}

// parseSRV decodes a shared random value in base64, as tor gives it.
func parseSRV(s string) ([32]byte, error) {
	var v [32]byte
	s = strings.TrimSpace(s)
	if s == "" {
		return v, errors.New("tor's consensus has no shared random value")
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		b, err = base64.RawStdEncoding.DecodeString(s)
	}
	if err != nil || len(b) != 32 {
		return v, fmt.Errorf("shared random value %q: want 32 bytes in base64", s)
	}
	copy(v[:], b)
	return v, nil
}

// scheduleCmd prints this coordinator's part of a period's joint
// schedule, and the whole schedule's digest, which every coordinator of
// the deployment must see identical.
func scheduleCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("schedule", flag.ContinueOnError)
	jf := addJointFlags(fs)
	targets := fs.String("targets", "", "targets file (the one the coordinators share)")
	at := fs.String("at", "", "a time in the period to plan, RFC 3339 (default now)")
	srvFlag := fs.String("srv", "", "the period's shared random value, base64 (default: -tor-control's consensus; \"none\" for none)")
	period := fs.Duration("period", 24*time.Hour, "period length")
	slot := fs.Duration("slot", 60*time.Second, "slot length")
	mult := fs.Float64("multiplier", 2.25, "measurers send this times the relay's prior estimate")
	tor := addTorFlags(fs, "", "control port of a tor client, to read the shared random value")
	if err := fs.Parse(args); err != nil {
		return err
	}
	j, err := jf.load()
	if err != nil {
		return err
	}
	if j == nil {
		return errors.New("usage: flashflow schedule -coordinators FILE -self ID -shared-secret FILE -targets FILE [-srv BASE64 | -tor-control ADDR] [-at TIME]")
	}
	fh, err := os.Open(*targets)
	if err != nil {
		return fmt.Errorf("-targets: %w", err)
	}
	ts, err := coord.ParseTargets(fh)
	fh.Close()
	if err != nil {
		return err
	}
	now := time.Now()
	if *at != "" {
		if now, err = time.Parse(time.RFC3339, *at); err != nil {
			return fmt.Errorf("-at %q: want an RFC 3339 time such as 2026-12-02T00:00:00Z", *at)
		}
	}
	var srv [32]byte
	switch {
	case *srvFlag == "none":
	case *srvFlag != "":
		if srv, err = parseSRV(*srvFlag); err != nil {
			return fmt.Errorf("-srv: %w", err)
		}
	case *tor.control != "":
		tc, err := tor.dial(ctx)
		if err != nil {
			return err
		}
		defer tc.Close()
		if srv, err = torSRV(ctx, tc); err != nil {
			return err
		}
	default:
		return errors.New("give the period's shared random value: -srv BASE64, -srv none, or -tor-control")
	}
	p := schedule.DefaultParams(capacityOf(j))
	p.Period, p.Slot, p.Multiplier = *period, *slot, *mult
	if err := p.Validate(); err != nil {
		return err
	}
	pn := schedule.PeriodOf(now, p.Period)
	js, mine, err := j.Plan(p, coord.JointRelays(ts), srv, pn)
	if err != nil {
		return err
	}
	d := js.Digest()
	fmt.Printf("period %d from %s, %d coordinators, joint schedule digest %s\n", pn,
		schedule.PeriodStart(pn, p.Period).UTC().Format(time.RFC3339), len(js.Coordinators()), hex.EncodeToString(d[:]))
	fmt.Printf("%s: %d measurements, %d relays unscheduled\n", j.Self, mine.Len(), len(mine.Unscheduled))
	for _, l := range coord.SlotTimes(mine, schedule.PeriodStart(pn, p.Period)) {
		fmt.Println(l)
	}
	for _, fp := range mine.Unscheduled {
		fmt.Println("unscheduled", fp)
	}
	return nil
}
