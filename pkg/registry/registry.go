package registry

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	v1 "github.com/memcuda/memcuda/api/v1"
	"github.com/memcuda/memcuda/pkg/errdefs"
)

var (
	//go:embed lua/create.lua
	createLua string
	//go:embed lua/acquire.lua
	acquireLua string
	//go:embed lua/release.lua
	releaseLua string
	//go:embed lua/remove.lua
	removeLua string
	//go:embed lua/publish.lua
	publishLua string
	//go:embed lua/untrack.lua
	untrackLua string
	//go:embed lua/page.lua
	pageLua string
	//go:embed lua/adopt.lua
	adoptLua string
	//go:embed lua/orphan.lua
	orphanLua string
	//go:embed lua/reattach.lua
	reattachLua string
	//go:embed lua/restore.lua
	restoreLua string

	createScript   = redis.NewScript(createLua)
	acquireScript  = redis.NewScript(acquireLua)
	releaseScript  = redis.NewScript(releaseLua)
	removeScript   = redis.NewScript(removeLua)
	publishScript  = redis.NewScript(publishLua)
	untrackScript  = redis.NewScript(untrackLua)
	pageScript     = redis.NewScript(pageLua)
	adoptScript    = redis.NewScript(adoptLua)
	orphanScript   = redis.NewScript(orphanLua)
	reattachScript = redis.NewScript(reattachLua)
	restoreScript  = redis.NewScript(restoreLua)
)

// RequestTTL is how long an applied request id is remembered: a command
// replayed within it (a retry, or the worker resuming after a crash) is
// not applied twice.
const RequestTTL = 24 * time.Hour

// Registry reads and writes tensor records in Redis.
type Registry struct {
	rdb  redis.UniversalClient
	keys Keys
	now  func() time.Time
	live *Liveness
}

// Option configures a Registry.
type Option func(*Registry)

// WithLiveness lets Up say whether Redis is there without a round trip.
func WithLiveness(l *Liveness) Option { return func(r *Registry) { r.live = l } }

// New returns a registry over rdb with the given keys.
func New(rdb redis.UniversalClient, keys Keys, opts ...Option) *Registry {
	r := &Registry{rdb: rdb, keys: keys, now: time.Now}
	for _, o := range opts {
		o(r)
	}
	return r
}

// Keys returns the registry's key names.
func (r *Registry) Keys() Keys { return r.keys }

// Client is the Redis client.
func (r *Registry) Client() redis.UniversalClient { return r.rdb }

// Load loads every script so later calls run by SHA.
func (r *Registry) Load(ctx context.Context) error {
	for _, s := range []*redis.Script{createScript, acquireScript, releaseScript, removeScript, publishScript, untrackScript, pageScript,
		adoptScript, orphanScript, reattachScript, restoreScript} {
		if err := s.Load(ctx, r.rdb).Err(); err != nil {
			return Wrap(err)
		}
	}
	return nil
}

// Up reports whether Redis is believed reachable: false only when the
// liveness watch saw it go (always true without one).
func (r *Registry) Up() bool { return r.live == nil || r.live.Up() }

// Ping checks that Redis answers.
func (r *Registry) Ping(ctx context.Context) error { return Wrap(r.rdb.Ping(ctx).Err()) }

// Wrap classifies a Redis error: a missing key is not found, an error reply
// from the server is internal, anything else (connection refused, timeouts,
// a loading or read-only server) is unavailable.
func Wrap(err error) error {
	var rerr redis.Error
	switch {
	case err == nil:
		return nil
	case errors.Is(err, redis.Nil):
		return fmt.Errorf("%w: %w", errdefs.ErrNotFound, err)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	case errors.As(err, &rerr) && !isTransient(rerr.Error()):
		return fmt.Errorf("%w: redis: %w", errdefs.ErrInternal, err)
	default:
		return fmt.Errorf("%w: redis: %w", errdefs.ErrUnavailable, err)
	}
}

func isTransient(msg string) bool {
	for _, p := range []string{"LOADING", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "BUSY"} {
		if len(msg) >= len(p) && msg[:len(p)] == p {
			return true
		}
	}
	return false
}

