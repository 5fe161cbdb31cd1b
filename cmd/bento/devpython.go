package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"

	"github.com/torbento/bento/internal/runner"
	"github.com/torbento/bento/internal/sandbox/python"
)

// pyDriverConn is bento dev's end of the python driver's host-API
// channel; closing it ends the driver.
type pyDriverConn struct {
	*os.File
	cmd *exec.Cmd
	dir string
}

func (c *pyDriverConn) Close() error {
	err := c.File.Close()
	if c.cmd.Process != nil {
		_ = c.cmd.Process.Kill()
		_ = c.cmd.Wait()
	}
	os.RemoveAll(c.dir)
	return err
}

// startPythonDriver runs the python image's driver with the local
// python3, its host-API channel on fd 3 as in a container.
func startPythonDriver() (io.ReadWriteCloser, error) {
	if _, err := os.Stat(runner.PythonForCheck); err != nil {
		return nil, fmt.Errorf("%s is missing: bento dev runs python functions with Debian's python3 (apt-get install python3 python3-requests)", runner.PythonForCheck)
	}
	dir, err := os.MkdirTemp("", "bento-dev-py-")
	if err != nil {
		return nil, err
	}
	drv := filepath.Join(dir, "driver.py")
	if err := os.WriteFile(drv, python.Driver, 0o600); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	ours, theirs := os.NewFile(uintptr(fds[0]), "hostapi"), os.NewFile(uintptr(fds[1]), "hostapi-driver")
	cmd := exec.Command(runner.PythonForCheck, "-I", "-S", "-B", drv)
	cmd.ExtraFiles = []*os.File{theirs}
	cmd.Dir = dir
	if err := cmd.Start(); err != nil {
		ours.Close()
		theirs.Close()
		os.RemoveAll(dir)
		return nil, err
	}
	theirs.Close()
	return &pyDriverConn{File: ours, cmd: cmd, dir: dir}, nil
}
