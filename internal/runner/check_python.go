package runner

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sort"
	"strings"
	"time"

	"github.com/torbento/bento/internal/proto"
)

// ImagePython is the image whose functions are Python modules run by
// Debian's CPython (docs/python.md); bentod runs them with its driver,
// not with bento-runner.
const ImagePython = "python"

// pythonChecker compiles every .py file it is given (a JSON object of
// names and sources on stdin) without running any, and checks that the
// entry defines the function at top level; it prints a JSON list of
// problems.
const pythonChecker = `import ast, json, sys
req = json.load(sys.stdin)
out = []
for name in sorted(req["files"]):
    src = req["files"][name]
    try:
        tree = compile(src, name, "exec", ast.PyCF_ONLY_AST, dont_inherit=True)
        compile(tree, name, "exec", dont_inherit=True)
    except SyntaxError as e:
        out.append({"file": name, "line": e.lineno or 0, "col": e.offset or 0, "msg": "%s: %s" % (type(e).__name__, e.msg)})
        continue
    except ValueError as e:
        out.append({"file": name, "msg": str(e)})
        continue
    if name == req["entry"]:
        defined = set()
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defined.add(node.name)
            elif isinstance(node, ast.Assign):
                defined.update(t.id for t in node.targets if isinstance(t, ast.Name))
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                defined.update((a.asname or a.name).split(".")[0] for a in node.names)
        if req["function"] not in defined:
            out.append({"file": name, "msg": "no function %r defined at top level (set \"function\" in bento.toml)" % req["function"]})
json.dump(out, sys.stdout)
`

// PythonForCheck is the interpreter bento check compiles python
// functions with: Debian's, as bentod runs them.
var PythonForCheck = "/usr/bin/python3"

// checkPython compiles a python function's files with the local python3
// (without running them), when there is one: every syntax error with its
// file and line, and a missing function. Without python3 it checks only
// that the entry is there.
func checkPython(entry, function string, files map[string][]byte) []*proto.FuncError {
	if _, ok := files[entry]; !ok {
		return []*proto.FuncError{{File: entry, Msg: fmt.Sprintf("the entry file %s is not in the function directory (set \"entry\" in bento.toml)", entry)}}
	}
	if _, err := os.Stat(PythonForCheck); err != nil {
		return nil
	}
	src := map[string]string{}
	var names []string
	for name, b := range files {
		if strings.HasSuffix(name, ".py") || name == entry {
			src[name] = string(b)
			names = append(names, name)
		}
	}
	sort.Strings(names)
	req, _ := json.Marshal(map[string]any{"files": src, "entry": entry, "function": function})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, PythonForCheck, "-I", "-S", "-B", "-c", pythonChecker)
	cmd.Stdin = bytes.NewReader(req)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return []*proto.FuncError{{Msg: "checking with python3: " + err.Error()}}
	}
	if err := cmd.Start(); err != nil {
		return []*proto.FuncError{{Msg: "checking with python3: " + err.Error()}}
	}
	out, _ := io.ReadAll(io.LimitReader(stdout, 1<<20))
	if err := cmd.Wait(); err != nil {
		return []*proto.FuncError{{Msg: fmt.Sprintf("checking with %s: %v: %s", PythonForCheck, err, strings.TrimSpace(stderr.String()))}}
	}
	var errs []*proto.FuncError
	if err := json.Unmarshal(out, &errs); err != nil {
		return []*proto.FuncError{{Msg: fmt.Sprintf("checking with %s: unreadable answer: %v", PythonForCheck, err)}}
	}
	for _, e := range errs {
		e.Truncate()
	}
	return errs
}
