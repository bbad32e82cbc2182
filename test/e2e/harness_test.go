// Package e2e runs the real binaries: a redis-server, memcuda-agent
// processes and client processes (this test binary re-executed in a role).
package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	v1 "github.com/memcuda/memcuda/api/v1"
	"github.com/memcuda/memcuda/internal/redistest"
	"github.com/memcuda/memcuda/pkg/backend/host"
	"github.com/memcuda/memcuda/pkg/client"
	"github.com/memcuda/memcuda/pkg/registry"
)

var binDir string

func TestMain(m *testing.M) {
	if role := os.Getenv("MEMCUDA_E2E_ROLE"); role != "" {
		os.Exit(runRole(role))
	}
	dir, err := os.MkdirTemp("", "memcuda-e2e-bin")
	if err != nil {
		panic(err)
	}
	binDir = dir
	build := exec.Command("go", "build", "-o", dir, "github.com/memcuda/memcuda/cmd/memcuda-agent", "github.com/memcuda/memcuda/cmd/memcuda")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building binaries:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type env struct {
	t      *testing.T
	redis  *redistest.Server
	rdb    *redis.Client
	prefix string
	socket string
	agent  *agentProc
	reg    *registry.Registry
}

func newEnv(t *testing.T) *env {
	t.Helper()
	srv := redistest.Start(t)
	e := &env{t: t, redis: srv, rdb: srv.Client(), socket: filepath.Join(t.TempDir(), "run", "agent.sock")}
	e.prefix = fmt.Sprintf("e2e-%d-%s:", os.Getpid(), strings.NewReplacer("/", "-").Replace(t.Name()))
	e.reg = registry.New(e.rdb, registry.Keys{Prefix: e.prefix, Node: "node-e2e"})
	// Agents leave their shared memory for the next instance: this
	// prefix's objects go with the test.
	t.Cleanup(func() {
		scope := host.Scope(e.prefix)
		m, _ := filepath.Glob(filepath.Join(host.ShmDir, "memcuda."+scope+".*"))
		for _, p := range append(m, filepath.Join(host.ShmDir, "memcuda-lock."+scope)) {
			os.Remove(p)
		}
	})
	return e
}

type agentProc struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

// startAgent runs memcuda-agent and waits until its registry is reconciled.
func (e *env) startAgent(extra ...string) *agentProc {
	e.t.Helper()
	a := e.launchAgent(extra...)
	e.waitFor("agent to reconcile", 10*time.Second, func() bool {
		b, _ := os.ReadFile(a.log)
		return strings.Contains(string(b), "registry reconciled")
	})
	return a
}

// launchAgent runs memcuda-agent and waits only for its socket.
func (e *env) launchAgent(extra ...string) *agentProc {
	e.t.Helper()
	logPath := filepath.Join(e.t.TempDir(), "agent.log")
	f, err := os.Create(logPath)
	if err != nil {
		e.t.Fatal(err)
	}
	args := append([]string{"--redis-url", e.redis.URL(), "--redis-prefix", e.prefix, "--socket", e.socket,
		"--node", "node-e2e", "--metrics-addr", "", "--gc-interval", "200ms", "--log-level", "debug"}, extra...)
	cmd := exec.Command(filepath.Join(binDir, "memcuda-agent"), args...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	a := &agentProc{cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { cmd.Wait(); f.Close(); close(a.done) }()
	e.agent = a
	e.t.Cleanup(func() {
		a.kill()
		if e.t.Failed() {
			b, _ := os.ReadFile(logPath)
			e.t.Logf("agent log:\n%s", b)
		}
	})
	e.waitFor("agent socket", 10*time.Second, func() bool {
		_, err := os.Stat(e.socket)
		return err == nil
	})
	return a
}

func (a *agentProc) kill() {
	a.cmd.Process.Signal(syscall.SIGKILL)
	<-a.done
}

func (a *agentProc) stop() {
	a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
	case <-time.After(10 * time.Second):
		a.kill()
	}
}

func (e *env) waitFor(what string, d time.Duration, cond func() bool) {
	e.t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (e *env) dial() *client.Client {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, e.socket)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	return c
}

func (e *env) stat(name string) (v1.Tensor, error) {
	return e.reg.Stat(context.Background(), name)
}

func (e *env) refcount(name string) int64 {
	info, err := e.stat(name)
	if err != nil {
		return -1
	}
	return info.Refcount
}

// roleProc is this test binary running a client role in its own process.
type roleProc struct {
	cmd   *exec.Cmd
	lines chan string
}

// startRole starts a client process; it prints "ready" or "ok" lines.
func (e *env) startRole(role string, kv ...string) *roleProc {
	e.t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "MEMCUDA_E2E_ROLE="+role, "MEMCUDA_SOCKET="+e.socket,
		"E2E_REDIS_URL="+e.redis.URL(), "E2E_PREFIX="+e.prefix)
	for i := 0; i+1 < len(kv); i += 2 {
		cmd.Env = append(cmd.Env, kv[i]+"="+kv[i+1])
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	p := &roleProc{cmd: cmd, lines: make(chan string, 16)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
	}()
	e.t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return p
}

// expect waits for the process to print want.
func (p *roleProc) expect(t *testing.T, want string) {
	t.Helper()
	timeout := time.After(15 * time.Second)
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				t.Fatalf("client process exited before printing %q", want)
			}
			if l == want {
				return
			}
			t.Logf("client: %s", l)
		case <-timeout:
			t.Fatalf("client process did not print %q", want)
		}
	}
}

func (p *roleProc) wait(t *testing.T) {
	t.Helper()
	for range p.lines {
	}
	if err := p.cmd.Wait(); err != nil {
		t.Fatalf("client process: %v", err)
	}
}

// runCLI runs the memcuda CLI and returns its stdout and exit code.
func (e *env) runCLI(args ...string) (string, int) {
	e.t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "memcuda"), append([]string{"--socket", e.socket}, args...)...)
	var out strings.Builder
	cmd.Stdout = &out
	cmd.Stderr = io.Discard
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		e.t.Fatal(err)
	}
	return out.String(), code
}

func mustJSON(t *testing.T, s string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(s), v); err != nil {
		t.Fatalf("bad JSON %q: %v", s, err)
	}
}

// eventually waits up to 10 s for cond.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
