package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	v1 "github.com/memcuda/memcuda/api/v1"
	"github.com/memcuda/memcuda/internal/procinfo"
	"github.com/memcuda/memcuda/internal/redistest"
	"github.com/memcuda/memcuda/pkg/backend/host"
	"github.com/memcuda/memcuda/pkg/client"
	"github.com/memcuda/memcuda/pkg/errdefs"
	"github.com/memcuda/memcuda/pkg/queue"
	"github.com/memcuda/memcuda/pkg/queueclient"
)

// A writer process creates and fills a tensor and exits; a second process
// reads it by name over the socket and writes; a third opens it through the
// Redis-only path (queue get + shm_open of ipc_handle) and sees that write.
func TestTwoProcessesShareByName(t *testing.T) {
	e := newEnv(t)
	e.startAgent()
	const name, size = "weights.layer0", 3<<20 + 17
	kv := []string{"E2E_NAME", name, "E2E_SIZE", fmt.Sprint(size)}
	e.startRole("writer", kv...).wait(t)
	if rc := e.refcount(name); rc != 1 {
		t.Fatalf("after the writer exited refcount is %d, want 1 (the registry's)", rc)
	}
	e.startRole("reader-socket", kv...).wait(t)
	e.startRole("reader-redis", kv...).wait(t)
	if rc := e.refcount(name); rc != 1 {
		t.Fatalf("after the readers refcount is %d, want 1", rc)
	}
	info, _ := e.stat(name)
	if info.IPCMode != v1.ModeHost || !strings.HasPrefix(info.IPCHandle, "/memcuda.") || info.Bytes != size {
		t.Fatalf("record %+v", info)
	}
}

func TestKill9ReleasesSocketLeases(t *testing.T) {
	e := newEnv(t)
	e.startAgent()
	c := e.dial()
	ctx := context.Background()
	if _, err := c.Create(ctx, "shared", "f32", []int64{1024}); err != nil {
		t.Fatal(err)
	}
	p := e.startRole("holder", "E2E_NAME", "shared")
	p.expect(t, "ready")
	// A connection counts once in Redis however many references it holds
	// (its first get's script runs right after the answer: wait for it).
	e.waitFor("refcount 3: 1 registry + 1 ours + 1 for the holder's 3 gets", 2*time.Second, func() bool { return e.refcount("shared") == 3 })
	time.Sleep(50 * time.Millisecond)
	if rc := e.refcount("shared"); rc != 3 {
		t.Fatalf("refcount %d, want 1 registry + 1 ours + 1 for the holder's 3 gets", rc)
	}
	p.cmd.Process.Kill()
	start := time.Now()
	e.waitFor("refcount back to 2", 2*time.Second, func() bool { return e.refcount("shared") == 2 })
	t.Logf("refcount back %v after kill -9", time.Since(start))
}

func TestKill9ReleasesQueueReferences(t *testing.T) {
	e := newEnv(t)
	e.startAgent()
	c := e.dial()
	ctx := context.Background()
	if _, err := c.Create(ctx, "q", "f32", []int64{16}); err != nil {
		t.Fatal(err)
	}
	p := e.startRole("queue-holder", "E2E_NAME", "q")
	p.expect(t, "ready")
	if rc := e.refcount("q"); rc != 4 {
		t.Fatalf("refcount %d, want 4", rc)
	}
	holders, _ := e.reg.Holders(ctx, "q")
	if holders[fmt.Sprintf("pid:%d:", p.cmd.Process.Pid)] != 0 {
		t.Fatal("holder without start time")
	}
	p.cmd.Process.Kill()
	p.cmd.Wait()
	start := time.Now()
	e.waitFor("GC to drop the dead pid's references", 2*time.Second, func() bool { return e.refcount("q") == 2 })
	t.Logf("refcount back %v after kill -9", time.Since(start))
}

