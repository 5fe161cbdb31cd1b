package compat

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"unicode/utf8"

	"go.starlark.net/syntax"
)

// Bounds of a call expression (Execute's "call").
const (
	MaxCall      = 64 << 10 // bytes of the expression
	maxCallDepth = 32       // nesting of lists, tuples and dicts
	maxCallItems = 10000    // literals in all
)

// ParseCall reads the original client's call expression, Python such as
// browser('http://x', 1000000), without evaluating anything: it must be
// a call of a plain name with literal arguments (strings, integers,
// floats, True, False, None, and lists, tuples and dicts of those, dict
// keys strings). It returns the name and the arguments as JSON values.
// Anything else — attributes, nested calls, names, lambdas, operators,
// comprehensions, keyword or star arguments, bytes — is refused with what
// was found where.
func ParseCall(src string) (string, []any, error) {
	if len(src) > MaxCall {
		return "", nil, fmt.Errorf("call expression of %d bytes: at most %d", len(src), MaxCall)
	}
	if !utf8.ValidString(src) {
		return "", nil, errors.New("call expression is not valid UTF-8")
	}
	// Depth first, before the parser recurses into it.
	if d := bracketDepth(src); d > maxCallDepth {
		return "", nil, fmt.Errorf("call expression nests %d deep: at most %d", d, maxCallDepth)
	}
	// Python's eval ignores the blanks around an expression.
	e, err := (&syntax.FileOptions{}).ParseExpr("call", strings.TrimSpace(src), 0)
	if err != nil {
		return "", nil, fmt.Errorf("call expression does not parse: %v (want name(literal, ...), e.g. hello('world', 3))", trimPos(err))
	}
	call, ok := unparen(e).(*syntax.CallExpr)
	if !ok {
		return "", nil, fmt.Errorf("call expression is %s, not a call: want name(literal, ...), e.g. hello('world', 3)", describe(e))
	}
	fn, ok := unparen(call.Fn).(*syntax.Ident)
	if !ok {
		return "", nil, fmt.Errorf("call expression calls %s: only a function's plain name may be called (e.g. hello(...)), nothing else is evaluated", describe(call.Fn))
	}
	if !identRE(fn.Name) {
		return "", nil, fmt.Errorf("%q is not a function name", fn.Name)
	}
	p := &litParser{}
	args := make([]any, 0, len(call.Args))
	for i, a := range call.Args {
		if b, ok := a.(*syntax.BinaryExpr); ok && b.Op == syntax.EQ {
			return "", nil, fmt.Errorf("argument %d is a keyword argument: only positional literals are accepted", i+1)
		}
		if u, ok := a.(*syntax.UnaryExpr); ok && (u.Op == syntax.STAR || u.Op == syntax.STARSTAR) {
			return "", nil, fmt.Errorf("argument %d is a star argument: only positional literals are accepted", i+1)
		}
		v, err := p.value(a, 1)
		if err != nil {
			return "", nil, fmt.Errorf("argument %d: %w", i+1, err)
		}
		args = append(args, v)
	}
	return fn.Name, args, nil
}

func trimPos(err error) string {
	var se syntax.Error
	if errors.As(err, &se) {
		return fmt.Sprintf("column %d: %s", se.Pos.Col, se.Msg)
	}
	return err.Error()
}

func identRE(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for i, r := range s {
		if r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || i > 0 && r >= '0' && r <= '9' {
			continue
		}
		return false
	}
	return true
}

// bracketDepth is the deepest nesting of brackets in src, outside
// string literals (roughly: enough to refuse a pathological expression
// before parsing it).
func bracketDepth(src string) int {
	depth, most := 0, 0
	var quote byte
	for i := 0; i < len(src); i++ {
		c := src[i]
		if quote != 0 {
			switch c {
			case '\\':
				i++
			case quote:
				quote = 0
			}
			continue
		}
		switch c {
		case '\'', '"':
			quote = c
		case '(', '[', '{':
			depth++
			most = max(most, depth)
		case ')', ']', '}':
			depth--
		}
	}
	return most
}

func unparen(e syntax.Expr) syntax.Expr {
	for {
		p, ok := e.(*syntax.ParenExpr)
		if !ok {
			return e
		}
		e = p.X
	}
}

