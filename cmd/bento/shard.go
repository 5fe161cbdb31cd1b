package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/torbento/bento/client"
	"github.com/torbento/bento/functions"
	"github.com/torbento/bento/internal/atomicfile"
	"github.com/torbento/bento/internal/manifest"
	"github.com/torbento/bento/internal/shard"
	"github.com/torbento/bento/internal/units"
	"github.com/torbento/bento/internal/wire"
)

const shardUsage = `usage:
  bento shard put FILE (--boxes SERVER,SERVER,... | --choose) [-n N] [-k K] [-o MANIFEST] [--lifetime DUR] [--function DIR] [--json]
                    encrypt FILE and spread it over N Dropbox instances on N different boxes, any K of
                    which rebuild it; writes the manifest (the key and the tokens: keep it secret) to
                    MANIFEST (default FILE.shard, mode 0600), or prints it with --json
                    -n defaults to the number of --boxes (3 with --choose), -k to a majority (N/2+1)
  bento shard get MANIFEST -o OUT [--json]   fetch the shares, check each, rebuild the file (- : stdout)
  bento shard rm  MANIFEST                   shut down every share's Dropbox instance

A box's share is ciphertext (or a Reed-Solomon combination of it): no box, and no K-1 of them, can
read the file; the key is only in the manifest. --choose picks the boxes from the directory
(as run --choose does: --tor-socks before the command, --tor-control, --tor-cookie).
Commands take --timeout DURATION for each request (default 60s).
`

func (c *cli) shard(args []string) int {
	if len(args) == 0 {
		fmt.Fprint(c.stderr, shardUsage)
		return exitUsage
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		fmt.Fprint(c.stdout, shardUsage)
		return exitOK
	case "put":
		return c.shardPut(args[1:])
	case "get":
		return c.shardGet(args[1:])
	case "rm":
		return c.shardRm(args[1:])
	}
	fmt.Fprintf(c.stderr, "bento: unknown shard command %q\n\n%s", args[0], shardUsage)
	return exitUsage
}

// dropboxFunction is the Dropbox each share goes to: dir's, or the one
// bento carries (functions/dropbox), with its lifetime replaced if asked.
func dropboxFunction(dir, lifetime string) (*client.Function, error) {
	var fn *client.Function
	if dir != "" {
		f, err := client.LoadFunction(dir)
		if err != nil {
			return nil, notFunctionDir(dir, err)
		}
		fn = f
	} else {
		fn = &client.Function{Files: map[string][]byte{}}
		for _, name := range []string{"bento.toml", "main.star"} {
			b, err := fs.ReadFile(functions.Dropbox, "dropbox/"+name)
			if err != nil {
				return nil, err
			}
			if name == "bento.toml" {
				fn.Manifest = b
			} else {
				fn.Files[name] = b
			}
		}
	}
	if lifetime != "" {
		if _, err := units.ParseDuration(lifetime); err != nil {
			return nil, fmt.Errorf("--lifetime: %v", err)
		}
		var doc map[string]any
		if err := toml.Unmarshal(fn.Manifest, &doc); err != nil {
			return nil, fmt.Errorf("%s: %w", manifest.FileName, err)
		}
		res, _ := doc["resources"].(map[string]any)
		if res == nil {
			res = map[string]any{}
		}
		res["lifetime"] = lifetime
		doc["resources"] = res
		var buf bytes.Buffer
		if err := toml.NewEncoder(&buf).Encode(doc); err != nil {
			return nil, err
		}
		fn.Manifest = buf.Bytes()
	}
	return fn, nil
}

// placed is one share's deploy and put, or why it failed.
type placed struct {
	i   int
	d   *client.Deployed
	at  time.Time // when the Dropbox was deployed
	err error
}

