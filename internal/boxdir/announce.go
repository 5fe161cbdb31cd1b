package boxdir

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/torbento/bento/internal/torctl"
)

// Announce adds the box's field to the ContactInfo of the relay whose
// control connection c is (SETCONF, not saved to its torrc: the field goes
// when tor restarts or bentod withdraws it), and returns the relay's
// fingerprint. tor publishes a new descriptor with it. A relay already
// carrying the field unchanged is left alone.
func Announce(ctx context.Context, c *torctl.Conn, ann Announcement) (string, error) {
	info, err := c.GetInfo(ctx, "fingerprint")
	if err != nil {
		return "", fmt.Errorf("the tor beside bentod is not a relay (GETINFO fingerprint: %w): only a relay's box is listed", err)
	}
	fp := strings.ToUpper(strings.TrimSpace(info["fingerprint"]))
	if len(fp) != 40 || strings.Trim(fp, "0123456789ABCDEF") != "" {
		return "", fmt.Errorf("tor gave the fingerprint %q", truncate(fp, 60))
	}
	cur, err := contactInfo(ctx, c)
	if err != nil {
		return "", err
	}
	want := WithField(cur, ann.ContactField())
	if want == cur {
		return fp, nil
	}
	return fp, setContact(ctx, c, want)
}

// Withdraw removes the box's field from the relay's ContactInfo.
func Withdraw(ctx context.Context, c *torctl.Conn) error {
	cur, err := contactInfo(ctx, c)
	if err != nil {
		return err
	}
	if want := WithField(cur, ""); want != cur {
		return setContact(ctx, c, want)
	}
	return nil
}

func contactInfo(ctx context.Context, c *torctl.Conn) (string, error) {
	r, err := c.Do(ctx, torctl.MustCommand("GETCONF", "ContactInfo"))
	if err != nil {
		return "", fmt.Errorf("reading the relay's ContactInfo: %w", err)
	}
	for _, l := range r.Lines {
		// tor (0.4.3 and later) answers GETCONF with the value raw.
		if v, ok := strings.CutPrefix(l.Text, "ContactInfo="); ok {
			return v, nil
		}
		if l.Text == "ContactInfo" {
			return "", nil // unset
		}
	}
	return "", errors.New("reading the relay's ContactInfo: tor's answer has none")
}

func setContact(ctx context.Context, c *torctl.Conn, v string) error {
	var arg string
	var err error
	if v == "" {
		arg = "ContactInfo"
	} else if arg, err = torctl.KV("ContactInfo", v); err != nil {
		return fmt.Errorf("the relay's ContactInfo %q cannot be written back: %w", truncate(v, 80), err)
	}
	cmd, err := torctl.NewCommand("SETCONF", arg)
	if err != nil {
		return err
	}
	if _, err := c.Do(ctx, cmd); err != nil {
		return fmt.Errorf("setting the relay's ContactInfo: %w", err)
	}
	return nil
}
