package sandbox

import (
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/torbento/bento/internal/sandbox/python"
)

// ImagePython is the image whose functions are Python modules run by
// Debian's CPython (docs/python.md).
const ImagePython = "python"

// PythonBinary is where the image's interpreter is looked for: Debian's
// python3 (a symbolic link to python3.11), never a shim in PATH.
var PythonBinary = "/usr/bin/python3"

// driverPath is where the driver is in the containers' root.
const driverPath = "/bento/driver.py"

var pythonDriver = python.Driver

// pythonPackages are the packages of /usr/lib/python3/dist-packages a
// function sees: requests and what it imports (those present; Debian's
// urllib3 imports six, which it does not vendor).
var pythonPackages = []string{"requests", "urllib3", "idna", "certifi", "charset_normalizer", "chardet", "six"}

// caBundle is the certificate authorities' file certifi (Debian's) names.
const caBundle = "/etc/ssl/certs/ca-certificates.crt"

// libDirs are searched for a DT_NEEDED library, in the dynamic loader's
// order on Debian (multiarch first).
var libDirs = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"}

// bindMount is a read-only bind mount of a host path into the containers.
type bindMount struct {
	Source string // on the host, symbolic links resolved
	Target string // in the container
	Dir    bool
}

// PythonImage is what a python container sees of the host.
type PythonImage struct {
	Binary string // the interpreter's path in the container (its real name)
	Mounts []bindMount
}

// Paths lists the host files and directories the image mounts.
func (p *PythonImage) Paths() []string {
	var out []string
	for _, m := range p.Mounts {
		out = append(out, m.Source)
	}
	return out
}

// FindPython works out, once, what the python image mounts: the
// interpreter (symbolic links resolved), its standard library, requests
// and its dependencies from dist-packages, the shared libraries the
// interpreter and the standard library's extension modules need (their
// DT_NEEDED, transitively, with the dynamic loader), and the CA bundle.
func FindPython() (*PythonImage, error) {
	bin, err := filepath.EvalSymlinks(PythonBinary)
	if err != nil {
		return nil, fmt.Errorf("the policy offers image python but %s is missing (%v): install Debian's python3 and python3-requests (apt-get install python3 python3-requests) or remove python from Image in bentorc", PythonBinary, err)
	}
	base := filepath.Base(bin) // python3.11
	if !strings.HasPrefix(base, "python3.") {
		return nil, fmt.Errorf("%s resolves to %s, not a python3.X interpreter: install Debian's python3 or remove python from Image in bentorc", PythonBinary, bin)
	}
	stdlib := filepath.Join("/usr/lib", base)
	if st, err := os.Stat(filepath.Join(stdlib, "os.py")); err != nil || st.IsDir() {
		return nil, fmt.Errorf("%s has no standard library at %s: install Debian's python3 (apt-get install python3) or remove python from Image in bentorc", bin, stdlib)
	}
	img := &PythonImage{Binary: bin}
	img.Mounts = append(img.Mounts, bindMount{Source: bin, Target: bin}, bindMount{Source: stdlib, Target: stdlib, Dir: true})
	for _, p := range pythonPackages {
		dir := filepath.Join("/usr/lib/python3/dist-packages", p)
		if st, err := os.Stat(dir); err == nil && st.IsDir() {
			img.Mounts = append(img.Mounts, bindMount{Source: dir, Target: dir, Dir: true})
		} else if st, err := os.Stat(dir + ".py"); err == nil && st.Mode().IsRegular() {
			img.Mounts = append(img.Mounts, bindMount{Source: dir + ".py", Target: dir + ".py"})
		}
	}
	if real, err := filepath.EvalSymlinks(caBundle); err == nil {
		img.Mounts = append(img.Mounts, bindMount{Source: real, Target: caBundle})
	}
	// The ELF files whose libraries are needed.
	elves := []string{bin}
	dynload, _ := filepath.Glob(filepath.Join(stdlib, "lib-dynload", "*.so"))
	elves = append(elves, dynload...)
	interp, err := interpreter(bin)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", bin, err)
	}
	libs, err := neededLibs(elves)
	if err != nil {
		return nil, err
	}
	if real, err := filepath.EvalSymlinks(interp); err == nil {
		img.Mounts = append(img.Mounts, bindMount{Source: real, Target: interp})
	} else {
		return nil, fmt.Errorf("%s's dynamic loader %s: %w", bin, interp, err)
	}
	names := make([]string, 0, len(libs))
	for n := range libs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		// Every library at the first place the loader searches (no
		// ld.so.cache in the container).
		t := filepath.Join(libDirs[0], n)
		if t == interp {
			continue
		}
		img.Mounts = append(img.Mounts, bindMount{Source: libs[n], Target: t})
	}
	return img, nil
}

// interpreter returns an executable's PT_INTERP.
func interpreter(path string) (string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			b := make([]byte, p.Filesz)
			if _, err := p.ReadAt(b, 0); err != nil {
				return "", err
			}
			return strings.TrimRight(string(b), "\x00"), nil
		}
	}
	return "", errors.New("no dynamic loader named (PT_INTERP)")
}

// neededLibs resolves the DT_NEEDED libraries of files, transitively:
// soname -> real path on the host. A library that cannot be found is
// left out (the extension module needing it fails to import, as on a
// host without it).
func neededLibs(files []string) (map[string]string, error) {
	out := map[string]string{}
	queue := append([]string(nil), files...)
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		f, err := elf.Open(p)
		if err != nil {
			if p == files[0] {
				return nil, fmt.Errorf("reading %s: %w", p, err)
			}
			continue
		}
		needed, err := f.ImportedLibraries()
		f.Close()
		if err != nil {
			continue
		}
		for _, n := range needed {
			if _, seen := out[n]; seen || strings.Contains(n, "/") {
				continue
			}
			for _, d := range libDirs {
				real, err := filepath.EvalSymlinks(filepath.Join(d, n))
				if err != nil {
					continue
				}
				if st, err := os.Stat(real); err == nil && st.Mode().IsRegular() {
					out[n] = real
					queue = append(queue, real)
					break
				}
			}
		}
	}
	return out, nil
}

// preparePython makes the python image's mount targets in the shared
// root (runc would otherwise create them in it) and writes the driver.
func (s *Sandbox) preparePython(img *PythonImage) error {
	for _, m := range img.Mounts {
		t := filepath.Join(s.rootfs, m.Target)
		if m.Dir {
			if err := os.MkdirAll(t, 0o755); err != nil {
				return err
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(t), 0o755); err != nil {
			return err
		}
		f, err := os.OpenFile(t, os.O_CREATE|os.O_RDONLY, 0o644)
		if err != nil {
			return err
		}
		f.Close()
	}
	dir := filepath.Join(s.rootfs, filepath.Dir(driverPath))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tmp := filepath.Join(dir, ".driver.tmp")
	if err := os.WriteFile(tmp, pythonDriver, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(s.rootfs, driverPath))
}

// pythonMounts are the OCI mounts of the image: read-only, no devices,
// no set-uid.
func (img *PythonImage) ociMounts() []ociMount {
	out := make([]ociMount, 0, len(img.Mounts))
	for _, m := range img.Mounts {
		opts := []string{"bind", "ro", "nosuid", "nodev"}
		if m.Dir {
			opts = append(opts, "rbind")
		}
		out = append(out, ociMount{Destination: m.Target, Type: "bind", Source: m.Source, Options: opts})
	}
	return out
}
