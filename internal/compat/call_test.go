package compat

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseCallAccepted(t *testing.T) {
	for _, tc := range []struct {
		src  string
		name string
		args []any
	}{
		{"hello()", "hello", []any{}},
		{"continuousInput()", "continuousInput", []any{}},
		{"browser('http://x', 1000000)", "browser", []any{"http://x", int64(1000000)}},
		{`f("a\nb", -3, +2, 1.5, -0.25, True, False, None)`, "f", []any{"a\nb", int64(-3), int64(2), 1.5, -0.25, true, false, nil}},
		{"f([1, 'a'], (2, 3), {'k': [None]}, ())", "f", []any{[]any{int64(1), "a"}, []any{int64(2), int64(3)}, map[string]any{"k": []any{nil}}, []any{}}},
		{"  (f)(1)  ", "f", []any{int64(1)}},
		{"f((1))", "f", []any{int64(1)}},
		{"f('''triple''', r'\\d')", "f", []any{"triple", `\d`}},
		{"f(0x10, 1e3)", "f", []any{int64(16), 1000.0}},
		{"f('é')", "f", []any{"é"}},
		{"proxy('1.2.3.4', 80,)", "proxy", []any{"1.2.3.4", int64(80)}},
	} {
		name, args, err := ParseCall(tc.src)
		if err != nil {
			t.Errorf("%s: %v", tc.src, err)
			continue
		}
		if name != tc.name || !reflect.DeepEqual(args, tc.args) {
			t.Errorf("%s: got %s %#v, want %s %#v", tc.src, name, args, tc.name, tc.args)
		}
	}
}

func TestParseCallRefused(t *testing.T) {
	deep := strings.Repeat("[", 40) + strings.Repeat("]", 40)
	for _, tc := range []struct {
		src, want string
	}{
		{"os.system('rm -rf /')", "attribute access"},
		{"__import__('os').system('id')", "attribute access"},
		{"f(g())", "a call is not a literal"},
		{"f(lambda: 1)", "a lambda is not a literal"},
		{"(lambda: 1)()", "calls a lambda"},
		{"f(x)", `the name "x" is a name`},
		{"f(open)", `the name "open"`},
		{"f(1 + 2)", "operation"},
		{"f(-x)", "operation"},
		{"f([i for i in y])", "comprehension"},
		{"f(a=1)", "keyword argument"},
		{"f(*a)", "star argument"},
		{"f(**a)", "star argument"},
		{"f(b'x')", "bytes literal"},
		{"f({1: 2})", "only string keys"},
		{"f('a'[0])", "index expression"},
		{"f(1 if True else 2)", "conditional"},
		{"f", "not a call"},
		{"1", "not a call"},
		{"f(1); g(2)", "does not parse"},
		{"f(1)\ng(2)", "does not parse"},
		{"f(f'{x}')", "does not parse"},
		{"f(", "does not parse"},
		{"", "does not parse"},
		{"f(99999999999999999999999)", "beyond"},
		{"f(1e999)", "invalid float"},
		{"f(" + deep + ")", "nests"},
		{"f('" + strings.Repeat("a", MaxCall) + "')", "bytes: at most"},
		{"f(" + strings.Repeat("1,", 10001) + ")", "literals"},
		{"f('\\xff')", "UTF-8"},
		{"a.b.c(1)", "attribute access"},
		{"f()()", "calls a call"},
		{"f(x=os.system('id'))", "keyword argument"},
	} {
		_, _, err := ParseCall(tc.src)
		if err == nil {
			t.Errorf("%.60s: accepted", tc.src)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%.60s: %v, want it to say %q", tc.src, err, tc.want)
		}
	}
}

func FuzzParseCall(f *testing.F) {
	for _, s := range []string{"f()", "browser('http://x', 1000000)", "f([1, {'a': None}], -1.5)", "os.system('x')", "f(lambda: 1)"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, src string) {
		name, args, err := ParseCall(src)
		if err != nil {
			return
		}
		if !identRE(name) {
			t.Fatalf("accepted name %q", name)
		}
		var walk func(v any, d int)
		walk = func(v any, d int) {
			if d > maxCallDepth+1 {
				t.Fatalf("depth %d", d)
			}
			switch x := v.(type) {
			case nil, bool, int64, float64, string:
			case []any:
				for _, e := range x {
					walk(e, d+1)
				}
			case map[string]any:
				for _, e := range x {
					walk(e, d+1)
				}
			default:
				t.Fatalf("value of type %T", v)
			}
		}
		walk(args, 0)
	})
}