func TestAgentRestart(t *testing.T) {
	e := newEnv(t)
	a := e.startAgent()
	c := e.dial()
	ctx := context.Background()
	old, err := c.Create(ctx, "before", "f32", []int64{256})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	// The create's record is written right after its answer: wait for it
	// (and the close's release) before the crash.
	e.waitFor("the record with the registry's reference only", 2*time.Second, func() bool { return e.refcount("before") == 1 })
	a.kill()
	scope := host.Scope(e.prefix)
	if m, _ := filepath.Glob("/dev/shm/memcuda." + scope + ".*"); len(m) == 0 {
		t.Fatal("the killed agent's shared-memory object should still be there")
	}
	// Commands pushed while no agent runs, and one the dead agent had taken
	// but not finished (left in its processing list).
	q := queueclient.New(e.rdb, e.prefix)
	pushed := v1.Command{Op: v1.OpCreate, Name: "while-down", DType: "f16", Shape: []int64{8}, ID: "c1", ReplyTo: e.prefix + "reply:c1"}
	b, _ := json.Marshal(pushed)
	e.rdb.RPush(ctx, e.reg.Keys().Cmd(), b)
	inflight := v1.Command{Op: v1.OpCreate, Name: "in-flight", DType: "i32", Shape: []int64{4}, ID: "c2", ReplyTo: e.prefix + "reply:c2"}
	b, _ = json.Marshal(inflight)
	e.rdb.RPush(ctx, e.reg.Keys().Processing(), b)

	e.startAgent()
	// The shared memory outlived the agent: the new instance adopted it.
	if rec, err := e.stat("before"); err != nil || rec.UID != old.Info.UID || rec.Agent == old.Info.Agent {
		t.Fatalf("record after the restart: %+v %v (was uid %s of agent %s)", rec, err, old.Info.UID, old.Info.Agent)
	}
	if m, _ := filepath.Glob("/dev/shm/" + old.Info.SegmentID); len(m) != 1 {
		t.Fatalf("the adopted shared-memory object is gone: %v", m)
	}
	for _, key := range []string{"c1", "c2"} {
		res, err := e.rdb.BLPop(ctx, 5*time.Second, e.prefix+"reply:"+key).Result()
		if err != nil {
			t.Fatalf("no reply to %s: %v", key, err)
		}
		var r v1.Reply
		mustJSON(t, res[1], &r)
		if !r.OK || r.Tensor == nil || r.Tensor.Agent == old.Info.Agent {
			t.Fatalf("reply %s", res[1])
		}
	}
	// The worker removes a command right after pushing its reply.
	e.waitFor("the processing list to drain", 5*time.Second, func() bool {
		n, _ := e.rdb.LLen(ctx, e.reg.Keys().Processing()).Result()
		return n == 0
	})
	// A fresh client works against the new instance.
	c2 := e.dial()
	if _, err := c2.Get(ctx, "while-down"); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Do(ctx, v1.Command{Op: v1.OpStat, Name: "in-flight"}); err != nil {
		t.Fatal(err)
	}
}

