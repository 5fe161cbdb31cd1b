package sandbox

// runnerSyscalls is the seccomp allow-list for the runner; everything else
// fails with EPERM. It was derived by tracing (scripts/seccomp-trace.sh:
// bentod under strace -f -ff, driving every shipped and test function,
// keeping the calls of bento-runner's threads after its execve) and is:
//
//   - what the trace showed the runner using: memory (mmap, munmap,
//     madvise, mprotect), threads and the scheduler (clone, futex,
//     nanosleep, sched_yield, sched_getaffinity, gettid, getpid, tgkill),
//     signals (rt_sigaction, rt_sigprocmask, rt_sigreturn, sigaltstack),
//     the poller on the host-API socket (epoll_*, eventfd2, read, write,
//     fcntl, close), start-up (arch_prctl, openat of /proc/self/cgroup and
//     the like, prlimit64), exit;
//   - execve, close_range, fstatfs, statfs and getdents64 (reading
//     /proc/self/fd), which runc's init calls after installing the filter
//     and before executing the runner;
//   - a few calls the Go runtime makes only on some kernels or paths the
//     trace cannot force (getrandom when the vDSO lacks it, clock_* when the
//     vDSO is unavailable, mremap, brk, pipe2, newfstatat, readlinkat).
//
// Refused on purpose, although the runtime tries it: prctl (Go 1.26 names
// its memory mappings with PR_SET_VMA and ignores the EPERM). Notably
// absent: socket, connect, bind, sendmsg/recvmsg, fork/vfork, ptrace,
// mount, bpf, keyctl, perf_event_open, personality, process_vm_*,
// userfaultfd, setuid and friends.
var runnerSyscalls = []string{
	// memory
	"mmap", "munmap", "madvise", "mprotect", "mremap", "brk",
	// threads and scheduling
	"clone", "futex", "sched_yield", "sched_getaffinity", "gettid", "getpid", "tgkill",
	"exit", "exit_group", "arch_prctl", "set_robust_list", "set_tid_address", "rseq",
	"nanosleep", "clock_nanosleep", "clock_gettime", "clock_getres", "gettimeofday",
	// signals
	"rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack",
	// I/O on inherited descriptors and the poller
	"read", "write", "close", "fcntl", "pipe2",
	"epoll_create1", "epoll_ctl", "epoll_pwait", "epoll_pwait2", "epoll_wait", "eventfd2",
	// start-up reads (read-only root)
	"openat", "newfstatat", "fstat", "readlinkat", "getrandom", "prlimit64",
	// runc's init after the filter is installed
	"execve", "close_range", "fstatfs", "statfs", "getdents64",
}

func seccompProfile() *ociSeccomp {
	return &ociSeccomp{
		DefaultAction: "SCMP_ACT_ERRNO",
		Architectures: []string{"SCMP_ARCH_X86_64"},
		Syscalls:      []ociSyscallRule{{Names: runnerSyscalls, Action: "SCMP_ACT_ALLOW"}},
	}
}