func (r *Registry) nowMS() int64 { return r.now().UnixMilli() }

func reqArgs(reqID string) (string, string) {
	if reqID == "" {
		return "0", "0"
	}
	return "1", ""
}

// CreateResult says what Create did.
type CreateResult struct {
	Created bool      // false: the name existed (Info is the existing record)
	Dup     bool      // the request id was applied before
	Info    v1.Tensor // the record as stored
}

// Create stores a new record with refcount 1 (the registry's reference), or 2
// when holder is not empty. An existing name is returned, not overwritten.
func (r *Registry) Create(ctx context.Context, info v1.Tensor, holder, reqID string) (CreateResult, error) {
	info.Refcount = 1
	if holder != "" {
		info.Refcount = 2
	}
	fields, err := toFields(info)
	if err != nil {
		return CreateResult{}, err
	}
	useReq, _ := reqArgs(reqID)
	args := []any{useReq, int64(RequestTTL / time.Second), holder, info.Ctime, info.Name}
	args = append(args, fields...)
	res, err := createScript.Run(ctx, r.rdb, []string{r.keys.Meta(info.Name), r.keys.Refs(info.Name), r.keys.Index(), r.keys.Req(reqID), r.keys.Names(), r.keys.HeldBy(KindPID), r.keys.HeldBy(KindPod)}, args...).Slice()
	if err != nil {
		return CreateResult{}, Wrap(err)
	}
	status, _ := res[0].(string)
	if status == "created" {
		// The record is what was written: Redis does not send it back.
		return CreateResult{Created: true, Info: info}, nil
	}
	var rec v1.Tensor
	if len(res) > 1 {
		if rec, err = fromReply(res[1]); err != nil {
			return CreateResult{}, err
		}
	}
	switch status {
	case "exists":
		return CreateResult{Info: rec}, nil
	case "dup":
		return CreateResult{Dup: true, Info: rec}, nil
	}
	return CreateResult{}, fmt.Errorf("%w: create script returned %q", errdefs.ErrInternal, status)
}

// Acquire takes one reference on a ready tensor owned by agent. known, when
// not nil, returns the record as created for a uid (the owning agent keeps
// it): Redis then answers only with what changes after create (refcount,
// mtime, event) instead of the whole record. A uid that known does not
// have is read in full.
func (r *Registry) Acquire(ctx context.Context, name, holder, agent, reqID string, known func(uid string) (v1.Tensor, bool)) (v1.Tensor, error) {
	useReq, _ := reqArgs(reqID)
	brief := "0"
	if known != nil {
		brief = "1"
	}
	now := r.nowMS()
	res, err := acquireScript.Run(ctx, r.rdb, []string{r.keys.Meta(name), r.keys.Refs(name), r.keys.Req(reqID), r.keys.HeldBy(KindPID), r.keys.HeldBy(KindPod)},
		useReq, int64(RequestTTL/time.Second), holder, now, agent, brief, name).Slice()
	if err != nil {
		return v1.Tensor{}, Wrap(err)
	}
	switch res[0] {
	case "brief":
		uid, _ := res[1].(string)
		n, _ := res[2].(int64)
		event, _ := res[3].(string)
		info, ok := known(uid)
		if !ok {
			return r.Stat(ctx, name)
		}
		info.Refcount, info.Mtime, info.Event, info.State = n, now, event, v1.StateReady
		return info, nil
	case "dup":
		info, err := fromReply(res[1])
		if err == nil && info.UID == "" {
			// The request ran before (a replay after a crash), and the
			// tensor has gone since: there is nothing to hand out.
			return v1.Tensor{}, fmt.Errorf("%w: tensor %q (request %s was applied before, and the tensor is gone since)", errdefs.ErrNotFound, name, reqID)
		}
		return info, err
	case "ok":
		return fromReply(res[1])
	case "not_found":
		return v1.Tensor{}, fmt.Errorf("%w: tensor %q", errdefs.ErrNotFound, name)
	case "deleted":
		return v1.Tensor{}, fmt.Errorf("%w: tensor %q is deleted and waits for its last references to go", errdefs.ErrNotFound, name)
	case "orphaned":
		return v1.Tensor{}, fmt.Errorf("%w: tensor %q outlived the agent that made it; its memory (legacy CUDA IPC) stays usable only by "+
			"the processes that had it open, and its record goes with the last of them", errdefs.ErrFailedPrecondition, name)
	case "stale":
		return v1.Tensor{}, fmt.Errorf("%w: tensor %q belongs to another agent instance and is being reconciled", errdefs.ErrUnavailable, name)
	}
	return v1.Tensor{}, fmt.Errorf("%w: acquire script returned %v", errdefs.ErrInternal, res[0])
}

