package dust

import (
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/torbento/bento/internal/policy"
	"github.com/torbento/bento/internal/testutil"
)

var update = flag.Bool("update", false, "rewrite golden files")

func shipped(t testing.TB) *Template {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testutil.RepoRoot(), "templates", "mote.toml"))
	if err != nil {
		t.Fatal(err)
	}
	tm, err := ParseTemplate(b)
	if err != nil {
		t.Fatalf("the shipped template: %v", err)
	}
	return tm
}

var (
	start = time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	ports = Ports{OR: 5100, Control: 5101, Socks: 5102, Bento: 5103, Policy: 5104}
	rel   = Release{URL: "https://example.org/bento-0.2.tar.gz", SHA256: strings.Repeat("ab", 32)}
)

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Errorf("%s changed (go test -update if on purpose):\n%s", name, got)
	}
}

func TestShippedTemplate(t *testing.T) {
	tm := shipped(t)
	if tm.Name != "mote" || tm.Lifetime != 2*time.Hour || tm.Drain != 10*time.Minute {
		t.Fatalf("%+v", tm)
	}
	torrc := tm.RenderTorrc("/m", ports, "TestingTorNetwork 1\nDirAuthority a orport=1 v3ident=X 127.0.0.1:2 Y\n")
	bentorc := tm.RenderBentorc("/m", ports, start.Add(tm.Lifetime))
	golden(t, "torrc.golden", torrc)
	golden(t, "bentorc.golden", bentorc)
	p, err := policy.Parse("bentorc", []byte(bentorc))
	if err != nil {
		t.Fatalf("the rendered bentorc does not parse: %v", err)
	}
	if !p.Box.Announce || !p.Box.EndsAt.Equal(start.Add(2*time.Hour)) || p.Box.Drain != 10*time.Minute || !p.OnionService {
		t.Errorf("rendered box settings: %+v", p.Box)
	}
}

func TestParseTemplateErrors(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`name = "a b"` + "\nlifetime = \"1 hour\"", "name"},
		{`name = "a"` + "\nlifetime = \"10 seconds\"", "1 minute to 90 days"},
		{`name = "a"` + "\nlifetime = \"1 hour\"\ndrain = \"2 hours\"", "never take a function"},
		{`name = "a"` + "\nlifetime = \"1 hour\"\nextra = 1", "unknown key"},
		{`name = "a"` + "\nlifetime = \"1 hour\"\ntorrc = [\"DirAuthority evil\"]", "sets DirAuthority, which the mote sets itself"},
		{`name = "a"` + "\nlifetime = \"1 hour\"\ntorrc = [\"ControlPort 9051\"]", "sets ControlPort"},
		{`name = "a"` + "\nlifetime = \"1 hour\"\ntorrc = [\"%include /etc\"]", "sets %include"},
		{`name = "a"` + "\nlifetime = \"1 hour\"\ntorrc = [\"Nickname a\\nControlPort 1\"]", "one line"},
		{`name = "a"` + "\nlifetime = \"1 hour\"\nbentorc = [\"BoxEndsAt 2030-01-01T00:00:00Z\"]", "sets BoxEndsAt"},
		{`name = "a"` + "\nlifetime = \"1 hour\"\nbentorc = [\"# comment\"]", "comment"},
	} {
		if _, err := ParseTemplate([]byte(tc.in)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.in, err, tc.want)
		}
	}
}

func FuzzParseTemplate(f *testing.F) {
	b, _ := os.ReadFile(filepath.Join(testutil.RepoRoot(), "templates", "mote.toml"))
	f.Add(string(b))
	f.Add("name = \"a\"\nlifetime = \"1 hour\"\n")
	f.Fuzz(func(t *testing.T, s string) {
		tm, err := ParseTemplate([]byte(s))
		if err != nil {
			return
		}
		// What is accepted renders lines that set nothing the mote manages.
		for _, l := range append(append([]string{}, tm.Torrc...), tm.Bentorc...) {
			if strings.ContainsAny(l, "\n\r") {
				t.Fatalf("accepted a multi-line line %q", l)
			}
		}
		if tm.Drain >= tm.Lifetime || tm.Lifetime < time.Minute {
			t.Fatalf("accepted %+v", tm)
		}
	})
}

