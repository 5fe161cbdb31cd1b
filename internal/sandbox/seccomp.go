package sandbox

// runnerSyscalls is the seccomp allow-list for the runner: the system calls
// a statically linked Go program makes (runtime start-up, threads, signals,
// the network poller on the host-API socket, timers, memory management),
// plus execve and the few calls runc's init makes after installing the
// filter. It was derived by running bento-runner under strace -f through the
// end-to-end suite and keeping what it used; everything else fails with
// EPERM. Notably absent: socket, connect, bind, fork/vfork, ptrace, mount,
// bpf, keyctl, perf_event_open, personality, process_vm_*, userfaultfd.
var runnerSyscalls = []string{
	// memory
	"mmap", "munmap", "madvise", "mprotect", "brk", "mremap", "mlock", "munlock",
	// threads and scheduling
	"clone", "futex", "sched_yield", "sched_getaffinity", "set_robust_list", "set_tid_address",
	"gettid", "getpid", "getppid", "tgkill", "tkill", "exit", "exit_group", "arch_prctl", "rseq",
	"nanosleep", "clock_nanosleep", "clock_gettime", "clock_getres", "gettimeofday",
	// signals
	"rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack",
	// I/O on inherited descriptors and the poller
	"read", "write", "readv", "writev", "pread64", "pwrite64", "close", "fcntl", "lseek",
	"epoll_create1", "epoll_ctl", "epoll_pwait", "epoll_pwait2", "epoll_wait", "eventfd2", "pipe2",
	"recvfrom", "sendto", "recvmsg", "sendmsg", "shutdown", "getsockopt", "ppoll", "poll", "dup3",
	// files (read-only root; /tmp scratch)
	"openat", "newfstatat", "fstat", "statx", "readlinkat", "getdents64", "faccessat", "faccessat2",
	"getcwd", "uname", "getrandom", "prlimit64", "getrlimit",
	"getuid", "geteuid", "getgid", "getegid", "capget",
	// runc's init after the filter is installed
	"execve", "close_range", "fstatfs", "statfs",
}

func seccompProfile() *ociSeccomp {
	return &ociSeccomp{
		DefaultAction: "SCMP_ACT_ERRNO",
		Architectures: []string{"SCMP_ARCH_X86_64"},
		Syscalls:      []ociSyscallRule{{Names: runnerSyscalls, Action: "SCMP_ACT_ALLOW"}},
	}
}
