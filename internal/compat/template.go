package compat

import (
	"bytes"
	"fmt"
	"maps"
	"os"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/torbento/bento/internal/manifest"
	"github.com/torbento/bento/internal/policy"
)

// Template is the operator's manifest for stored code (CompatManifest):
// everything but the name and the function, which each Execute gives.
type Template struct {
	Path  string
	doc   map[string]any
	Entry string // the file the stored code is deployed as
	Image string
}

// setByExecute are the keys each Execute sets: the operator's manifest
// must leave them out.
var setByExecute = []string{"name", "function", "mode"}

// LoadTemplate reads the operator's manifest at path and checks it
// against p as a deploy would: a manifest that does not parse or asks for
// more than p allows is refused, with every reason.
func LoadTemplate(path string, p *policy.Policy) (*Template, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("CompatManifest: %w", err)
	}
	if len(b) > manifest.MaxSize {
		return nil, fmt.Errorf("CompatManifest %s: %d bytes, more than the %d a manifest may have", path, len(b), manifest.MaxSize)
	}
	var doc map[string]any
	if err := toml.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("CompatManifest %s: %v", path, err)
	}
	for _, k := range setByExecute {
		if _, ok := doc[k]; ok {
			return nil, fmt.Errorf("CompatManifest %s: %q is set by each Execute (the stored function's name, the call's function, one-shot as the original's worker): leave it out", path, k)
		}
	}
	t := &Template{Path: path, doc: doc}
	mb, err := t.Manifest("compat", "main")
	if err != nil {
		return nil, fmt.Errorf("CompatManifest %s: %v", path, err)
	}
	m, err := manifest.Parse(mb)
	if err != nil {
		return nil, fmt.Errorf("CompatManifest %s: %v", path, err)
	}
	if m.Protect {
		return nil, fmt.Errorf("CompatManifest %s: protect = true cannot be offered to the original client (its code and output would be lost at every restart without it knowing): leave it out", path)
	}
	m.Resolve(p)
	if vs := manifest.Check(m, p); len(vs) > 0 {
		var lines []string
		for _, v := range vs {
			lines = append(lines, v.String())
		}
		return nil, fmt.Errorf("CompatManifest %s asks for more than this node's policy allows: %s (lower them in the manifest, or raise the policy)", path, strings.Join(lines, "; "))
	}
	t.Entry, t.Image = m.Entry, m.Image
	return t, nil
}

// Manifest is the manifest of one Execute: the operator's, with the
// stored function's name and the called function, one-shot.
func (t *Template) Manifest(name, function string) ([]byte, error) {
	doc := maps.Clone(t.doc)
	doc["name"] = name
	doc["function"] = function
	doc["mode"] = manifest.ModeOneShot
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(doc); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// manifestName is the stored function's name if it may name a function,
// else "compat".
func manifestName(name string) string {
	if manifest.ValidName(name) {
		return name
	}
	return "compat"
}
