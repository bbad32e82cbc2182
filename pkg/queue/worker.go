package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	v1 "github.com/memcuda/memcuda/api/v1"
	"github.com/memcuda/memcuda/pkg/errdefs"
	"github.com/memcuda/memcuda/pkg/registry"
	"github.com/memcuda/memcuda/pkg/store"
)

// MaxDeadLetters bounds the dead-letter list.
const MaxDeadLetters = 10000

// Store is what the worker applies commands to (the agent's store).
type Store interface {
	Create(ctx context.Context, p store.CreateParams) (v1.Tensor, store.Commit, error)
	Get(ctx context.Context, p store.GetParams) (v1.Tensor, store.Commit, error)
	Release(ctx context.Context, p store.ReleaseParams) (registry.ReleaseResult, error)
	Delete(ctx context.Context, name, reqID string, who store.Who) (registry.ReleaseResult, error)
	Stat(ctx context.Context, name string) (v1.Tensor, error)
	List(ctx context.Context, prefix, cursor string, limit int) ([]v1.Tensor, string, error)
	Holders(ctx context.Context, name string) (map[string]int64, error)
}

// Observer records each handled command (the agent's metrics).
type Observer interface {
	Observe(path, op string, err error, start time.Time)
}

type noObserver struct{}

func (noObserver) Observe(string, string, error, time.Time) {}

// Worker takes commands from the list and applies them to the store.
type Worker struct {
	st       Store
	rdb      redis.UniversalClient
	keys     registry.Keys
	log      *slog.Logger
	obs      Observer
	replyTTL time.Duration
	block    time.Duration
}

// Option configures a Worker.
type Option func(*Worker)

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(w *Worker) { w.log = l } }

// WithObserver records every command.
func WithObserver(o Observer) Option { return func(w *Worker) { w.obs = o } }

// WithReplyTTL sets how long reply lists live (default 60s).
func WithReplyTTL(d time.Duration) Option { return func(w *Worker) { w.replyTTL = d } }

// maxBackoff caps the wait between attempts while Redis is down.
const maxBackoff = 5 * time.Second

// NewWorker returns a worker that takes the commands of keys' prefix and
// node from rdb and applies them to st.
func NewWorker(st Store, rdb redis.UniversalClient, keys registry.Keys, opts ...Option) *Worker {
	w := &Worker{st: st, rdb: rdb, keys: keys, log: slog.Default(), obs: noObserver{}, replyTTL: time.Minute, block: time.Second}
	for _, o := range opts {
		o(w)
	}
	return w
}

// lanes is how many commands run at once: those of one name always share a
// lane, in the order they were queued, so one slow command (a get waiting
// for a tensor's pending write, say) holds up only its lane.
const lanes = 8

