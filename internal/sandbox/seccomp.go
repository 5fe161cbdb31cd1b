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

// pythonSyscalls is the seccomp allow-list for image python: Debian's
// CPython running the driver (docs/python.md). It was derived by tracing
// (scripts/seccomp-trace.sh python: bentod under strace -f -ff driving
// the py-* functions and every attack of the hostile python function,
// keeping the calls of each interpreter after its execve and of every
// thread it cloned). The trace showed:
//
//   - the dynamic loader and the importer: openat, newfstatat, read,
//     pread64, lseek, close, getdents64, readlink, access, mmap, mprotect,
//     munmap, madvise, brk, arch_prctl, set_tid_address, set_robust_list,
//     rseq, prlimit64, getrandom, getuid; ioctl (TCGETS, for isatty:
//     ENOTTY on every descriptor); sysinfo too, refused on purpose: it
//     tells the host's uptime, load and free memory, which /proc's
//     masked files hide (glibc's qsort asks it for the memory size, and
//     sorts either way);
//   - threads (an invocation each, two per network connection): clone3
//     (answered ENOSYS, below), clone with CLONE_THREAD, futex, gettid,
//     rt_sigprocmask, rt_sigaction, exit, clock_nanosleep (time.sleep);
//   - the host-API descriptor and the network shim's socketpairs: read,
//     readv, write, sendto, recvfrom, poll, shutdown, getsockname, fcntl,
//     pipe2, epoll_create1, socketpair and socket (AF_UNIX);
//   - what the attacks tried and were refused: clone without
//     CLONE_THREAD, vfork, socket of other families, connect (glibc's
//     resolver asking nscd; nothing connects), writing the root (EROFS).
//
// Added beyond the trace, for paths it cannot force: the rest of the
// time, signal and poller calls the runner's list has (clock_gettime
// without the vDSO, select, ppoll, epoll_*), ioctl FIONBIO (a socket's
// timeout) and FIOCLEX, recvmsg and get/setsockopt on the socketpairs, dup*, and what files in /tmp need (unlink, mkdir, rename,
// ftruncate, fsync, statx, ...); execve, close_range and fstatfs, which
// runc's init calls after installing the filter.
//
// Fork is refused: clone without CLONE_THREAD (fork, vfork-style spawns)
// fails with EPERM, vfork and fork too, and clone3 answers ENOSYS so that
// glibc falls back to clone (whose flags a filter can read; clone3's sit
// behind a pointer). Refused as for the runner: connect, bind, listen,
// accept, AF_INET/AF_INET6/AF_PACKET/AF_NETLINK sockets, ptrace, mount,
// bpf, keyctl, perf_event_open, personality, process_vm_*, userfaultfd,
// setuid and friends, kill (tgkill of its own threads stays).
//
// Unlike the runner's, this list is the boundary for native code: the
// standard library's ctypes runs any machine code a function brings, so
// every call here may come with any arguments. Filtered on them (see
// pythonSeccompProfile): clone (a thread, and no namespace flag), socket
// and socketpair (AF_UNIX), sendto/recvfrom/recvmsg (no MSG_OOB; sendmsg
// not at all), fcntl (no F_SETLEASE, F_NOTIFY or other rare commands),
// ioctl (three requests). Each rule is an equality on all 64 bits or a
// mask of bits that must be clear (the upper half included where it
// tells commands apart), never "not equal": the kernel drops the upper
// half of a 32-bit argument, so a command with a bit set there would
// pass such a rule and still be the command.
var pythonSyscalls = []string{
	// memory
	"mmap", "munmap", "madvise", "mprotect", "mremap", "brk",
	// threads and scheduling (clone: see pythonSeccompProfile)
	"futex", "sched_yield", "sched_getaffinity", "gettid", "getpid", "getppid", "tgkill",
	"exit", "exit_group", "arch_prctl", "set_robust_list", "set_tid_address", "rseq",
	"nanosleep", "clock_nanosleep", "clock_gettime", "clock_getres", "gettimeofday",
	"getrusage", "times", "uname",
	"getuid", "geteuid", "getgid", "getegid",
	// signals
	"rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack",
	// I/O on descriptors, the poller
	"read", "write", "readv", "writev", "pread64", "pwrite64", "lseek", "close",
	"dup", "dup2", "dup3", "pipe2", "poll", "ppoll", "select", "pselect6",
	"epoll_create1", "epoll_ctl", "epoll_pwait", "epoll_pwait2", "epoll_wait", "eventfd2",
	// the sockets of the socketpairs (socket and socketpair: AF_UNIX only;
	// sendto, recvfrom, recvmsg: without MSG_OOB; no sendmsg)
	"shutdown",
	"getsockopt", "setsockopt", "getsockname", "getpeername",
	// files: the read-only root and /tmp
	"openat", "newfstatat", "fstat", "statx", "readlink", "readlinkat", "getcwd", "getdents64",
	"access", "faccessat", "faccessat2", "statfs", "fstatfs",
	"unlink", "unlinkat", "mkdir", "mkdirat", "rmdir", "rename", "renameat", "renameat2",
	"ftruncate", "fsync", "fdatasync", "umask",
	"getrandom", "prlimit64",
	// runc's init after the filter is installed
	"execve", "close_range",
}