// shardUntil is when the file can no longer be rebuilt, as the boxes
// granted the Dropboxes' lifetimes: when the k-th share to last ends
// (zero if a box did not say).
func shardUntil(ps []placed, k int) time.Time {
	var ends []time.Time
	for _, p := range ps {
		var r struct {
			Lifetime time.Duration `json:"lifetime_ns"`
		}
		if p.d == nil || json.Unmarshal(p.d.Resources, &r) != nil || r.Lifetime <= 0 {
			return time.Time{}
		}
		ends = append(ends, p.at.Add(r.Lifetime))
	}
	if k < 1 || k > len(ends) {
		return time.Time{}
	}
	sort.Slice(ends, func(a, b int) bool { return ends[a].After(ends[b]) })
	return ends[k-1]
}

func (c *cli) shardPut(args []string) int {
	fs := c.newFlags("shard put", "FILE (--boxes SERVER,... | --choose) [-n N] [-k K] [-o MANIFEST] [--lifetime DUR] [--function DIR] [--json] [--timeout DURATION]")
	var boxes destFlag
	fs.Var(&boxes, "boxes", "the servers to place the shares on, one share each (comma-separated, or the flag repeated)")
	choose := fs.Bool("choose", false, "choose the boxes from the directory instead")
	n := fs.Int("n", 0, "shares to place, each on a box of its own (default: the number of --boxes, 3 with --choose)")
	k := fs.Int("k", 0, "shares that rebuild the file (default: a majority, n/2+1)")
	out := fs.String("o", "", "write the manifest here (default FILE.shard; with --json, printed instead unless -o is given)")
	lifetime := fs.String("lifetime", "", "each Dropbox instance's lifetime, replacing the Dropbox manifest's (e.g. 1h; the boxes' policies must allow it)")
	fnDir := fs.String("function", "", "the Dropbox function directory to deploy (default: the one bento carries, functions/dropbox)")
	tf := addTorControlFlags(fs)
	c.addJSON(fs)
	c.addTimeout(fs)
	pos, code, err := c.parseFlags(fs, args)
	if err != nil {
		return code
	}
	if len(pos) != 1 {
		return c.usageErr("shard put takes FILE (--boxes SERVER,... | --choose)")
	}
	if *choose == (len(boxes) > 0) {
		return c.usageErr("shard put takes --boxes SERVER,SERVER,... or --choose (one of them)")
	}
	if *n == 0 {
		*n = len(boxes)
		if *choose {
			*n = 3
		}
	}
	if *k == 0 {
		*k = *n/2 + 1
	}
	file := pos[0]
	manifestPath := *out
	if manifestPath == "" && !c.json {
		manifestPath = file + ".shard"
	}
	if manifestPath != "" {
		if _, err := os.Lstat(manifestPath); err == nil {
			return c.errorf(exitUsage, nil, "%s already exists: bento does not overwrite a shard manifest (it may be the only key to a file); give -o", manifestPath)
		}
	}
	var servers []string
	seen := map[string]int{}
	for i, b := range boxes {
		s := serverAddr(b)
		key := shard.BoxKey(s)
		if j, dup := seen[key]; dup {
			return c.errorf(exitUsage, nil, "--boxes names %s twice (as box %d and %d): each share must go to a box of its own", clean(key), j+1, i+1)
		}
		seen[key] = i
		servers = append(servers, s)
	}
	if !*choose && len(servers) != *n {
		return c.errorf(exitUsage, nil, "%d shares (-n) need %d different boxes, and --boxes names %d", *n, *n, len(servers))
	}
	fn, err := dropboxFunction(*fnDir, *lifetime)
	if err != nil {
		return c.errorf(exitUsage, nil, "%v", err)
	}
	st, err := os.Stat(file)
	if err != nil {
		return c.errorf(exitUsage, nil, "%v", err)
	}
	if !st.Mode().IsRegular() || st.Size() > shard.MaxSize {
		return c.errorf(exitUsage, nil, "%s: want a regular file of at most 1 GiB", file)
	}
	// The limits are checked on the file's size before it is read: a file
	// too large for the Dropbox is refused without holding it in memory.
	shareSize, err := shard.Plan(st.Size(), *n, *k)
	if err != nil {
		return c.errorf(exitUsage, nil, "%v", err)
	}
	if dm, err := manifest.Parse(fn.Manifest); err == nil {
		// The Dropbox keeps its data under a key of its own beside its
		// metadata, and returns it as its output.
		if room := min(dm.Resources.Storage-1024, dm.Resources.Output); dm.Resources.Storage > 0 && dm.Resources.Output > 0 && shareSize > room {
			return c.errorf(exitUsage, nil, "each share would be %s, and the Dropbox holds at most %s: give a larger -k (shares are the file's size / k), or --function a Dropbox with more storage and output", size(shareSize), size(room))
		}
	}
	data, err := readAtMost(file, st.Size(), shard.MaxSize)
	if err != nil {
		return c.errorf(exitUsage, nil, "%v", err)
	}
	m, shares, err := shard.Split(data, filepath.Base(file), *n, *k, nil)
	if err != nil {
		return c.errorf(exitUsage, nil, "%s: %v", file, err)
	}
	if m.ShareSize != shareSize {
		return c.errorf(exitUsage, nil, "%s changed while it was read: try again once nothing writes to it", file)
	}
	if *choose {
		dir, done, code := c.directory(tf)
		if dir == nil {
			return code
		}
		got, err := dir.ChooseN(c.ctx, fn, *n)
		done()
		if err != nil {
			if c.ctx.Err() != nil {
				return c.interrupted("nothing was placed")
			}
			return c.errorf(exitRefused, nil, "%v", err)
		}
		for _, b := range got {
			servers = append(servers, b.Addr())
			if !c.json {
				fmt.Fprintf(c.stderr, "bento: chose box %s beside relay %s (%s)\n", b.Addr(), clean(b.Relay.Nickname), b.Relay.Fingerprint)
			}
		}
	}
	// Every share at once: deploy a Dropbox, put the share.
	results := make(chan placed, *n)
	for i := range *n {
		sum := m.Shares[i].SHA256
		go func() {
			cl := c.client(servers[i])
			d, err := cl.Deploy(c.ctx, fn)
			if err != nil {
				results <- placed{i: i, err: err}
				return
			}
			at := time.Now()
			// The answer goes into the manifest: one that could not is
			// this share's failure, before the share is sent.
			s := shard.Share{Index: i, Server: servers[i], Instance: d.Instance, InvocationToken: d.InvocationToken, ShutdownToken: d.ShutdownToken, SHA256: sum}
			if err := s.Valid(i); err != nil {
				results <- placed{i, d, at, fmt.Errorf("the box's answer to the deploy cannot go into a manifest: %v", err)}
				return
			}
			ctx, cancel := context.WithTimeout(c.ctx, shareTimeout(cl, m.ShareSize))
			defer cancel()
			// The answer is one short line: a box that sends more is cut
			// off, not gathered.
			cl.MaxOutput = maxPutAnswer
			got, err := cl.CallWithInput(ctx, d.InvocationToken, shares[i], "put")
			if errors.Is(err, client.ErrOutputTooLarge) {
				err = fmt.Errorf("the Dropbox answered the put with more than %s: it is not a Dropbox that stores a share", size(maxPutAnswer))
			}
			if err == nil && string(got) != fmt.Sprintf("stored %d bytes\n", len(shares[i])) {
				err = fmt.Errorf("the Dropbox answered %q to the put, not that it stored the share's %d bytes", clean(string(got)), len(shares[i]))
			}
			results <- placed{i, d, at, err}
		}()
	}
	var failed, ok []placed
	deployed := make([]*client.Deployed, *n)
	for range *n {
		p := <-results
		deployed[p.i] = p.d
		if p.err != nil {
			failed = append(failed, p)
			continue
		}
		ok = append(ok, p)
		m.Shares[p.i].Server, m.Shares[p.i].Instance = servers[p.i], p.d.Instance
		m.Shares[p.i].InvocationToken, m.Shares[p.i].ShutdownToken = p.d.InvocationToken, p.d.ShutdownToken
		if !c.json {
			fmt.Fprintf(c.stderr, "bento: share %d (%s) stored on %s\n", p.i, size(m.ShareSize), servers[p.i])
		}
	}
	// undo shuts down what was placed: a file placed in part is no file.
	// Every box at once, each within its request's time (--timeout), and
	// after a Ctrl-C too: one box that stalls leaves no other's share
	// behind.
	undo := func() string {
		why := make([]string, *n)
		var wg sync.WaitGroup
		for i, d := range deployed {
			if d == nil {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := c.client(servers[i]).Shutdown(context.Background(), d.ShutdownToken); err != nil && !client.IsCode(err, client.CodeNotFound) {
					why[i] = fmt.Sprintf("%s (instance %s: %s; it ends when its lifetime does)", clean(servers[i]), clean(d.Instance), clean(shareErr(err)))
				}
			}()
		}
		wg.Wait()
		var left []string
		for _, w := range why {
			if w != "" {
				left = append(left, w)
			}
		}
		if len(left) > 0 {
			return "shutting down the shares placed failed on " + strings.Join(left, ", ")
		}
		return "the shares placed were shut down"
	}
	if len(failed) > 0 {
		after := undo()
		if c.ctx.Err() != nil {
			return c.interrupted(after)
		}
		sort.Slice(failed, func(a, b int) bool { return failed[a].i < failed[b].i })
		if c.json {
			// One JSON object on stderr: the first failure, with every
			// share's and what became of those placed.
			why := map[string]string{}
			for _, p := range failed {
				why[fmt.Sprint(p.i)] = shareErr(p.err)
			}
			c.jsonExtra = map[string]any{"shares_failed": why, "placed": after}
			return c.fail(failed[0].err, "")
		}
		for _, p := range failed[1:] {
			fmt.Fprintf(c.stderr, "bento: share %d on %s: %s\n", p.i, clean(servers[p.i]), clean(shareErr(p.err)))
		}
		fmt.Fprintf(c.stderr, "bento: %d of the %d shares could not be placed; %s. Share %d on %s:\n", len(failed), *n, after, failed[0].i, clean(servers[failed[0].i]))
		return c.fail(failed[0].err, "")
	}
	b, err := m.Marshal()
	if err != nil {
		return c.errorf(exitServer, nil, "the manifest: %v; %s", err, undo())
	}
	if manifestPath != "" {
		// Never over a file: one that came to exist since the check above
		// (another put to the same -o, say) may be the only key to a file.
		if err := atomicfile.WriteNew(manifestPath, b, 0o600); err != nil {
			if errors.Is(err, os.ErrExist) {
				return c.errorf(exitUsage, nil, "%s was created while the shares were placed, and bento does not overwrite a shard manifest; %s: put again with another -o", manifestPath, undo())
			}
			return c.errorf(exitUsage, nil, "writing the manifest: %v; %s", err, undo())
		}
	}
	until := shardUntil(ok, m.K)
	if c.json {
		if manifestPath == "" {
			c.stdout.Write(b)
			return exitOK
		}
		res := map[string]any{"manifest": manifestPath, "n": m.N, "k": m.K, "size": m.Size, "share_size": m.ShareSize, "servers": servers}
		if !until.IsZero() {
			res["until"] = until.UTC().Format(time.RFC3339)
		}
		j, _ := json.Marshal(res)
		fmt.Fprintf(c.stdout, "%s\n", j)
		return exitOK
	}
	fmt.Fprintf(c.stdout, "%s: %s in %d shares of %s on %d boxes; any %d rebuild it (bento shard get %s -o FILE). The manifest holds the key and the tokens: keep it secret.\n",
		manifestPath, clean(m.Name), m.N, size(m.ShareSize), m.N, m.K, manifestPath)
	if !until.IsZero() {
		// A share lasts as long as its Dropbox: 10 minutes for the shipped
		// one, which a user who thinks the file kept must hear.
		fmt.Fprintf(c.stdout, "The shares last as long as their Dropboxes: the file can be rebuilt until %s (%s from now; --lifetime for longer, as the boxes allow; bento shard rm %s ends them sooner).\n",
			until.Local().Format(time.RFC3339), time.Until(until).Round(time.Second), manifestPath)
	}
	return exitOK
}