// Run handles commands until ctx ends. It first finishes what a crashed
// predecessor (or itself, before a Redis outage) left in the processing list,
// then blocks on the command list. While Redis is unreachable it retries with
// backoff and never exits.
func (w *Worker) Run(ctx context.Context) {
	var chans [lanes]chan string
	var wg sync.WaitGroup
	// inflight counts the commands handed to lanes and not done: a drain of
	// the processing list after a Redis outage must not send them again.
	var mu sync.Mutex
	inflight := map[string]int{}
	for i := range chans {
		chans[i] = make(chan string, 64)
		wg.Add(1)
		go func(in chan string) {
			defer wg.Done()
			for raw := range in {
				w.processUntilDone(ctx, raw)
				mu.Lock()
				if inflight[raw]--; inflight[raw] <= 0 {
					delete(inflight, raw)
				}
				mu.Unlock()
			}
		}(chans[i])
	}
	defer func() {
		for _, c := range chans {
			close(c)
		}
		wg.Wait()
	}()
	dispatch := func(raw string) {
		mu.Lock()
		inflight[raw]++
		mu.Unlock()
		select {
		case chans[laneOf(raw)] <- raw:
		case <-ctx.Done():
		}
	}
	// covered reports, for a command found in the processing list, whether
	// a lane already has it (each in-flight copy covers one entry).
	covered := func(seen map[string]int, raw string) bool {
		mu.Lock()
		defer mu.Unlock()
		seen[raw]++
		return seen[raw] <= inflight[raw]
	}
	wait := 50 * time.Millisecond
	for ctx.Err() == nil {
		err := w.drainProcessing(ctx, dispatch, covered)
		if err == nil {
			wait = 50 * time.Millisecond
			err = w.loop(ctx, dispatch)
		}
		if ctx.Err() != nil {
			return
		}
		w.log.Warn("command queue paused; retrying", "err", err, "in", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(wait*2, maxBackoff)
	}
}

// laneOf keeps the commands of one name in one lane (a command whose name
// cannot be read goes by its bytes).
func laneOf(raw string) int {
	var c struct {
		Name string `json:"name"`
	}
	key := raw
	if json.Unmarshal([]byte(raw), &c) == nil && c.Name != "" {
		key = c.Name
	}
	h := fnv.New32a()
	h.Write([]byte(key))
	return int(h.Sum32() % lanes)
}

// drainProcessing hands over every command left in the processing list
// that no lane has: a crashed predecessor's, or one whose BLMOVE reply
// was lost when Redis went away.
func (w *Worker) drainProcessing(ctx context.Context, dispatch func(string), covered func(map[string]int, string) bool) error {
	items, err := w.rdb.LRange(ctx, w.keys.Processing(), 0, -1).Result()
	if err != nil {
		return registry.Wrap(err)
	}
	if len(items) > 0 {
		w.log.Info("resuming commands left in the processing list", "count", len(items))
	}
	seen := map[string]int{}
	for _, raw := range items {
		if !covered(seen, raw) {
			dispatch(raw)
		}
	}
	return nil
}

func (w *Worker) loop(ctx context.Context, dispatch func(string)) error {
	for ctx.Err() == nil {
		raw, err := w.rdb.BLMove(ctx, w.keys.Cmd(), w.keys.Processing(), "LEFT", "RIGHT", w.block).Result()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return registry.Wrap(err)
		}
		dispatch(raw)
	}
	return nil
}

// processUntilDone handles one command, retrying while Redis is down.
func (w *Worker) processUntilDone(ctx context.Context, raw string) {
	for wait := 50 * time.Millisecond; ctx.Err() == nil; wait = min(wait*2, maxBackoff) {
		err := w.process(ctx, raw)
		if err == nil {
			return
		}
		w.log.Warn("command waits for Redis; retrying", "err", err, "in", wait)
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
}

// process handles one command and removes it from the processing list. An
// error means Redis is unreachable: the command stays there and is retried.
// Anything else the command causes, however malformed or hostile, ends in an
// error reply or the dead-letter list, never in a stopped queue.
func (w *Worker) process(ctx context.Context, raw string) error {
	start := time.Now()
	cmd, perr := Parse([]byte(raw), w.keys.ReplyPrefix())
	var reply v1.Reply
	var err error
	dead := false
	if perr != nil {
		var pe *ParseError
		errors.As(perr, &pe)
		reply = v1.Reply{ID: pe.ID, Error: &v1.Error{Code: errdefs.Code(perr), Message: perr.Error()}}
		cmd = v1.Command{Op: "malformed", ID: pe.ID, ReplyTo: pe.ReplyTo}
		dead, err = true, perr
	} else {
		reply, err = w.apply(ctx, cmd)
		if unreachable(err) {
			return err // Redis went away mid-command: keep it for the retry.
		}
		if err != nil {
			w.log.Info("command failed", "op", cmd.Op, "name", cmd.Name, "id", cmd.ID, "err", err)
		}
	}
	w.obs.Observe("queue", cmd.Op, err, start)
	if cmd.ReplyTo != "" {
		if rerr := w.reply(ctx, cmd.ReplyTo, reply, raw); unreachable(rerr) {
			return rerr
		} else if rerr == nil && !dead {
			return nil // the reply took the command off the processing list
		} else if rerr != nil {
			// The reply key is not a list (WRONGTYPE) or Redis refuses it:
			// the sender cannot be told; the command goes to the dead letters.
			dead, err = true, fmt.Errorf("reply to %s: %w", cmd.ReplyTo, rerr)
		}
	}
	if dead {
		if derr := w.deadLetter(ctx, raw, err); unreachable(derr) {
			return derr
		} else if derr != nil {
			w.log.Error("could not dead-letter a command; dropping it", "err", derr, "cause", err)
		} else {
			w.log.Warn("command sent to the dead-letter list", "err", err, "reply_to", cmd.ReplyTo)
		}
	}
	if err := w.rdb.LRem(ctx, w.keys.Processing(), 1, raw).Err(); err != nil {
		return registry.Wrap(err)
	}
	return nil
}

// unreachable reports whether err means Redis could not be reached, so the
// command must be kept and retried.
func unreachable(err error) bool {
	return errors.Is(err, errdefs.ErrUnavailable) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)
}