// Seccomp constants for the argument rules.
const (
	cloneThread = 0x00010000 // CLONE_THREAD
	// cloneNewNS are clone's namespace flags (CLONE_NEWNS, NEWCGROUP,
	// NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET): a thread never gets one.
	cloneNewNS   = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
	afUnix       = 1 // AF_UNIX
	msgOOB       = 1 // MSG_OOB
	errnoENOSYS  = 38
	ioctlTCGETS  = 0x5401
	ioctlFIONBIO = 0x5421
	ioctlFIOCLEX = 0x5451
	// fcntlLow masks the fcntl commands below 1024 (F_DUPFD to
	// F_OFD_SETLKW: descriptors, status flags, locks, owners): the
	// command must be one of them, with no bit set above, or one of
	// fcntlHigh.
	fcntlLow = ^uint64(1023)
)

// fcntlHigh are the fcntl commands from 1024 up the python image may
// use: F_DUPFD_CLOEXEC, F_SETPIPE_SZ, F_GETPIPE_SZ, F_GET_SEALS. Not
// F_SETLEASE (1024): a lease on a file the container's user owns blocks
// everyone else's open of it for lease-break-time (45 s), and with a
// rootless bentod that user owns the shared root (/bento-runner,
// /bento/driver.py), which every container opens as it starts. Nor
// F_NOTIFY, F_CANCELLK, F_ADD_SEALS or the write hints.
var fcntlHigh = []uint64{1030, 1031, 1032, 1034}

func pythonSeccompProfile() *ociSeccomp {
	enosys := uint(errnoENOSYS)
	eq := func(index uint, v uint64) []ociSyscArg {
		return []ociSyscArg{{Index: index, Value: v, Op: "SCMP_CMP_EQ"}}
	}
	// masked: (arg & mask) == v. In the runtime's rules Value is the mask
	// and ValueTwo the datum (libseccomp's SCMP_CMP_MASKED_EQ).
	masked := func(index uint, mask, v uint64) []ociSyscArg {
		return []ociSyscArg{{Index: index, Value: mask, ValueTwo: v, Op: "SCMP_CMP_MASKED_EQ"}}
	}
	rules := []ociSyscallRule{
		{Names: pythonSyscalls, Action: "SCMP_ACT_ALLOW"},
		// Threads only: a clone that does not share the thread group is a
		// fork; and no namespace flag (they take capabilities the
		// container has none of: refused here whatever the kernel).
		{Names: []string{"clone"}, Action: "SCMP_ACT_ALLOW", Args: masked(0, cloneThread|cloneNewNS, cloneThread)},
		{Names: []string{"clone3"}, Action: "SCMP_ACT_ERRNO", ErrnoRet: &enosys},
		{Names: []string{"socket", "socketpair"}, Action: "SCMP_ACT_ALLOW", Args: eq(0, afUnix)},
		// Out-of-band data on AF_UNIX sockets is nothing Python's
		// socketpairs need, and the kernel's least-trodden path there
		// (CVE-2025-38236, a use-after-free reached from sandboxes this
		// way): never. The flags are arg 3 of sendto and recvfrom, arg 2
		// of recvmsg. sendmsg is refused: it alone passes descriptors
		// (SCM_RIGHTS), whose cycles the kernel's AF_UNIX garbage
		// collector untangles, another path of exploited bugs
		// (CVE-2021-0920, CVE-2024-26923); the driver and requests send
		// with sendto.
		{Names: []string{"sendto", "recvfrom"}, Action: "SCMP_ACT_ALLOW", Args: masked(3, msgOOB, 0)},
		{Names: []string{"recvmsg"}, Action: "SCMP_ACT_ALLOW", Args: masked(2, msgOOB, 0)},
		{Names: []string{"fcntl"}, Action: "SCMP_ACT_ALLOW", Args: masked(1, fcntlLow, 0)},
	}
	for _, cmd := range fcntlHigh {
		rules = append(rules, ociSyscallRule{Names: []string{"fcntl"}, Action: "SCMP_ACT_ALLOW", Args: eq(1, cmd)})
	}
	for _, req := range []uint64{ioctlTCGETS, ioctlFIONBIO, ioctlFIOCLEX} {
		rules = append(rules, ociSyscallRule{Names: []string{"ioctl"}, Action: "SCMP_ACT_ALLOW", Args: eq(1, req)})
	}
	return &ociSeccomp{DefaultAction: "SCMP_ACT_ERRNO", Architectures: []string{"SCMP_ARCH_X86_64"}, Syscalls: rules}
}
