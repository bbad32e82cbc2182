// Package redistest starts a real redis-server for tests: on a free port, in a
// temporary directory, with an append-only file synced on every write so that
// a restart keeps every command (the Redis-restart tests rely on it).
package redistest

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Server is a redis-server child process.
type Server struct {
	t    testing.TB
	dir  string
	port int
	cmd  *exec.Cmd
	// volatile: no append-only file, as the agent's benchmarks run Redis
	volatile bool
}

// Binary finds redis-server ($REDIS_SERVER, then PATH).
func Binary() (string, error) {
	if p := os.Getenv("REDIS_SERVER"); p != "" {
		return p, nil
	}
	return exec.LookPath("redis-server")
}

// Start runs a redis-server for the test and stops it at cleanup. Tests fail
// (not skip) when redis-server is missing: CI installs it.
func Start(t testing.TB) *Server {
	t.Helper()
	return launch(t, false)
}

// StartVolatile is Start without the append-only file: what survives a
// restart does not matter, and fsync on every write must not be measured.
func StartVolatile(t testing.TB) *Server {
	t.Helper()
	return launch(t, true)
}

func launch(t testing.TB, volatile bool) *Server {
	t.Helper()
	if _, err := Binary(); err != nil {
		t.Fatalf("redis-server not found (install it, or set REDIS_SERVER): %v", err)
	}
	s := &Server{t: t, dir: t.TempDir(), port: freePort(t), volatile: volatile}
	s.start()
	t.Cleanup(s.Stop)
	return s
}

// Socket is the server's Unix socket.
func (s *Server) Socket() string { return filepath.Join(s.dir, "redis.sock") }

func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func (s *Server) start() {
	s.t.Helper()
	bin, _ := Binary()
	persist := []string{"--appendonly", "yes", "--appendfsync", "always"}
	if s.volatile {
		persist = []string{"--appendonly", "no"}
	}
	args := append([]string{
		"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1", "--dir", s.dir,
		"--unixsocket", s.Socket(), "--unixsocketperm", "700", "--save", "",
		"--protected-mode", "no", "--daemonize", "no", "--logfile", filepath.Join(s.dir, "redis.log")}, persist...)
	s.cmd = exec.Command(bin, args...)
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("start redis-server: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		c := redis.NewClient(&redis.Options{Addr: s.Addr()})
		err := c.Ping(context.Background()).Err()
		c.Close()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
			s.t.Fatalf("redis-server did not answer on %s: %v\n%s", s.Addr(), err, log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Addr is host:port.
func (s *Server) Addr() string { return fmt.Sprintf("127.0.0.1:%d", s.port) }

// URL is the redis:// URL of the server.
func (s *Server) URL() string { return "redis://" + s.Addr() + "/0" }

// Client returns a new client, closed at cleanup.
func (s *Server) Client() *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: s.Addr()})
	s.t.Cleanup(func() { c.Close() })
	return c
}

// Stop kills the server (SIGKILL: what the AOF holds is all that survives).
func (s *Server) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
}

// Restart kills the server and starts it again on the same port and data.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	s.start()
}

// RestartEmpty kills the server and starts it again on the same port with
// no data: a Redis restarted without persistence.
func (s *Server) RestartEmpty() {
	s.t.Helper()
	s.Stop()
	entries, _ := os.ReadDir(s.dir)
	for _, e := range entries {
		if e.Name() != "redis.log" && e.Name() != "redis.sock" {
			os.RemoveAll(filepath.Join(s.dir, e.Name()))
		}
	}
	s.start()
}

// Log returns the server's log, for failure messages.
func (s *Server) Log() string {
	f, err := os.Open(filepath.Join(s.dir, "redis.log"))
	if err != nil {
		return ""
	}
	defer f.Close()
	var out string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		out += sc.Text() + "\n"
	}
	return out
}
