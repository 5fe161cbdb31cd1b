package main

import (
	"embed"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/torbento/bento/internal/manifest"
)

// templates are the functions bento new starts from; __NAME__ in a file
// becomes the new function's name.
//
//go:embed templates
var templates embed.FS

// templateNames lists the templates, sorted.
func templateNames() []string {
	ents, _ := templates.ReadDir("templates")
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	sort.Strings(out)
	return out
}

// newCmd is bento new NAME [--template T]: a function directory made
// from a template, ready to check and run.
func (c *cli) newCmd(args []string) int {
	fs := c.newFlags("new", "NAME [--template "+strings.Join(templateNames(), "|")+"]")
	tmpl := fs.String("template", "hello", "the template: hello (send a greeting), echo (session input: recv), dropbox (storage, a service)")
	pos, code, err := c.parseFlags(fs, args)
	if err != nil {
		return code
	}
	if len(pos) != 1 {
		return c.usageErr("new takes NAME, the directory to create (its last element names the function)")
	}
	dir := pos[0]
	name := filepath.Base(filepath.Clean(dir))
	if !manifest.ValidName(name) {
		return c.errorf(exitUsage, nil, "%q cannot name a function: want 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit", name)
	}
	root := path.Join("templates", *tmpl)
	files, err := templates.ReadDir(root)
	if err != nil || *tmpl == "" || strings.ContainsAny(*tmpl, "/.") {
		return c.errorf(exitUsage, nil, "no template %q: choose one of %s", *tmpl, strings.Join(templateNames(), ", "))
	}
	if ents, err := os.ReadDir(dir); err == nil && len(ents) > 0 {
		return c.errorf(exitUsage, nil, "%s already exists and is not empty: bento new writes only into a new or empty directory; choose another NAME or remove it first", dir)
	} else if err != nil && !os.IsNotExist(err) {
		return c.errorf(exitUsage, nil, "%v", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return c.errorf(exitUsage, nil, "%v", err)
	}
	var made []string
	for _, f := range files {
		b, err := readTemplate(path.Join(root, f.Name()))
		if err != nil {
			return c.errorf(exitServer, nil, "%v", err)
		}
		b = []byte(strings.ReplaceAll(string(b), "__NAME__", name))
		p := filepath.Join(dir, f.Name())
		// O_EXCL: a file that appeared meanwhile is not overwritten.
		out, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			return c.errorf(exitUsage, nil, "%v", err)
		}
		_, err = out.Write(b)
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return c.errorf(exitUsage, nil, "%v", err)
		}
		made = append(made, p)
	}
	fmt.Fprintf(c.stdout, "created %s from the %s template: %s\nnext: bento check %s, then bento run SERVER %s\n", dir, *tmpl, strings.Join(made, ", "), dir, dir)
	return exitOK
}

func readTemplate(name string) ([]byte, error) { return fs.ReadFile(templates, name) }