// describe names what an expression is, for a refusal.
func describe(e syntax.Expr) string {
	switch x := unparen(e).(type) {
	case *syntax.Ident:
		return fmt.Sprintf("the name %q", x.Name)
	case *syntax.DotExpr:
		return "an attribute access (." + x.Name.Name + ")"
	case *syntax.CallExpr:
		return "a call"
	case *syntax.LambdaExpr:
		return "a lambda"
	case *syntax.Comprehension:
		return "a comprehension"
	case *syntax.BinaryExpr:
		return "an operation (" + x.Op.String() + ")"
	case *syntax.UnaryExpr:
		return "an operation (" + x.Op.String() + ")"
	case *syntax.CondExpr:
		return "a conditional expression"
	case *syntax.IndexExpr:
		return "an index expression"
	case *syntax.SliceExpr:
		return "a slice expression"
	case *syntax.Literal:
		return "a literal"
	case *syntax.ListExpr:
		return "a list"
	case *syntax.TupleExpr:
		return "a tuple"
	case *syntax.DictExpr:
		return "a dict"
	}
	return "an expression"
}

type litParser struct{ items int }

// value converts a literal to its JSON value.
func (p *litParser) value(e syntax.Expr, depth int) (any, error) {
	if p.items++; p.items > maxCallItems {
		return nil, fmt.Errorf("more than %d literals", maxCallItems)
	}
	if depth > maxCallDepth {
		return nil, fmt.Errorf("nests deeper than %d", maxCallDepth)
	}
	switch x := unparen(e).(type) {
	case *syntax.Literal:
		return literal(x, false)
	case *syntax.UnaryExpr:
		if l, ok := unparen(x.X).(*syntax.Literal); ok && (x.Op == syntax.MINUS || x.Op == syntax.PLUS) && (l.Token == syntax.INT || l.Token == syntax.FLOAT) {
			return literal(l, x.Op == syntax.MINUS)
		}
	case *syntax.Ident:
		switch x.Name {
		case "True":
			return true, nil
		case "False":
			return false, nil
		case "None":
			return nil, nil
		}
		return nil, fmt.Errorf("%s is a name, not a literal: nothing is looked up or evaluated (quote it if it is a string)", describe(x))
	case *syntax.ListExpr:
		return p.list(x.List, depth)
	case *syntax.TupleExpr:
		return p.list(x.List, depth)
	case *syntax.DictExpr:
		m := make(map[string]any, len(x.List))
		for _, it := range x.List {
			ent := it.(*syntax.DictEntry)
			k, ok := unparen(ent.Key).(*syntax.Literal)
			if !ok || k.Token != syntax.STRING {
				return nil, fmt.Errorf("a dict key is %s: only string keys are accepted", describe(ent.Key))
			}
			v, err := p.value(ent.Value, depth+1)
			if err != nil {
				return nil, err
			}
			m[k.Value.(string)] = v
		}
		return m, nil
	}
	return nil, fmt.Errorf("%s is not a literal: only strings, numbers, True, False, None and lists, tuples and dicts of them are accepted (nothing is evaluated)", describe(e))
}

func (p *litParser) list(l []syntax.Expr, depth int) (any, error) {
	out := make([]any, 0, len(l))
	for _, e := range l {
		v, err := p.value(e, depth+1)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

func literal(l *syntax.Literal, neg bool) (any, error) {
	switch l.Token {
	case syntax.STRING:
		s := l.Value.(string)
		if !utf8.ValidString(s) {
			return nil, errors.New("a string literal is not valid UTF-8 (its escapes make bytes)")
		}
		return s, nil
	case syntax.BYTES:
		return nil, errors.New("a bytes literal (b'...') cannot be passed: pass a str")
	case syntax.INT:
		n, ok := l.Value.(int64)
		if !ok || n > 1<<53 || n < -(1<<53) {
			return nil, fmt.Errorf("integer %s is beyond ±2^53, what every JSON reader keeps exactly", abbreviate(l.Raw))
		}
		if neg {
			n = -n
		}
		return n, nil
	case syntax.FLOAT:
		f := l.Value.(float64)
		if math.IsInf(f, 0) || math.IsNaN(f) {
			return nil, fmt.Errorf("float %s is out of range", abbreviate(l.Raw))
		}
		if neg {
			f = -f
		}
		return f, nil
	}
	return nil, errors.New("unknown literal")
}

func abbreviate(s string) string {
	if len(s) > 24 {
		return s[:20] + "…"
	}
	return strings.TrimSpace(s)
}