// ReleaseResult says what Release did.
type ReleaseResult struct {
	Freed    bool   // refcount reached 0: the record is gone
	UID      string // uid of the tensor
	Refcount int64  // refcount left when not freed
	Dup      bool   // the request id was applied before
}

// AllRefs releases every reference of a holder.
const AllRefs = 0

// Release drops count references of holder (AllRefs: all of them). With
// markDeleted it is delete: the tensor takes no new references.
func (r *Registry) Release(ctx context.Context, name, holder string, count int64, markDeleted bool, reqID string) (ReleaseResult, error) {
	useReq, _ := reqArgs(reqID)
	c := "all"
	if count != AllRefs {
		c = strconv.FormatInt(count, 10)
	}
	del := "0"
	if markDeleted {
		del = "1"
	}
	res, err := releaseScript.Run(ctx, r.rdb, []string{r.keys.Meta(name), r.keys.Refs(name), r.keys.Index(), r.keys.Req(reqID), r.keys.Names(), r.keys.HeldBy(KindPID), r.keys.HeldBy(KindPod)},
		useReq, int64(RequestTTL/time.Second), holder, c, r.nowMS(), del, name).Slice()
	if err != nil {
		return ReleaseResult{}, Wrap(err)
	}
	switch res[0] {
	case "ok":
		n, _ := strconv.ParseInt(res[1].(string), 10, 64)
		uid, _ := res[2].(string)
		return ReleaseResult{Refcount: n, UID: uid}, nil
	case "freed":
		uid, _ := res[1].(string)
		return ReleaseResult{Freed: true, UID: uid}, nil
	case "dup":
		return ReleaseResult{Dup: true}, nil
	case "not_found":
		return ReleaseResult{}, fmt.Errorf("%w: tensor %q", errdefs.ErrNotFound, name)
	case "not_held":
		return ReleaseResult{}, fmt.Errorf("%w: %s holds no reference on tensor %q", errdefs.ErrFailedPrecondition, holder, name)
	}
	return ReleaseResult{}, fmt.Errorf("%w: release script returned %v", errdefs.ErrInternal, res[0])
}

// Remove deletes the record of a tensor owned by agent whose memory is gone.
// agent "" removes an index entry that has no record.
func (r *Registry) Remove(ctx context.Context, name, agent string) (bool, error) {
	n, err := removeScript.Run(ctx, r.rdb, []string{r.keys.Meta(name), r.keys.Refs(name), r.keys.Index(), r.keys.Names(), r.keys.HeldBy(KindPID), r.keys.HeldBy(KindPod)}, name, agent).Int()
	return n == 1, Wrap(err)
}

// Adopt makes the records of names that agent instance old made this
// instance's (new), for a new agent that holds their memory now. It
// returns the names adopted; a record of another instance is left alone.
func (r *Registry) Adopt(ctx context.Context, names []string, old, new string) ([]string, error) {
	var adopted []string
	for len(names) > 0 {
		batch := names[:min(len(names), 1000)]
		names = names[len(batch):]
		pipe := r.rdb.Pipeline()
		cmds := make([]*redis.Cmd, len(batch))
		for i, n := range batch {
			cmds[i] = adoptScript.EvalSha(ctx, pipe, []string{r.keys.Meta(n)}, old, new)
		}
		if _, err := pipe.Exec(ctx); err != nil && !isNoScript(err) {
			return adopted, Wrap(err)
		}
		for i, c := range cmds {
			if isNoScript(c.Err()) {
				// Redis lost its scripts (a restart): run this one by value, which loads it again.
				c = adoptScript.Run(ctx, r.rdb, []string{r.keys.Meta(batch[i])}, old, new)
			}
			n, err := c.Int()
			if err != nil {
				return adopted, Wrap(err)
			}
			if n == 1 {
				adopted = append(adopted, batch[i])
			}
		}
	}
	return adopted, nil
}

