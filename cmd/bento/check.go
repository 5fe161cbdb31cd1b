package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"sort"

	"github.com/torbento/bento/client"
	"github.com/torbento/bento/internal/manifest"
	"github.com/torbento/bento/internal/runner"
)

// problem is one thing wrong with a function, located.
type problem struct {
	File string `json:"file,omitempty"`
	Line int    `json:"line,omitempty"`
	Col  int    `json:"col,omitempty"`
	Msg  string `json:"message"`
}

func (p problem) String() string {
	switch {
	case p.File == "":
		return p.Msg
	case p.Line == 0:
		return p.File + ": " + p.Msg
	case p.Col == 0:
		return fmt.Sprintf("%s:%d: %s", p.File, p.Line, p.Msg)
	}
	return fmt.Sprintf("%s:%d:%d: %s", p.File, p.Line, p.Col, p.Msg)
}

// notFunctionDir explains a directory LoadFunction could not read.
func notFunctionDir(dir string, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s is not a function directory: it has no %s (bento new NAME creates one)", dir, manifest.FileName)
	}
	return err
}

// checkDir checks a function directory offline, as a server would before
// running it: the manifest is parsed and validated, the code compiled.
// It returns the function (nil if it could not be read) and every
// problem, with paths under dir.
func checkDir(dir string) (*client.Function, []problem) {
	fn, err := client.LoadFunction(dir)
	if err != nil {
		return nil, []problem{{Msg: notFunctionDir(dir, err).Error()}}
	}
	var out []problem
	image, entry, function, memory := "starlark", "main.star", "main", int64(0)
	m, errs := manifest.ParseAll(fn.Manifest)
	for _, e := range errs {
		out = append(out, problem{File: filepath.Join(dir, manifest.FileName), Line: e.Line, Col: e.Col, Msg: e.Msg})
	}
	if m != nil {
		image, entry, function, memory = m.Image, m.Entry, m.Function, m.Resources.Memory
	}
	for _, e := range runner.Check(image, entry, function, memory, fn.Files) {
		out = append(out, problem{File: filepath.Join(dir, e.File), Line: e.Line, Col: e.Col, Msg: e.Msg})
	}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i], out[j]
		return a.File < b.File || a.File == b.File && (a.Line < b.Line || a.Line == b.Line && a.Col < b.Col)
	})
	return fn, out
}

// reportProblems prints a function's problems and returns exitProblems.
func (c *cli) reportProblems(dir string, probs []problem) int {
	msg := fmt.Sprintf("%s has %d problem(s); fix them before deploying", dir, len(probs))
	if len(probs) == 1 {
		msg = fmt.Sprintf("%s has a problem; fix it before deploying", dir)
	}
	if c.json {
		c.jsonError(exitProblems, msg, map[string]any{"problems": probs})
		return exitProblems
	}
	for _, p := range probs {
		fmt.Fprintln(c.stderr, clean(p.String()))
	}
	fmt.Fprintf(c.stderr, "bento: %s\n", msg)
	return exitProblems
}

// check is bento check DIR: the function checked offline.
func (c *cli) check(args []string) int {
	fs := c.newFlags("check", "DIR [--json]")
	c.addJSON(fs)
	pos, code, err := c.parseFlags(fs, args)
	if err != nil {
		return code
	}
	if len(pos) != 1 {
		return c.usageErr("check takes DIR, a function directory")
	}
	dir := pos[0]
	_, probs := checkDir(dir)
	if c.json {
		b, _ := json.MarshalIndent(map[string]any{"dir": dir, "ok": len(probs) == 0, "problems": nonNil(probs)}, "", "  ")
		fmt.Fprintf(c.stdout, "%s\n", b)
	}
	if len(probs) > 0 && c.json {
		// The list is the result, on stdout; stderr only says so.
		return c.errorf(exitProblems, nil, "%s has %d problem(s); fix them before deploying", dir, len(probs))
	}
	if len(probs) > 0 {
		return c.reportProblems(dir, probs)
	}
	if !c.json {
		fmt.Fprintf(c.stdout, "%s: ok (manifest valid, code compiles)\n", dir)
	}
	return exitOK
}