// maxFrameHeader is room for a frame's header beside its body, in a
// share's get (an output, a notice, the exit).
const maxFrameHeader = 64 << 10

// maxPutAnswer bounds a Dropbox's answer to a put ("stored N bytes").
const maxPutAnswer = 1 << 10

// shareRate is the slowest a share may move: a box slower than that
// (or one that stalls) is given up, so that no box holds a put or a get
// for ever.
const shareRate = 20 << 10 // bytes a second

// shareTimeout bounds one share's put or get: the request's time, and
// the share's bytes at shareRate.
func shareTimeout(cl *client.Client, n int64) time.Duration {
	return cl.Timeout + time.Duration(n/shareRate+1)*time.Second
}

// readAtMost reads a file of size bytes into a buffer of that size, but
// at most max+1 bytes of it (one that grows beyond max meanwhile is cut
// there, and Split refuses it).
func readAtMost(path string, size, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	buf := bytes.NewBuffer(make([]byte, 0, min(size, max)+bytes.MinRead))
	_, err = buf.ReadFrom(io.LimitReader(f, max+1))
	return buf.Bytes(), err
}

// readShardManifest reads and checks a manifest file.
func readShardManifest(path string) (*shard.Manifest, error) {
	// A pipe or a device would hold bento (opening a pipe waits for a
	// writer), or feed it for ever.
	if st, err := os.Stat(path); err != nil {
		return nil, err
	} else if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a shard manifest: want a regular file", path)
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, shard.MaxManifest+1))
	if err != nil {
		return nil, err
	}
	m, err := shard.Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	return m, nil
}