func isNoScript(err error) bool { return err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT") }

// Orphan makes a record of agent instance old, whose memory lives on only
// in the processes that opened it, this instance's and orphaned: no new
// references, and it goes with its last holder. removed: nobody held it,
// the record is gone.
func (r *Registry) Orphan(ctx context.Context, name, old, new string) (removed bool, err error) {
	n, err := orphanScript.Run(ctx, r.rdb, []string{r.keys.Meta(name), r.keys.Refs(name), r.keys.Index(), r.keys.Names(), r.keys.HeldBy(KindPID), r.keys.HeldBy(KindPod)},
		old, new, r.nowMS(), name).Int()
	return n == 2, Wrap(err)
}

// Reattach moves the reference a connection of an earlier agent instance
// (oldHolder) held on name to a connection of this one. moved is false
// when oldHolder held none (the record is returned only when moved).
func (r *Registry) Reattach(ctx context.Context, name, oldHolder, newHolder string) (info v1.Tensor, moved bool, err error) {
	res, err := reattachScript.Run(ctx, r.rdb, []string{r.keys.Meta(name), r.keys.Refs(name)}, oldHolder, newHolder, r.nowMS()).Slice()
	if err != nil {
		return v1.Tensor{}, false, Wrap(err)
	}
	switch res[0] {
	case "moved":
		info, err := fromReply(res[1])
		return info, err == nil, err
	case "not_held":
		return v1.Tensor{}, false, nil
	case "not_found":
		return v1.Tensor{}, false, fmt.Errorf("%w: tensor %q", errdefs.ErrNotFound, name)
	}
	return v1.Tensor{}, false, fmt.Errorf("%w: reattach script returned %v", errdefs.ErrInternal, res[0])
}

// Restore writes back a record and its reference holders into a Redis that
// lost them; the refcount is the holders' sum. It reports false, writing
// nothing, when Redis has a record of that name.
func (r *Registry) Restore(ctx context.Context, info v1.Tensor, holders map[string]int64) (bool, error) {
	info.Refcount = 0
	args := []any{info.Name, info.Ctime, len(holders)}
	for h, n := range holders {
		args = append(args, h, n)
		info.Refcount += n
	}
	fields, err := toFields(info)
	if err != nil {
		return false, err
	}
	args = append(args, fields...)
	n, err := restoreScript.Run(ctx, r.rdb, []string{r.keys.Meta(info.Name), r.keys.Refs(info.Name), r.keys.Index(), r.keys.Names(),
		r.keys.HeldBy(KindPID), r.keys.HeldBy(KindPod)}, args...).Int()
	return n == 1, Wrap(err)
}

// HoldersOf returns the reference holders of each name (pipelined).
func (r *Registry) HoldersOf(ctx context.Context, names []string) (map[string]map[string]int64, error) {
	out := make(map[string]map[string]int64, len(names))
	for len(names) > 0 {
		batch := names[:min(len(names), 1000)]
		names = names[len(batch):]
		pipe := r.rdb.Pipeline()
		cmds := make([]*redis.MapStringStringCmd, len(batch))
		for i, n := range batch {
			cmds[i] = pipe.HGetAll(ctx, r.keys.Refs(n))
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return nil, Wrap(err)
		}
		for i, c := range cmds {
			h := make(map[string]int64, len(c.Val()))
			for k, v := range c.Val() {
				n, _ := strconv.ParseInt(v, 10, 64)
				h[k] = n
			}
			out[batch[i]] = h
		}
	}
	return out, nil
}

// MarkEpoch records that Redis holds this agent's records (a key of its
// own): when Redis comes back without it, it lost them (EpochLost).
func (r *Registry) MarkEpoch(ctx context.Context, instance string) error {
	return Wrap(r.rdb.Set(ctx, r.keys.Epoch(), instance, 0).Err())
}

// EpochLost reports whether Redis lost the mark of MarkEpoch: it came back
// without its data.
func (r *Registry) EpochLost(ctx context.Context) (bool, error) {
	n, err := r.rdb.Exists(ctx, r.keys.Epoch()).Result()
	return n == 0, Wrap(err)
}

// Publish stores the IPC event handle (base64) readers of name wait on.
func (r *Registry) Publish(ctx context.Context, name, event string) error {
	n, err := publishScript.Run(ctx, r.rdb, []string{r.keys.Meta(name)}, event, r.nowMS()).Int()
	if err != nil {
		return Wrap(err)
	}
	if n == 0 {
		return fmt.Errorf("%w: tensor %q", errdefs.ErrNotFound, name)
	}
	return nil
}

// Stat reads one record.
func (r *Registry) Stat(ctx context.Context, name string) (v1.Tensor, error) {
	m, err := r.rdb.HGetAll(ctx, r.keys.Meta(name)).Result()
	if err != nil {
		return v1.Tensor{}, Wrap(err)
	}
	if len(m) == 0 {
		return v1.Tensor{}, fmt.Errorf("%w: tensor %q", errdefs.ErrNotFound, name)
	}
	return fromMap(m)
}

// Names lists the index.
func (r *Registry) Names(ctx context.Context) ([]string, error) {
	names, err := r.rdb.ZRange(ctx, r.keys.Index(), 0, -1).Result()
	return names, Wrap(err)
}

// List reads the records whose names start with prefix, in name order:
// at most limit of them (0: no limit) after cursor (a name; "" to start).
// next is the cursor of the following page, "" after the last. Index
// entries without a record (a half-finished removal) are skipped.
func (r *Registry) List(ctx context.Context, prefix, cursor string, limit int) (list []v1.Tensor, next string, err error) {
	lo, hi := "-", "+"
	if prefix != "" {
		lo, hi = "["+prefix, "["+prefix+"\xff" // names are ASCII: every one with the prefix sorts below \xff
	}
	if cursor != "" {
		lo = "(" + cursor
	}
	count := 0
	if limit > 0 {
		count = limit + 1 // one more tells whether a next page exists
	}
	args := make([]any, 0, 4+len(recordFields))
	args = append(args, lo, hi, count, r.keys.Meta(""))
	for _, f := range recordFields {
		args = append(args, f)
	}
	res, err := pageScript.Run(ctx, r.rdb, []string{r.keys.Names()}, args...).Slice()
	if err != nil {
		return nil, "", Wrap(err)
	}
	n := len(res) / 2
	if limit > 0 && n > limit {
		n = limit
		next, _ = res[2*(limit-1)].(string)
	}
	list = make([]v1.Tensor, 0, n)
	for i := 0; i < n; i++ {
		joined, ok := res[2*i+1].(string)
		if !ok {
			continue // an index entry without a record (a half-finished removal)
		}
		info, err := fromJoined(joined)
		if err != nil {
			return nil, "", err
		}
		list = append(list, info)
	}
	return list, next, nil
}

// parseShape reads a record's shape, "[2,3]", without reflection.
func parseShape(s string) ([]int64, error) {
	if len(s) < 2 || s[0] != '[' || s[len(s)-1] != ']' {
		return nil, fmt.Errorf("want a JSON array of integers")
	}
	inner := s[1 : len(s)-1]
	out := []int64{}
	if inner == "" {
		return out, nil
	}
	for _, p := range strings.Split(inner, ",") {
		n, err := strconv.ParseInt(strings.TrimSpace(p), 10, 64)
		if err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	return out, nil
}

// IndexNames makes the name index hold exactly the names of the time index
// (a Redis written by an agent from before the name index existed, or a
// crash between the two), and the holder-kind sets every name with a pid or
// pod reference.
func (r *Registry) IndexNames(ctx context.Context) error {
	names, err := r.Names(ctx)
	if err != nil {
		return err
	}
	indexed, err := r.rdb.ZRange(ctx, r.keys.Names(), 0, -1).Result()
	if err != nil {
		return Wrap(err)
	}
	known := make(map[string]bool, len(names))
	for _, n := range names {
		known[n] = true
	}
	var stale []any
	for _, n := range indexed {
		if !known[n] {
			stale = append(stale, n)
		}
	}
	if len(stale) > 0 {
		if err := r.rdb.ZRem(ctx, r.keys.Names(), stale...).Err(); err != nil {
			return Wrap(err)
		}
	}
	if err := r.indexHolders(ctx, names); err != nil {
		return err
	}
	for len(names) > 0 {
		batch := names[:min(len(names), 1000)]
		names = names[len(batch):]
		zs := make([]redis.Z, len(batch))
		for i, n := range batch {
			zs[i] = redis.Z{Score: 0, Member: n}
		}
		if err := r.rdb.ZAdd(ctx, r.keys.Names(), zs...).Err(); err != nil {
			return Wrap(err)
		}
	}
	return nil
}

// indexHolders adds every name with a pid or pod reference to its kind's set.
func (r *Registry) indexHolders(ctx context.Context, names []string) error {
	for len(names) > 0 {
		batch := names[:min(len(names), 1000)]
		names = names[len(batch):]
		pipe := r.rdb.Pipeline()
		cmds := make([]*redis.StringSliceCmd, len(batch))
		for i, n := range batch {
			cmds[i] = pipe.HKeys(ctx, r.keys.Refs(n))
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return Wrap(err)
		}
		add := map[string][]any{}
		for i, c := range cmds {
			for _, h := range c.Val() {
				if kind, _, ok := strings.Cut(h, ":"); ok && (kind == KindPID || kind == KindPod) {
					add[kind] = append(add[kind], batch[i])
				}
			}
		}
		for kind, ns := range add {
			if err := r.rdb.SAdd(ctx, r.keys.HeldBy(kind), ns...).Err(); err != nil {
				return Wrap(err)
			}
		}
	}
	return nil
}

// HeldBy returns the names references of a holder kind may hold.
func (r *Registry) HeldBy(ctx context.Context, kind string) ([]string, error) {
	names, err := r.rdb.SMembers(ctx, r.keys.HeldBy(kind)).Result()
	return names, Wrap(err)
}

// NotHeldBy takes names out of a holder kind's set when none of their
// references is of that kind (checked atomically: a reference taken since
// the caller looked keeps its name in).
func (r *Registry) NotHeldBy(ctx context.Context, kind string, names ...string) error {
	for len(names) > 0 {
		batch := names[:min(len(names), 500)]
		names = names[len(batch):]
		keys := []string{r.keys.HeldBy(kind)}
		args := []any{kind + ":"}
		for _, n := range batch {
			keys = append(keys, r.keys.Refs(n))
			args = append(args, n)
		}
		if err := untrackScript.Run(ctx, r.rdb, keys, args...).Err(); err != nil {
			return Wrap(err)
		}
	}
	return nil
}

// Holders returns the reference holders of a tensor and their counts.
func (r *Registry) Holders(ctx context.Context, name string) (map[string]int64, error) {
	m, err := r.rdb.HGetAll(ctx, r.keys.Refs(name)).Result()
	if err != nil {
		return nil, Wrap(err)
	}
	out := make(map[string]int64, len(m))
	for k, v := range m {
		n, _ := strconv.ParseInt(v, 10, 64)
		out[k] = n
	}
	return out, nil
}

func toFields(info v1.Tensor) ([]any, error) {
	shape, err := json.Marshal(info.Shape)
	if err != nil {
		return nil, err
	}
	if info.Shape == nil {
		shape = []byte("[]")
	}
	fields := []any{
		"name", info.Name, "uid", info.UID, "dtype", string(info.DType), "shape", string(shape),
		"device", info.Device, "device_uuid", info.DeviceUUID, "bytes", info.Bytes,
		"ipc_mode", string(info.IPCMode), "ipc_handle", info.IPCHandle, "offset", info.Offset,
		"segment_id", info.SegmentID, "segment_size", info.SegmentSize,
		"owner_pid", info.OwnerPID, "state", string(info.State), "agent", info.Agent, "node", info.Node,
		"tenant", info.Tenant, "event", info.Event, "ctime", info.Ctime, "mtime", info.Mtime,
		"refcount", info.Refcount,
	}
	if len(info.Pieces) > 0 {
		fields = append(fields, "pieces", v1.FormatPieces(info.Pieces))
	}
	return fields, nil
}

func fromReply(v any) (v1.Tensor, error) {
	flat, ok := v.([]any)
	if !ok || len(flat)%2 != 0 {
		return v1.Tensor{}, fmt.Errorf("%w: unexpected record reply %T", errdefs.ErrInternal, v)
	}
	m := make(map[string]string, len(flat)/2)
	for i := 0; i < len(flat); i += 2 {
		k, _ := flat[i].(string)
		val, _ := flat[i+1].(string)
		m[k] = val
	}
	return fromMap(m)
}

func fromMap(m map[string]string) (v1.Tensor, error) {
	return fromFields(func(k string) string { return m[k] })
}

// recordFields are the hash fields a list reads (HMGET), in this order.
var recordFields = []string{"name", "uid", "dtype", "shape", "device", "device_uuid", "bytes", "ipc_mode", "ipc_handle",
	"offset", "segment_id", "segment_size", "owner_pid", "refcount", "state", "agent", "node", "tenant", "event", "ctime", "mtime", "pieces"}

var recordField = func() map[string]int {
	m := make(map[string]int, len(recordFields))
	for i, f := range recordFields {
		m[f] = i
	}
	return m
}()

// fromJoined is the record of the page script: recordFields' values
// joined by the unit separator.
func fromJoined(joined string) (v1.Tensor, error) {
	vals := strings.Split(joined, "\x1f")
	if len(vals) != len(recordFields) {
		return v1.Tensor{}, fmt.Errorf("%w: a listed record has %d fields, want %d", errdefs.ErrInternal, len(vals), len(recordFields))
	}
	return fromFields(func(k string) string { return vals[recordField[k]] })
}

// fromFields builds a record from its hash fields.
func fromFields(get func(field string) string) (v1.Tensor, error) {
	var info v1.Tensor
	var errs []error
	num := func(k string) int64 {
		v := get(k)
		if v == "" {
			return 0
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			errs = append(errs, fmt.Errorf("field %s=%q: %w", k, v, err))
		}
		return n
	}
	info.Name = get("name")
	info.UID = get("uid")
	info.DType = v1.DType(get("dtype"))
	if s := get("shape"); s != "" {
		var err error
		if info.Shape, err = parseShape(s); err != nil {
			errs = append(errs, fmt.Errorf("field shape=%q: %w", s, err))
		}
	}
	info.Device = int(num("device"))
	info.DeviceUUID = get("device_uuid")
	info.Bytes = uint64(num("bytes"))
	info.IPCMode = v1.IPCMode(get("ipc_mode"))
	info.IPCHandle = get("ipc_handle")
	info.Offset = uint64(num("offset"))
	info.SegmentID = get("segment_id")
	info.SegmentSize = uint64(num("segment_size"))
	info.OwnerPID = int(num("owner_pid"))
	info.Refcount = num("refcount")
	info.State = v1.State(get("state"))
	info.Agent = get("agent")
	info.Node = get("node")
	info.Tenant = get("tenant")
	info.Event = get("event")
	info.Ctime = num("ctime")
	info.Mtime = num("mtime")
	if p := get("pieces"); p != "" {
		var err error
		if info.Pieces, err = v1.ParsePieces(p); err != nil {
			errs = append(errs, fmt.Errorf("field pieces=%q: %w", p, err))
		}
	}
	if len(errs) > 0 {
		return info, fmt.Errorf("%w: corrupt record of %q: %w", errdefs.ErrInternal, info.Name, errors.Join(errs...))
	}
	return info, nil
}