func TestRedisRestart(t *testing.T) {
	e := newEnv(t)
	e.startAgent()
	ctx := context.Background()
	push := func(i int) {
		cmd := v1.Command{Op: v1.OpCreate, Name: fmt.Sprintf("t%03d", i), DType: "f32", Shape: []int64{int64(i + 1)},
			ID: fmt.Sprintf("r%03d", i), ReplyTo: fmt.Sprintf("%sreply:r%03d", e.prefix, i)}
		b, _ := json.Marshal(cmd)
		for {
			if err := e.rdb.RPush(ctx, e.reg.Keys().Cmd(), b).Err(); err == nil {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	for i := 0; i < 40; i++ {
		push(i)
	}
	e.redis.Restart()
	// While Redis was down or right after, the socket answers (never hangs).
	c := e.dial()
	for i := 40; i < 80; i++ {
		push(i)
	}
	for i := 0; i < 80; i++ {
		var res []string
		var err error
		for try := 0; try < 100; try++ {
			res, err = e.rdb.BLPop(ctx, 200*time.Millisecond, fmt.Sprintf("%sreply:r%03d", e.prefix, i)).Result()
			if err == nil {
				break
			}
		}
		if err != nil {
			t.Fatalf("reply %d lost: %v", i, err)
		}
		var r v1.Reply
		mustJSON(t, res[1], &r)
		if !r.OK {
			t.Fatalf("command %d failed: %s", i, res[1])
		}
	}
	names, _ := e.reg.Names(ctx)
	if len(names) != 80 {
		t.Fatalf("%d tensors, want 80", len(names))
	}
	for _, n := range names {
		if rc := e.refcount(n); rc != 1 {
			t.Fatalf("%s refcount %d: a command was applied twice", n, rc)
		}
	}
	list, err := c.List(ctx)
	if err != nil || len(list) != 80 {
		t.Fatalf("socket list after the restart: %d %v", len(list), err)
	}
}

func TestSocketAnswersUnavailableWhileRedisIsDown(t *testing.T) {
	e := newEnv(t)
	e.startAgent()
	c := e.dial()
	e.redis.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	_, err := c.Create(ctx, "x", "f32", []int64{1})
	if !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("create with Redis down: %v, want unavailable", err)
	}
	e.redis.Restart()
	e.waitFor("Redis to answer the agent again", 10*time.Second, func() bool {
		_, err := c.Create(ctx, "x", "f32", []int64{1})
		return err == nil
	})
}

func TestMalformedCommandsGoToDeadLetters(t *testing.T) {
	e := newEnv(t)
	e.startAgent()
	ctx := context.Background()
	keys := e.reg.Keys()
	bad := []string{
		`not json`,
		`{"op":"explode","name":"x","id":"b1","reply_to":"` + e.prefix + `reply:b1"}`,
		`{"op":"create","name":"x","dtype":"f32","shape":"[1]","reply_to":"` + e.prefix + `reply:b2"}`,
		`{"op":"create","name":"../x","dtype":"f32","shape":[1],"reply_to":"` + e.prefix + `reply:b3"}`,
		`{"op":"list","reply_to":"` + keys.Cmd() + `"}`,
		strings.Repeat("x", queue.MaxCommandSize+10),
	}
	for _, b := range bad {
		e.rdb.RPush(ctx, keys.Cmd(), b)
	}
	q := queueclient.New(e.rdb, e.prefix)
	if _, err := q.Do(ctx, v1.Command{Op: v1.OpCreate, Name: "good", DType: "f32", Shape: []int64{2}}); err != nil {
		t.Fatalf("a valid command after malformed ones: %v", err)
	}
	for _, k := range []string{"b1", "b2", "b3"} {
		// Commands of other names run in other lanes: wait for each reply.
		res, err := e.rdb.BLPop(ctx, 5*time.Second, e.prefix+"reply:"+k).Result()
		if err != nil {
			t.Fatalf("no error reply on %s: %v", k, err)
		}
		res = res[1:]
		if len(res) != 1 {
			t.Fatalf("reply %v", res)
		}
		var r v1.Reply
		mustJSON(t, res[0], &r)
		if r.OK || r.Error == nil || r.Error.Code != errdefs.CodeInvalidArgument {
			t.Fatalf("reply %s", res)
		}
	}
	eventually(t, "every malformed command dead-lettered", func() bool {
		n, _ := e.rdb.LLen(ctx, keys.Dead()).Result()
		return n == int64(len(bad))
	})
	if n, _ := e.rdb.LLen(ctx, keys.Cmd()).Result(); n != 0 {
		t.Fatalf("%d commands stuck", n)
	}
}

// Hostile reply keys (a string, a hash under the reply prefix) used to stop
// the queue for good: WRONGTYPE was retried forever. Each must end in the
// dead-letter list while the commands around it are answered.
func TestPoisonedCommandsDoNotStopTheQueue(t *testing.T) {
	e := newEnv(t)
	e.startAgent()
	ctx := context.Background()
	keys := e.reg.Keys()
	e.rdb.Set(ctx, e.prefix+"reply:str", "x", 0)
	e.rdb.HSet(ctx, e.prefix+"reply:hash", "f", "v")
	poison := []string{
		`{"op":"list","id":"p1","reply_to":"` + e.prefix + `reply:str"}`,
		`{"op":"create","name":"p2","dtype":"f32","shape":[1],"id":"p2","reply_to":"` + e.prefix + `reply:hash"}`,
		`{"op":"stat","name":"nope","reply_to":"` + e.prefix + `reply:str"}`,
		`{"op":"get","op":"create","name":"p3","dtype":"f32","shape":[1],"reply_to":"` + e.prefix + `reply:hash"}`,
	}
	q := queueclient.New(e.rdb, e.prefix)
	for round := 0; round < 3; round++ {
		for _, p := range poison {
			e.rdb.RPush(ctx, keys.Cmd(), p)
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := q.Do(cctx, v1.Command{Op: v1.OpCreate, Name: fmt.Sprintf("after.%d", round), DType: "f32", Shape: []int64{2}})
		cancel()
		if err != nil {
			t.Fatalf("round %d: a valid command behind poisoned ones: %v", round, err)
		}
	}
	eventually(t, "the poisoned commands dead-lettered and the processing list empty", func() bool {
		dead, _ := e.rdb.LLen(ctx, keys.Dead()).Result()
		busy, _ := e.rdb.LLen(ctx, keys.Processing()).Result()
		return dead == int64(3*len(poison)) && busy == 0
	})
	letters, _ := e.rdb.LRange(ctx, keys.Dead(), 0, -1).Result()
	for _, l := range letters {
		var d v1.DeadLetter
		mustJSON(t, l, &d)
		if !strings.Contains(d.Error, "WRONGTYPE") && !strings.Contains(d.Error, "appears twice") {
			t.Errorf("dead letter without its cause: %+v", d)
		}
	}
	// The create behind the hash reply_to ran; its reply could not be sent.
	if rc := e.refcount("p2"); rc != 1 {
		t.Fatalf("p2 refcount %d, want 1 (created once, by request id)", rc)
	}
}

func TestRequestIDAppliedOnce(t *testing.T) {
	e := newEnv(t)
	e.startAgent()
	ctx := context.Background()
	q := queueclient.New(e.rdb, e.prefix)
	if _, err := q.Do(ctx, v1.Command{Op: v1.OpCreate, Name: "once", DType: "f32", Shape: []int64{2}}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if _, err := q.Do(ctx, v1.Command{Op: v1.OpGet, Name: "once", PID: os.Getpid(), ID: "same-id", ReplyTo: fmt.Sprintf("%sreply:%d", e.prefix, i)}); err != nil {
			t.Fatal(err)
		}
	}
	if rc := e.refcount("once"); rc != 2 {
		t.Fatalf("refcount %d after one get sent three times, want 2", rc)
	}
}

func TestCLI(t *testing.T) {
	e := newEnv(t)
	e.startAgent()
	if out, code := e.runCLI("create", "cli.t", "--dtype", "bf16", "--shape", "2,3"); code != 0 || !strings.Contains(out, "cli.t bf16[2,3]") {
		t.Fatalf("create: %q %d", out, code)
	}
	out, code := e.runCLI("-o", "json", "ls")
	var list []v1.Tensor
	mustJSON(t, out, &list)
	if code != 0 || len(list) != 1 || list[0].Refcount != 1 || list[0].Bytes != 12 {
		t.Fatalf("ls: %q %d", out, code)
	}
	if out, code := e.runCLI("ls"); code != 0 || !strings.Contains(out, "NAME") || !strings.Contains(out, "cli.t") {
		t.Fatalf("ls table: %q", out)
	}
	if out, code := e.runCLI("inspect", "cli.t"); code != 0 || !strings.Contains(out, "IPC handle:") || !strings.Contains(out, "registry") {
		t.Fatalf("inspect: %q", out)
	}
	// kubectl's habits: flags after the command, -o of every kind, --help, --version.
	out, code = e.runCLI("ls", "-o", "json")
	mustJSON(t, out, &list)
	if code != 0 || len(list) != 1 {
		t.Fatalf("ls -o json: %q %d", out, code)
	}
	if out, code := e.runCLI("ls", "-o", "yaml"); code != 0 || !strings.Contains(out, "name: cli.t") {
		t.Fatalf("ls -o yaml: %q %d", out, code)
	}
	if out, code := e.runCLI("ls", "-o", "name"); code != 0 || out != "tensor/cli.t\n" {
		t.Fatalf("ls -o name: %q %d", out, code)
	}
	if out, code := e.runCLI("ls", "-o", "wide"); code != 0 || !strings.Contains(out, "SEGMENT") || !strings.Contains(out, list[0].UID) {
		t.Fatalf("ls -o wide: %q %d", out, code)
	}
	if out, code := e.runCLI("ls", "--prefix", "nope."); code != 0 || strings.Contains(out, "cli.t") {
		t.Fatalf("ls --prefix: %q %d", out, code)
	}
	var insp struct {
		Name    string           `json:"name"`
		Holders map[string]int64 `json:"holders"`
	}
	out, code = e.runCLI("inspect", "tensor/cli.t", "-o", "json")
	mustJSON(t, out, &insp)
	if code != 0 || insp.Name != "cli.t" || insp.Holders["registry"] != 1 {
		t.Fatalf("inspect -o json: %q %d", out, code)
	}
	for _, args := range [][]string{{"--help"}, {"ls", "--help"}, {"help", "inspect"}, {"--version"}} {
		if out, code := e.runCLI(args...); code != 0 || out == "" {
			t.Errorf("memcuda %v: exit %d, output %q", args, code, out)
		}
	}
	if out, _ := e.runCLI("ls", "--help"); !strings.Contains(out, "--all-nodes") || !strings.Contains(out, "--watch") {
		t.Errorf("ls --help does not document its flags: %q", out)
	}
	// ls --watch prints the rows that change: a new tensor, then its deletion.
	watchOut := make(chan string, 1)
	go func() {
		out, _ := e.runCLI("ls", "--watch", "--watch-interval", "50ms", "--timeout", "3s")
		watchOut <- out
	}()
	time.Sleep(500 * time.Millisecond)
	if out, code := e.runCLI("create", "cli.watched", "--shape", "2"); code != 0 {
		t.Fatalf("create while watching: %q", out)
	}
	time.Sleep(300 * time.Millisecond)
	if out, code := e.runCLI("rm", "cli.watched"); code != 0 {
		t.Fatalf("rm while watching: %q", out)
	}
	if out := <-watchOut; !strings.Contains(out, "cli.watched") || !strings.Contains(out, "gone") || strings.Count(out, "cli.t") != 1 {
		t.Fatalf("ls --watch: %q (want cli.t once, cli.watched added and gone)", out)
	}
	if out, code := e.runCLI("-o", "json", "stats"); code != 0 || !strings.Contains(out, `"reserved"`) {
		t.Fatalf("stats: %q", out)
	}
	if out, code := e.runCLI("gc", "--trim"); code != 0 || !strings.Contains(out, "dropped references") {
		t.Fatalf("gc: %q", out)
	}
	for _, tc := range []struct {
		args []string
		code int
	}{
		{[]string{"inspect", "nope"}, 4},
		{[]string{"create", "cli.t", "--dtype", "f32", "--shape", "2,3"}, 5},
		{[]string{"create", "x", "--dtype", "f31", "--shape", "1"}, 2},
		{[]string{"create", "x", "--shape", "1,a"}, 2},
		{[]string{"frobnicate"}, 2},
		{[]string{"ls", "--frob"}, 2},
		{[]string{"ls", "-o", "bogus"}, 2},
		{[]string{"inspect"}, 2},
		{[]string{"--socket", "/nonexistent/sock", "ls"}, 3},
		{[]string{"ls", "--socket", "/nonexistent/sock"}, 3},
	} {
		if _, code := e.runCLI(tc.args...); code != tc.code {
			t.Errorf("memcuda %v: exit %d, want %d", tc.args, code, tc.code)
		}
	}
	if out, code := e.runCLI("rm", "cli.t"); code != 0 || !strings.Contains(out, "deleted") {
		t.Fatalf("rm: %q %d", out, code)
	}
	if out, code := e.runCLI("demo"); code != 0 || !strings.Contains(out, "demo OK") {
		t.Fatalf("demo: %q %d", out, code)
	}
}

func TestManyClientsConcurrently(t *testing.T) {
	e := newEnv(t)
	e.startAgent()
	ctx := context.Background()
	var g errgroup.Group
	for range 16 {
		g.Go(func() error {
			c, err := client.Dial(ctx, e.socket)
			if err != nil {
				return err
			}
			defer c.Close()
			for j := 0; j < 50; j++ {
				tn, err := c.Create(ctx, fmt.Sprintf("c%d", j%5), "f32", []int64{64})
				if err != nil {
					return err
				}
				if err := tn.Release(ctx); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	for j := 0; j < 5; j++ {
		if rc := e.refcount(fmt.Sprintf("c%d", j)); rc != 1 {
			t.Fatalf("c%d refcount %d, want 1", j, rc)
		}
	}
}

// References a connection already holds are counted in the agent; a delete
// must still stop new gets on that connection, and the last release must
// still reach Redis.
func TestWarmGetsOnOneConnection(t *testing.T) {
	e := newEnv(t)
	e.startAgent()
	c := e.dial()
	ctx := context.Background()
	first, err := c.Create(ctx, "warm", "f32", []int64{8})
	if err != nil {
		t.Fatal(err)
	}
	var held []*client.Tensor
	for i := 0; i < 5; i++ {
		tn, err := c.Get(ctx, "warm")
		if err != nil {
			t.Fatal(err)
		}
		if &tn.Bytes()[0] != &first.Bytes()[0] {
			t.Fatal("a second get of the same tensor on one connection maps other memory")
		}
		held = append(held, tn)
	}
	if _, err := c.Create(ctx, "warm", "f16", []int64{8}); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("create with another dtype on a holding connection: %v", err)
	}
	if rc := e.refcount("warm"); rc != 2 {
		t.Fatalf("refcount %d, want registry + this connection", rc)
	}
	if err := c.Delete(ctx, "warm"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(ctx, "warm"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("get of a deleted tensor on a connection that holds it: %v", err)
	}
	for _, tn := range append(held, first) {
		if err := tn.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.stat("warm"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("the last release did not free the deleted tensor: %v", err)
	}
	if err := first.Release(ctx); err != nil {
		t.Fatalf("a second Release of the same tensor must be a no-op: %v", err)
	}
}

func TestMetricsAndHealth(t *testing.T) {
	e := newEnv(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	e.startAgent("--metrics-addr", addr)
	c := e.dial()
	if _, err := c.Create(context.Background(), "m", "f32", []int64{10}); err != nil {
		t.Fatal(err)
	}
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, body := get("/metrics")
	for _, want := range []string{`memcuda_ops_total{code="ok",op="create",path="socket"} 1`, "memcuda_tensors 1", "memcuda_pool_reserved_bytes", "memcuda_queue_depth 0", "memcuda_op_duration_seconds_bucket"} {
		if code != 200 || !strings.Contains(body, want) {
			t.Fatalf("/metrics (%d) lacks %q", code, want)
		}
	}
	if code, _ := get("/readyz"); code != 200 {
		t.Fatalf("/readyz %d with Redis up", code)
	}
	e.redis.Stop()
	if code, _ := get("/readyz"); code != 503 {
		t.Fatalf("/readyz %d with Redis down, want 503", code)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Fatalf("/healthz %d: the agent itself is alive", code)
	}
}

func TestListAllNodes(t *testing.T) {
	e := newEnv(t)
	e.startAgent("--cluster-prefix", e.prefix+"cluster:")
	if out, code := e.runCLI("create", "n1.t", "--shape", "3"); code != 0 {
		t.Fatalf("create: %q", out)
	}
	// A second agent on "another node" sharing the Redis with its own prefix.
	other := *e
	other.prefix = e.prefix + "node2:"
	other.socket = filepath.Join(t.TempDir(), "agent2.sock")
	(&other).startAgent("--cluster-prefix", e.prefix+"cluster:", "--node", "node-2")
	if out, code := (&other).runCLI("create", "n2.t", "--shape", "5"); code != 0 {
		t.Fatalf("create on node 2: %q", out)
	}
	out, code := e.runCLI("-o", "json", "ls", "--all-nodes", "--redis-url", e.redis.URL(), "--cluster-prefix", e.prefix+"cluster:")
	var list []v1.Tensor
	mustJSON(t, out, &list)
	if code != 0 || len(list) != 2 {
		t.Fatalf("ls --all-nodes: %d %q", code, out)
	}
	if _, code := e.runCLI("ls", "--all-nodes"); code != 2 && os.Getenv("MEMCUDA_REDIS_URL") == "" {
		t.Fatalf("ls --all-nodes without a Redis URL: exit %d, want 2", code)
	}
}

// An agent started while Redis is down serves the socket at once (answering
// unavailable), and catches up when Redis comes.
func TestAgentStartsBeforeRedis(t *testing.T) {
	e := newEnv(t)
	e.redis.Stop()
	e.launchAgent()
	c := e.dial()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := c.Create(ctx, "early", "f32", []int64{1}); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("create before Redis is up: %v, want unavailable", err)
	}
	if h := c.Hello(); h.Redis {
		t.Fatal("hello says Redis is up")
	}
	e.redis.Restart()
	e.waitFor("the agent to reach Redis", 15*time.Second, func() bool {
		_, err := c.Create(ctx, "early", "f32", []int64{1})
		return err == nil
	})
	if rc := e.refcount("early"); rc != 2 {
		t.Fatalf("refcount %d, want registry + this connection", rc)
	}
}

// A released tensor's segment stays mapped (bounded): getting it again maps nothing new.
func TestIdleMappingsAreReused(t *testing.T) {
	e := newEnv(t)
	e.startAgent()
	c := e.dial()
	ctx := context.Background()
	first, err := c.Create(ctx, "idle", "u8", []int64{4096})
	if err != nil {
		t.Fatal(err)
	}
	addr := &first.Bytes()[0]
	first.Bytes()[0] = 42
	if err := first.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if first.Bytes() != nil {
		t.Fatal("a released tensor still exposes its bytes")
	}
	again, err := c.Get(ctx, "idle")
	if err != nil {
		t.Fatal(err)
	}
	if &again.Bytes()[0] != addr || again.Bytes()[0] != 42 {
		t.Fatal("the idle mapping was not reused")
	}
}

// Past the idle bound a segment is unmapped and its descriptor closed (an
// open one keeps the memory), the agent is told, and a later get of a
// tensor in it brings the descriptor again.
func TestEvictedSegmentsDescriptorIsClosedAndSentAgain(t *testing.T) {
	e := newEnv(t)
	e.startAgent()
	c := e.dial()
	ctx := context.Background()
	openFDs := func() int {
		ents, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		return len(ents)
	}
	const n = 9 // one more than the client keeps mapped unused
	var before int
	for i := 0; i < n; i++ {
		x, err := c.Create(ctx, fmt.Sprintf("evict.%d", i), "u8", []int64{10 << 20}) // a segment each
		if err != nil {
			t.Fatal(err)
		}
		x.Bytes()[0] = byte(i + 1)
		if i == n-1 {
			before = openFDs() - 1 // the last segment's descriptor came with this create
		}
		if err := x.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if got := openFDs(); got != before {
		t.Fatalf("%d descriptors open after the first segment was evicted, want %d (its descriptor closed)", got, before)
	}
	first, err := c.Get(ctx, "evict.0")
	if err != nil {
		t.Fatal(err)
	}
	if first.Bytes()[0] != 1 {
		t.Fatalf("evict.0 reads %d after mapping it again", first.Bytes()[0])
	}
}

// Goroutines sharing a client while its segments are evicted and their
// descriptors forgotten: no get may find a segment without its descriptor.
func TestConcurrentGetsWhileSegmentsAreEvicted(t *testing.T) {
	e := newEnv(t)
	e.startAgent()
	c := e.dial()
	ctx := context.Background()
	const n = 12 // more segments than the client keeps mapped unused
	for i := 0; i < n; i++ {
		x, err := c.Create(ctx, fmt.Sprintf("churn.%d", i), "u8", []int64{10 << 20})
		if err != nil {
			t.Fatal(err)
		}
		x.Bytes()[0] = byte(i + 1)
		if err := x.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	var readers errgroup.Group
	for g := range 4 {
		readers.Go(func() error {
			for k := 0; k < 60; k++ {
				i := (g*5 + k) % n
				x, err := c.Get(ctx, fmt.Sprintf("churn.%d", i))
				if err != nil {
					return err
				}
				if x.Bytes()[0] != byte(i+1) {
					return fmt.Errorf("churn.%d reads %d", i, x.Bytes()[0])
				}
				if err := x.Release(ctx); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err := readers.Wait(); err != nil {
		t.Fatal(err)
	}
}

// A queue command's pid_start pins the reference to that very process: a
// pid that names another process in the agent's PID namespace (as one sent
// from a namespace of its own does) is refused and takes nothing.
func TestQueuePidStartRefusesAnotherProcess(t *testing.T) {
	e := newEnv(t)
	e.startAgent()
	ctx := context.Background()
	q := queueclient.New(e.rdb, e.prefix)
	if _, err := q.Do(ctx, v1.Command{Op: v1.OpCreate, Name: "mine", DType: "f32", Shape: []int64{2}}); err != nil {
		t.Fatal(err)
	}
	start, err := procinfo.StartTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	_, err = q.Do(ctx, v1.Command{Op: v1.OpGet, Name: "mine", PID: os.Getpid(), PIDStart: start + 1})
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "another process") {
		t.Fatalf("get with another start time: %v, want failed_precondition naming another process", err)
	}
	if rc := e.refcount("mine"); rc != 1 {
		t.Fatalf("refcount %d after a refused get, want 1", rc)
	}
	// Filled in by the client for its own pid.
	if _, err := q.Do(ctx, v1.Command{Op: v1.OpGet, Name: "mine", PID: os.Getpid()}); err != nil {
		t.Fatal(err)
	}
	holders, err := e.reg.Holders(ctx, "mine")
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("pid:%d:%d", os.Getpid(), start); holders[want] != 1 {
		t.Fatalf("holders %v, want %s once", holders, want)
	}
	_, err = q.Do(ctx, v1.Command{Op: v1.OpRelease, Name: "mine", PID: os.Getpid(), PIDStart: start + 1})
	if !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("release with another start time: %v, want failed_precondition", err)
	}
	if _, err := q.Do(ctx, v1.Command{Op: v1.OpRelease, Name: "mine", PID: os.Getpid(), PIDStart: start}); err != nil {
		t.Fatal(err)
	}
	if rc := e.refcount("mine"); rc != 1 {
		t.Fatalf("refcount %d after get and release, want 1", rc)
	}
}

// A second agent with the same prefix on the host (its own Redis and
// socket: a parallel test run, a misconfiguration) used to unlink the
// first one's live shared-memory objects at start. It must refuse to start,
// and the first agent's tensors stay readable from their records.
func TestSecondAgentOfAPrefixIsRefused(t *testing.T) {
	e := newEnv(t)
	e.startAgent("--backend", "host")
	c := e.dial()
	ctx := context.Background()
	tt, err := c.Create(ctx, "kept", "u8", []int64{16})
	if err != nil {
		t.Fatal(err)
	}
	copy(tt.Bytes(), "sixteen bytes ok")
	info, err := c.Stat(ctx, "kept")
	if err != nil {
		t.Fatal(err)
	}
	other := redistest.Start(t)
	cmd := exec.Command(filepath.Join(binDir, "memcuda-agent"), "--redis-url", other.URL(), "--redis-prefix", e.prefix,
		"--socket", filepath.Join(t.TempDir(), "second.sock"), "--backend", "host", "--metrics-addr", "")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "another agent") || !strings.Contains(string(out), "--redis-prefix") {
		t.Fatalf("second agent of the prefix: %v\n%s", err, out)
	}
	m, err := queueclient.MapHost(info)
	if err != nil {
		t.Fatalf("the first agent's segment is gone: %v", err)
	}
	defer m.Close()
	if string(m.Bytes()) != "sixteen bytes ok" {
		t.Fatalf("segment holds %q", m.Bytes())
	}
}

// Nested prefixes share keys (p:meta:meta:x is "meta:x" of the p: agent and
// "x" of the p:meta: agent): an agent whose prefix collides with a live
// agent's in the same Redis refuses to start.
func TestCollidingPrefixIsRefused(t *testing.T) {
	e := newEnv(t)
	cluster := e.prefix + "cluster:"
	e.startAgent("--cluster-prefix", cluster)
	c := e.dial()
	if _, err := c.Create(context.Background(), "meta:x", "u8", []int64{4}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{e.prefix + "meta:", e.prefix + "refs:z:"} {
		cmd := exec.Command(filepath.Join(binDir, "memcuda-agent"), "--redis-url", e.redis.URL(), "--redis-prefix", p,
			"--cluster-prefix", cluster, "--socket", filepath.Join(t.TempDir(), "second.sock"), "--backend", "host", "--metrics-addr", "")
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "collides with") {
			t.Fatalf("agent with prefix %q: %v\n%s", p, err, out)
		}
	}
	// A prefix that only starts alike is fine.
	ok := *e
	ok.prefix = e.prefix + "node-b:"
	ok.socket = filepath.Join(t.TempDir(), "third.sock")
	(&ok).startAgent("--cluster-prefix", cluster, "--node", "node-b")
	if info, err := e.stat("meta:x"); err != nil || info.Bytes != 4 {
		t.Fatalf("the first agent's tensor: %+v %v", info, err)
	}
}

// procStatus reads a field of /proc/<pid>/status (Threads, VmRSS).
func procStatus(t *testing.T, pid int, field string) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, _ := strconv.Atoi(strings.Fields(v)[0])
			return n
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// Idle connections hold no thread (each used to pin one: 10,500 of them
// killed the agent with thread exhaustion); past --max-connections a
// connection is told why and closed; a frame sent too slowly and a
// connection idle without references are closed; leases stay.
func TestConnectionsAreBoundedAndIdleOnesHoldNoThread(t *testing.T) {
	e := newEnv(t)
	a := e.startAgent("--max-connections", "1500", "--read-timeout", "1s", "--idle-timeout", "5s")
	pid := a.cmd.Process.Pid
	threads0 := procStatus(t, pid, "Threads")
	holder := e.dial()
	if _, err := holder.Create(context.Background(), "lease", "u8", []int64{8}); err != nil {
		t.Fatal(err)
	}
	var idle []*net.UnixConn
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()
	hello, _ := v1.EncodeRequest(&v1.Request{ID: 1, Op: v1.OpHello})
	for i := 0; i < 1400; i++ {
		c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: e.socket, Net: "unix"})
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		if i%2 == 0 { // half answer a hello first, half never send a byte
			c.Write(hello)
			readAnswer(t, c)
		}
		idle = append(idle, c)
	}
	time.Sleep(300 * time.Millisecond) // past the hot wait: every idle connection parked
	if n := procStatus(t, pid, "Threads"); n > threads0+64 {
		t.Fatalf("%d threads with 1400 idle connections (%d before): idle connections hold threads", n, threads0)
	}
	// Past the limit: an answer saying why, then the end of the stream.
	var extra []*net.UnixConn
	for len(idle)+len(extra)+2 < 1500+5 {
		c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: e.socket, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		extra = append(extra, c)
	}
	refused := 0
	for _, c := range extra {
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if resp, err := tryAnswer(c); err == nil && resp.Error != nil && resp.Error.Code == errdefs.CodeUnavailable &&
			strings.Contains(resp.Error.Message, "at most 1500 connections") {
			refused++
		}
		c.Close()
	}
	if refused == 0 {
		t.Fatal("no connection past --max-connections was told why")
	}
	// A frame that does not arrive whole within --read-timeout: closed.
	slow, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: e.socket, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	slow.Write(hello[:5])
	slow.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := slow.Read(make([]byte, 64)); err != io.EOF {
		t.Fatalf("a slowloris frame: %v, want the agent to close the connection", err)
	}
	slow.Close()
	// --idle-timeout closes idle connections without references; the lease stays.
	time.Sleep(5500 * time.Millisecond)
	closed := 0
	for _, c := range idle[:50] {
		c.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := c.Read(make([]byte, 1)); err == io.EOF {
			closed++
		}
	}
	if closed != 50 {
		t.Fatalf("%d of 50 idle connections without references closed after --idle-timeout", closed)
	}
	if _, err := holder.Get(context.Background(), "lease"); err != nil {
		t.Fatalf("the connection holding a tensor was closed too: %v", err)
	}
	for _, c := range idle {
		c.Close()
	}
	idle = nil
	e.waitFor("threads back", 5*time.Second, func() bool { return procStatus(t, pid, "Threads") <= threads0+8 })
}

func readAnswer(t *testing.T, c *net.UnixConn) *v1.Response {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := tryAnswer(c)
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Time{})
	return resp
}

func tryAnswer(c *net.UnixConn) (*v1.Response, error) {
	_, body, err := v1.ReadFrame(c)
	if err != nil {
		return nil, err
	}
	return v1.DecodeResponse(body)
}
