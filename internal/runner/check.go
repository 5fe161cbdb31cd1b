package runner

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"go.starlark.net/resolve"
	"go.starlark.net/starlark"
	"go.starlark.net/syntax"

	"github.com/torbento/bento/internal/proto"
)

// Check compiles a function's code without running it, as load would:
// every Starlark file of the bundle (each .star file, and the entry
// whatever its name) is parsed and resolved with the names the runner
// predeclares, and the entry must define the function and every load()
// must name a file of the bundle and what that file defines. It returns
// every problem it finds, each located by file, line and column: the
// first syntax error of each file, and every resolve error. Nothing is
// executed, so errors only a run can show (a wrong type, a failed call)
// are not found.
//
// For the wasm image, the entry module is compiled and checked instead, as
// the runner does before it runs it (loadWasm), under the linear-memory
// bound of a memory resource of memory bytes. For the python image, every
// .py file is compiled by the local python3 when there is one
// (checkPython).
func Check(image, entry, function string, memory int64, files map[string][]byte) []*proto.FuncError {
	if image == ImagePython {
		return checkPython(entry, function, files)
	}
	if image == ImageWasm {
		code, ok := files[entry]
		if !ok {
			return []*proto.FuncError{{File: entry, Msg: fmt.Sprintf("the entry module %s is not in the function directory: build it (GOOS=wasip1 GOARCH=wasm go build -o %s .) or set \"entry\" in bento.toml", entry, entry)}}
		}
		w, fe := compileWasm(context.Background(), entry, function, code, WasmPages(memory))
		if fe != nil {
			return []*proto.FuncError{fe}
		}
		w.rt.Close(context.Background())
		return nil
	}
	var names []string
	for name := range files {
		if strings.HasSuffix(name, ".star") || name == entry {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	var out []*proto.FuncError
	if _, ok := files[entry]; !ok {
		out = append(out, &proto.FuncError{File: entry, Msg: fmt.Sprintf("the entry file %s is not in the function directory (set \"entry\" in bento.toml)", entry)})
	}
	parsed := map[string]*syntax.File{}
	for _, name := range names {
		f, err := fileOptions.Parse(name, files[name], 0)
		if err != nil {
			out = append(out, funcError(err))
			continue
		}
		parsed[name] = f
		if err := resolve.File(f, isPredeclared, starlark.Universe.Has); err != nil {
			if list, ok := err.(resolve.ErrorList); ok {
				for _, e := range list {
					out = append(out, located(e.Pos, e.Msg))
				}
			} else {
				out = append(out, &proto.FuncError{File: name, Msg: err.Error()})
			}
		}
	}
	// What each file defines at top level, and what it loads.
	for _, name := range names {
		f := parsed[name]
		if f == nil {
			continue
		}
		for _, stmt := range f.Stmts {
			ld, ok := stmt.(*syntax.LoadStmt)
			if !ok {
				continue
			}
			mod := ld.ModuleName()
			target, ok := parsed[mod]
			if _, exists := files[mod]; !exists {
				out = append(out, located(ld.Module.TokenPos, fmt.Sprintf("load(%q): no such file in the function directory", mod)))
				continue
			}
			if !ok {
				continue // its own errors are reported
			}
			defined := topLevel(target)
			for i, from := range ld.From {
				if !defined[from.Name] {
					out = append(out, located(ld.To[i].NamePos, fmt.Sprintf("load(%q, %q): %s does not define %q", mod, from.Name, mod, from.Name)))
				}
			}
		}
	}
	if f := parsed[entry]; f != nil && !topLevel(f)[function] {
		out = append(out, &proto.FuncError{File: entry, Msg: fmt.Sprintf("no function %q defined (set \"function\" in bento.toml)", function)})
	}
	return out
}

func located(pos syntax.Position, msg string) *proto.FuncError {
	return &proto.FuncError{File: pos.Filename(), Line: int(pos.Line), Col: int(pos.Col), Msg: msg}
}

// topLevel returns the names a file binds at top level: what it defines,
// assigns and loads.
func topLevel(f *syntax.File) map[string]bool {
	out := map[string]bool{}
	var bind func(e syntax.Expr)
	bind = func(e syntax.Expr) {
		switch e := e.(type) {
		case *syntax.Ident:
			out[e.Name] = true
		case *syntax.TupleExpr:
			for _, x := range e.List {
				bind(x)
			}
		case *syntax.ListExpr:
			for _, x := range e.List {
				bind(x)
			}
		case *syntax.ParenExpr:
			bind(e.X)
		}
	}
	var walk func(stmts []syntax.Stmt)
	walk = func(stmts []syntax.Stmt) {
		for _, s := range stmts {
			switch s := s.(type) {
			case *syntax.DefStmt:
				out[s.Name.Name] = true
			case *syntax.AssignStmt:
				bind(s.LHS)
			case *syntax.LoadStmt:
				for _, to := range s.To {
					out[to.Name] = true
				}
			case *syntax.ForStmt: // top-level control flow binds globals too
				bind(s.Vars)
				walk(s.Body)
			case *syntax.IfStmt:
				walk(s.True)
				walk(s.False)
			case *syntax.WhileStmt:
				walk(s.Body)
			}
		}
	}
	walk(f.Stmts)
	return out
}

// predeclaredNames are the names every function file sees.
var predeclaredNames = (&Runner{}).predeclared()

func isPredeclared(name string) bool { _, ok := predeclaredNames[name]; return ok }
