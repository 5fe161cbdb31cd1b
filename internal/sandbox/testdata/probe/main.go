// Command probe runs in place of bento-runner in sandbox tests and reports,
// one "key=value" line each, what the sandbox lets it do.
package main

import (
	"fmt"
	"os"
	"strings"
	"syscall"
)

func errno(err error) string {
	if err == nil {
		return "ok"
	}
	if e, ok := err.(syscall.Errno); ok {
		return e.Error()
	}
	if pe, ok := err.(*os.PathError); ok {
		return errno(pe.Err)
	}
	return err.Error()
}

func status(field string) string {
	b, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "?"
}

func main() {
	p := func(k string, v any) { fmt.Printf("%s=%v\n", k, v) }
	p("uid", strings.Fields(status("Uid") + " ?")[0])
	if st, err := os.Stat("/tmp"); err == nil {
		p("tmp_mode", st.Mode().String())
	}
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, " /tmp ") {
				p("tmp_mount", l)
			}
		}
	}
	_, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	p("socket", errno(err))
	_, err = syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	p("socket_unix", errno(err))
	p("mount", errno(syscall.Mount("none", "/tmp", "tmpfs", 0, "")))
	_, _, e := syscall.RawSyscall(syscall.SYS_PTRACE, 0, 0, 0)
	p("ptrace", errno(e))
	pid, _, e := syscall.RawSyscall(syscall.SYS_FORK, 0, 0, 0)
	if e == 0 && pid == 0 {
		os.Exit(0)
	}
	p("fork", errno(e))
	p("write_root", errno(os.WriteFile("/evil", []byte("x"), 0o644)))
	f, err := os.Create("/tmp/fill")
	if err == nil {
		chunk := make([]byte, 64<<10)
		for err == nil {
			_, err = f.Write(chunk)
		}
		f.Close()
	}
	p("fill_tmp", errno(err))
	ents, _ := os.ReadDir("/")
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	p("root", strings.Join(names, ","))
	p("cap_eff", status("CapEff"))
	p("no_new_privs", status("NoNewPrivs"))
	p("seccomp", status("Seccomp"))
	_, err = os.ReadFile("/proc/kcore")
	p("kcore", errno(err))
	if f, err := os.Open("/dev/urandom"); err == nil {
		b := make([]byte, 8)
		_, err = f.Read(b)
		p("urandom", errno(err))
		f.Close()
	} else {
		p("urandom", errno(err))
	}
	// Which device each /dev node really is (major:minor), if it opens.
	for _, d := range []string{"null", "zero", "urandom", "full", "random", "tty", "ptmx"} {
		f, err := os.OpenFile("/dev/"+d, os.O_RDWR, 0)
		if err != nil {
			p("dev_"+d, errno(err))
			continue
		}
		var st syscall.Stat_t
		_ = syscall.Fstat(int(f.Fd()), &st)
		f.Close()
		p("dev_"+d, fmt.Sprintf("%d:%d", st.Rdev>>8&0xfff, st.Rdev&0xff|st.Rdev>>12&0xfff00))
	}
	// Other processes: the pid namespace shows only the container's own.
	procs := 0
	pents, _ := os.ReadDir("/proc")
	for _, e := range pents {
		if e.Name()[0] >= '0' && e.Name()[0] <= '9' {
			procs++
		}
	}
	p("procs", procs)
	_, err = os.ReadFile("/proc/1/environ")
	p("pid1_environ", errno(err))
	p("mknod", errno(syscall.Mknod("/tmp/mem", syscall.S_IFCHR|0o666, 1<<8|1)))
	if m, err := os.ReadFile("/proc/self/uid_map"); err == nil {
		p("uid_map", strings.Join(strings.Fields(string(m)), " "))
	}
	devs, _ := os.ReadDir("/dev")
	names = nil
	for _, d := range devs {
		names = append(names, d.Name())
	}
	p("dev", strings.Join(names, ","))
	p("hostname", func() string { h, _ := os.Hostname(); return h }())
	p("done", true)
}