// fetched is one share as its box returned it, or why not.
type fetched struct {
	i    int
	data []byte
	err  error
}

func (c *cli) shardGet(args []string) int {
	fs := c.newFlags("shard get", "MANIFEST -o OUT [--json] [--timeout DURATION]")
	out := fs.String("o", "", "write the rebuilt file here (- for standard output)")
	c.addJSON(fs)
	c.addTimeout(fs)
	pos, code, err := c.parseFlags(fs, args)
	if err != nil {
		return code
	}
	if len(pos) != 1 || *out == "" {
		return c.usageErr("shard get takes MANIFEST -o OUT")
	}
	m, err := readShardManifest(pos[0])
	if err != nil {
		return c.errorf(exitUsage, nil, "%v", err)
	}
	if *out != "-" {
		if a, err := os.Stat(pos[0]); err == nil {
			if b, err := os.Stat(*out); err == nil && os.SameFile(a, b) {
				return c.errorf(exitUsage, nil, "-o %s is the manifest: the file would replace the only copy of its key and tokens; give another -o", *out)
			}
		}
	}
	// Every box at once; once k good shares are in, the rest are not
	// waited for.
	ctx, cancel := context.WithCancel(c.ctx)
	defer cancel()
	results := make(chan fetched, m.N)
	for i, s := range m.Shares {
		go func() {
			cl := c.client(s.Server)
			cl.MaxOutput = m.ShareSize
			// No frame is larger than the share and its header either: a
			// box cannot make bento read 32 MB for a share of 100 bytes.
			if f := m.ShareSize + maxFrameHeader; f < wire.DefaultMaxFrame {
				cl.MaxFrame = int(f)
			}
			ctx, cancel := context.WithTimeout(ctx, shareTimeout(cl, m.ShareSize))
			defer cancel()
			b, err := cl.Call(ctx, s.InvocationToken, "get")
			if err == nil {
				err = m.Check(i, b)
			} else if errors.Is(err, client.ErrOutputTooLarge) {
				err = fmt.Errorf("the box sent more than the share's %d bytes", m.ShareSize)
			}
			results <- fetched{i, b, err}
		}()
	}
	shares := make([][]byte, m.N)
	bad := map[int]error{}
	good := 0
	for got := 0; got < m.N && good < m.K; got++ {
		f := <-results
		if f.err != nil {
			bad[f.i] = f.err
			continue
		}
		shares[f.i] = f.data
		good++
	}
	cancel() // the fetches still running end; their results are not waited for
	if c.ctx.Err() != nil {
		return c.interrupted("")
	}
	var idx []int
	for i := range bad {
		idx = append(idx, i)
	}
	sort.Ints(idx)
	if !c.json {
		for _, i := range idx {
			fmt.Fprintf(c.stderr, "bento: share %d on %s: %s; treated as missing\n", i, clean(m.Shares[i].Server), clean(shareErr(bad[i])))
		}
	}
	data, err := m.Join(shares)
	if err != nil {
		var tf *shard.TooFewError
		if errors.As(err, &tf) {
			// Unreachable boxes may come back; gone or lying ones will not.
			code := exitConnect
			for _, e := range bad {
				var ce *client.ConnError
				if !errors.As(e, &ce) {
					code = exitServer
				}
			}
			return c.errorf(code, nil, "only %d of the %d shares could be fetched and checked, and %s needs %d: it cannot be rebuilt now", good, m.N, clean(m.Name), m.K)
		}
		return c.errorf(exitServer, nil, "%v", err)
	}
	if *out == "-" {
		if _, err := c.stdout.Write(data); err != nil {
			return exitServer
		}
	} else if err := atomicfile.Write(*out, data, 0o600); err != nil {
		return c.errorf(exitUsage, nil, "%v", err)
	}
	var used []int
	for i, s := range shares {
		if s != nil {
			used = append(used, i)
		}
	}
	if c.json {
		missing := map[string]string{}
		for i, e := range bad {
			missing[fmt.Sprint(i)] = shareErr(e)
		}
		j, _ := json.Marshal(map[string]any{"output": *out, "size": len(data), "shares_used": used, "shares_missing": missing})
		if *out == "-" {
			// stdout holds the file.
			fmt.Fprintf(c.stderr, "%s\n", j)
		} else {
			fmt.Fprintf(c.stdout, "%s\n", j)
		}
		return exitOK
	}
	fmt.Fprintf(c.stderr, "bento: rebuilt %s (%d bytes) from shares %v of %d\n", clean(m.Name), len(data), used, m.N)
	return exitOK
}

