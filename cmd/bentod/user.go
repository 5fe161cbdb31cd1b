package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/user"
	"strconv"

	"github.com/torbento/bento/internal/policy"
	"github.com/torbento/bento/internal/safelog"
	"github.com/torbento/bento/internal/sandbox"
	"github.com/torbento/bento/internal/server"
)

// switchUser gives up root for the User of the configuration, as tor
// does, once bentod holds what needs root: its listeners are bound, its
// cgroups set up, its files read. Where containers cannot run without
// root (cgroup v1, no delegation, no unprivileged user namespaces), bentod
// stays root with its capabilities narrowed (privs.Drop) and says why.
func switchUser(p *policy.Policy, srv *server.Server, log *slog.Logger) error {
	if p.User == "" {
		return nil
	}
	u, err := user.Lookup(p.User)
	if err != nil {
		return fmt.Errorf("user %s (User): %w (create it, e.g. adduser --system --group %s, or remove the User line)", p.User, err, p.User)
	}
	uid, gid, err := ids(u)
	if err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		if os.Geteuid() != uid {
			log.Warn("bentod was not started as root and cannot switch to User; running as the user that started it", "user", p.User, "uid", os.Geteuid())
		}
		return nil
	}
	if uid == 0 {
		return nil
	}
	if why := srv.Rootless(); why != nil {
		safelog.Notice(log, "staying root (with only the capabilities the container runtime needs): containers cannot run without root here", "user", p.User, "why", why.Error())
		return nil
	}
	var groups []int
	if gs, err := u.GroupIds(); err == nil {
		for _, g := range gs {
			if n, err := strconv.Atoi(g); err == nil && n != gid {
				groups = append(groups, n)
			}
		}
	}
	if err := srv.HandOver(uid, gid); err != nil {
		return fmt.Errorf("user %s (User): %w", p.User, err)
	}
	for _, s := range p.Logs {
		if s.Path != "" {
			if err := os.Chown(s.Path, uid, gid); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("user %s (User): giving the log file %s to it: %w", p.User, s.Path, err)
			}
		}
	}
	if err := sandbox.BecomeUser(uid, gid, append([]int{gid}, groups...)); err != nil {
		return fmt.Errorf("user %s (User): %w", p.User, err)
	}
	safelog.Notice(log, "running as an unprivileged user: containers run rootless, each one's root mapped to this user, without capabilities", "user", p.User, "uid", uid)
	return nil
}

func ids(u *user.User) (uid, gid int, err error) {
	if uid, err = strconv.Atoi(u.Uid); err == nil {
		gid, err = strconv.Atoi(u.Gid)
	}
	if err != nil {
		return 0, 0, fmt.Errorf("user %s (User): its IDs %s:%s are not numbers", u.Username, u.Uid, u.Gid)
	}
	return uid, gid, nil
}