func (w *Worker) apply(ctx context.Context, c v1.Command) (v1.Reply, error) {
	r := v1.Reply{ID: c.ID, OK: true}
	var err error
	var info v1.Tensor
	switch c.Op {
	case v1.OpCreate:
		info, _, err = w.st.Create(ctx, store.CreateParams{Name: c.Name, DType: c.DType, Shape: c.Shape, Device: c.Device, OwnerPID: c.PID, ReqID: c.ID, Who: who(c)})
		r.Tensor = &info
	case v1.OpGet:
		var holder string
		if holder, err = store.PIDHolder(c.PID, c.PIDStart); err != nil {
			break
		}
		info, _, err = w.st.Get(ctx, store.GetParams{Name: c.Name, Holder: holder, ReqID: c.ID})
		r.Tensor = &info
	case v1.OpRelease:
		var holder string
		if holder, err = w.pidHolderOf(ctx, c.Name, c.PID, c.PIDStart); err == nil {
			_, err = w.st.Release(ctx, store.ReleaseParams{Name: c.Name, Holder: holder, Count: 1, ReqID: c.ID})
		}
	case v1.OpDelete:
		_, err = w.st.Delete(ctx, c.Name, c.ID, who(c))
	case v1.OpStat:
		info, err = w.st.Stat(ctx, c.Name)
		r.Tensor = &info
	case v1.OpList:
		r.Tensors, r.Next, err = w.st.List(ctx, c.Prefix, c.Cursor, c.Limit)
	}
	if err != nil {
		return v1.Reply{ID: c.ID, Error: &v1.Error{Code: errdefs.Code(err), Message: err.Error()}}, err
	}
	return r, nil
}

// who is a command's requester for the audit log.
func who(c v1.Command) store.Who {
	w := store.Who{slog.String("via", "queue"), slog.String("request_id", c.ID)}
	if c.PID != 0 {
		w = append(w, slog.Int("pid", c.PID))
	}
	return w
}

// pidHolderOf finds the holder of pid's references on name: the process may
// have exited already, so its start time is read from the refs hash (or
// taken from the command, when it gives one).
func (w *Worker) pidHolderOf(ctx context.Context, name string, pid int, start uint64) (string, error) {
	holders, err := w.st.Holders(ctx, name)
	if err != nil {
		return "", err
	}
	for h := range holders {
		if registry.IsPIDHolderOf(h, pid, start) {
			return h, nil
		}
	}
	if _, err := w.st.Stat(ctx, name); err != nil {
		return "", err
	}
	return "", fmt.Errorf("%w: pid %d holds no reference on %q", errdefs.ErrFailedPrecondition, pid, name)
}

// reply pushes r and takes the command raw off the processing list in one
// transaction: a crash between the two would answer the command again when
// the next worker replays it.
func (w *Worker) reply(ctx context.Context, key string, r v1.Reply, raw string) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	_, err = w.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.RPush(ctx, key, b)
		p.Expire(ctx, key, w.replyTTL)
		p.LRem(ctx, w.keys.Processing(), 1, raw)
		return nil
	})
	return registry.Wrap(err)
}

func (w *Worker) deadLetter(ctx context.Context, raw string, cause error) error {
	if len(raw) > MaxCommandSize {
		raw = raw[:MaxCommandSize]
	}
	b, _ := json.Marshal(v1.DeadLetter{Command: raw, Error: cause.Error(), Time: time.Now().UnixMilli(), Node: w.keys.Node})
	_, err := w.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.LPush(ctx, w.keys.Dead(), b)
		p.LTrim(ctx, w.keys.Dead(), 0, MaxDeadLetters-1)
		return nil
	})
	return registry.Wrap(err)
}