// shareErr says why a share could not be used, shortly.
func shareErr(err error) string {
	var se *client.Error
	if errors.As(err, &se) {
		if se.Code == client.CodeNotFound || se.Code == client.CodeGone {
			return "its Dropbox instance is gone (" + se.Message + ")"
		}
		return "the box refused: " + se.Message
	}
	var xe *client.ExitError
	if errors.As(err, &xe) {
		if xe.Exit.Error != nil {
			return "the Dropbox failed: " + xe.Exit.Error.Error()
		}
		return "the Dropbox was stopped: " + xe.Exit.Reason
	}
	return err.Error()
}

func (c *cli) shardRm(args []string) int {
	fs := c.newFlags("shard rm", "MANIFEST [--timeout DURATION]")
	c.addTimeout(fs)
	pos, code, err := c.parseFlags(fs, args)
	if err != nil {
		return code
	}
	if len(pos) != 1 {
		return c.usageErr("shard rm takes MANIFEST")
	}
	m, err := readShardManifest(pos[0])
	if err != nil {
		return c.errorf(exitUsage, nil, "%v", err)
	}
	errs := make([]error, m.N)
	done := make(chan struct{}, m.N)
	for i, s := range m.Shares {
		go func() {
			defer func() { done <- struct{}{} }()
			if err := c.client(s.Server).Shutdown(c.ctx, s.ShutdownToken); err != nil && !client.IsCode(err, client.CodeNotFound) {
				errs[i] = err
			}
		}()
	}
	for range m.N {
		<-done
	}
	var left []string
	for i, err := range errs {
		if err != nil {
			left = append(left, fmt.Sprintf("share %d on %s: %s", i, clean(m.Shares[i].Server), clean(shareErr(err))))
		}
	}
	if len(left) > 0 {
		return c.errorf(exitConnect, nil, "%d of the %d shares may still be stored (run the same command again; each ends when its lifetime does): %s", len(left), m.N, strings.Join(left, "; "))
	}
	fmt.Fprintf(c.stderr, "bento: the %d shares of %s are shut down; %s can be deleted\n", m.N, clean(m.Name), pos[0])
	return exitOK
}