// TestCloudInit: the user-data passes cloud-init's own schema check.
func TestCloudInit(t *testing.T) {
	out, err := shipped(t).CloudInit(rel, start)
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "cloud-init.golden", out)
	for _, want := range []string{"BoxEndsAt 2026-12-02T14:00:00Z", "--on-calendar=2026-12-02 14:01:00 UTC", "sha256sum -c", "packages:\n  - tor\n  - runc"} {
		if !strings.Contains(out, want) {
			t.Errorf("user-data lacks %q", want)
		}
	}
	if _, err := shipped(t).CloudInit(Release{URL: "http://example.org/x", SHA256: rel.SHA256}, start); err == nil {
		t.Error("a plain-http release was accepted")
	}
	ci, err := exec.LookPath("cloud-init")
	testutil.Require(t, err == nil, "Debian's cloud-init (cloud-init schema)")
	f := filepath.Join(t.TempDir(), "user-data")
	if err := os.WriteFile(f, []byte(out), 0o644); err != nil {
		t.Fatal(err)
	}
	res, err := exec.Command(ci, "schema", "--config-file", f).CombinedOutput()
	if err != nil || !strings.Contains(string(res), "Valid") {
		t.Fatalf("cloud-init schema: %v\n%s", err, res)
	}
	// And the check bites: a wrong type is refused.
	bad := strings.Replace(out, "package_update: true", "package_update: sometimes", 1)
	if err := os.WriteFile(f, []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	if res, err := exec.Command(ci, "schema", "--config-file", f).CombinedOutput(); err == nil {
		t.Fatalf("cloud-init schema accepted a broken file:\n%s", res)
	}
}

// TestKubernetes: the Job and its ConfigMap decode strictly into the
// Kubernetes API's own types (k8s.io/api: unknown or mistyped fields are
// refused), and say what a Job must.
func TestKubernetes(t *testing.T) {
	tm := shipped(t)
	out, err := tm.Kubernetes(rel, "debian:trixie-slim", start)
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "kubernetes.golden", out)
	docs := strings.Split(out, "\n---\n")
	if len(docs) != 2 {
		t.Fatalf("%d documents, want a ConfigMap and a Job", len(docs))
	}
	var cm corev1.ConfigMap
	if err := yaml.UnmarshalStrict([]byte(docs[0]), &cm); err != nil {
		t.Fatalf("ConfigMap: %v", err)
	}
	var job batchv1.Job
	if err := yaml.UnmarshalStrict([]byte(docs[1]), &job); err != nil {
		t.Fatalf("Job: %v", err)
	}
	spec := job.Spec.Template.Spec
	switch {
	case cm.APIVersion != "v1" || cm.Kind != "ConfigMap" || !strings.Contains(cm.Data["bentorc"], "BoxEndsAt 2026-12-02T14:00:00Z") || cm.Data["torrc"] == "":
		t.Errorf("ConfigMap: %+v", cm)
	case job.APIVersion != "batch/v1" || job.Kind != "Job":
		t.Errorf("Job kind: %s %s", job.APIVersion, job.Kind)
	case job.Spec.ActiveDeadlineSeconds == nil || *job.Spec.ActiveDeadlineSeconds != int64(tm.Lifetime.Seconds()):
		t.Errorf("activeDeadlineSeconds %v, want the mote's lifetime %v", job.Spec.ActiveDeadlineSeconds, tm.Lifetime)
	case spec.RestartPolicy != corev1.RestartPolicyNever || len(spec.Containers) != 1 || len(spec.Volumes) != 1 || spec.Volumes[0].ConfigMap.Name != cm.Name:
		t.Errorf("pod spec: %+v", spec)
	case len(spec.Containers[0].Args) != 1 || !strings.Contains(spec.Containers[0].Args[0], "sha256sum -c"):
		t.Errorf("container: %+v", spec.Containers[0])
	}
	// The check bites: a misspelt field is refused.
	bad := strings.Replace(docs[1], "activeDeadlineSeconds", "activeDeadlineSecond", 1)
	if err := yaml.UnmarshalStrict([]byte(bad), &job); err == nil {
		t.Error("a misspelt Job field was accepted")
	}
	if _, err := tm.Kubernetes(rel, "", start); err == nil {
		t.Error("an empty image was accepted")
	}
}
