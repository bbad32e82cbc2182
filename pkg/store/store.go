// Package store is the heart of the agent: it ties the pools of each device
// and tenant to the Redis registry. The socket server, the queue worker and
// the pod controller call it; it never speaks a wire protocol itself.
//
// Its parts: the pools (pools.go), the table of the memory it handed out
// (table.go), the per-name order of registry scripts (turn.go), the
// connection leases (leases.go), write-behind commits (writebehind.go),
// zero-fill (zero.go), fences (fence.go), and GC and reconciliation (gc.go).
package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	v1 "github.com/memcuda/memcuda/api/v1"
	"github.com/memcuda/memcuda/pkg/backend"
	"github.com/memcuda/memcuda/pkg/errdefs"
	"github.com/memcuda/memcuda/pkg/pool"
	"github.com/memcuda/memcuda/pkg/registry"
	"github.com/memcuda/memcuda/pkg/tensor"
)

// Store serves create/get/release/delete over one backend and one registry.
type Store struct {
	reg         *registry.Registry
	be          backend.Backend
	instance    string
	node        string
	log         *slog.Logger
	limit       uint64
	zeroFill    bool
	writeBehind bool // socket creates and first gets may be answered before their script
	coalesce    time.Duration
	maxPieces   int // most pieces of one tensor (1: every tensor one block)
	now         func() time.Time
	bg          context.Context // registry writes retried after their request ended
	stop        context.CancelFunc

	pools  *poolSet
	table  *table
	order  *order
	leases *leaseSet
	zeros  zeroQueue
	delays *delayLine // connections' gets in their coalescing window
	// segWatch are the watchers of segments (WatchSegments).
	segWatch segmentWatchers
	uidSeq   atomic.Uint64
	// reconciled: Redis holds no records of a predecessor any more, so the
	// agent's own table may decide creates (write-behind waits for it).
	reconciled atomic.Bool
	surv       survival
	lost       LostFunc
}

// Option configures a Store.
type Option func(*Store)

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(s *Store) { s.log = l } }

// WithDeviceLimit caps the bytes reserved on each device (0: the device's size).
func WithDeviceLimit(n uint64) Option { return func(s *Store) { s.limit = n } }

// WithZeroFill sets whether new tensors are zero-filled (default true). A
// reused block must never show a previous tensor's data, so turn it off only
// when every writer overwrites whole tensors.
func WithZeroFill(on bool) Option { return func(s *Store) { s.zeroFill = on } }

// WithWriteBehind lets a create or get that asks for it (WriteBehind in its
// params) be answered as soon as the agent has decided it, its Redis
// script following in the returned Commit. Default off.
func WithWriteBehind(on bool) Option { return func(s *Store) { s.writeBehind = on } }

// WithCoalesce holds a connection's written-behind get script back for d
// after the answer: a release of that reference within d cancels both, so
// a get, use and release that short costs Redis nothing, and Redis sees
// the connection's references up to d late (plus the script's own time).
// The store then runs the script itself: Get returns no Commit for it.
// 0 (the default): Get's Commit runs the script at once (a release can
// still cancel it before it starts).
func WithCoalesce(d time.Duration) Option { return func(s *Store) { s.coalesce = d } }

// WithMaxPieces lets a create that asks for it (CreateParams.Pieces) be
// given up to n pieces of free memory instead of a new segment (pool's
// AllocPieces). 1 turns it off. Host segments are mapped in parts; vmm
// segments only whole, so there the pieces are cut to abut when their
// segments are mapped side by side (pool.WithWholeMaps); legacy is always
// 1. Default v1.MaxPieces.
func WithMaxPieces(n int) Option { return func(s *Store) { s.maxPieces = n } }

// New returns a store. instance identifies this agent process: records of
// other instances are stale after a restart.
func New(reg *registry.Registry, be backend.Backend, instance, node string, opts ...Option) *Store {
	s := &Store{
		reg: reg, be: be, instance: instance, node: node, log: slog.Default(), zeroFill: true, maxPieces: v1.MaxPieces, now: time.Now,
		table: newTable(), order: newOrder(), leases: newLeaseSet(instance), zeros: zeroQueue{devices: map[int]*deviceZeros{}},
	}
	s.bg, s.stop = context.WithCancel(context.Background())
	for _, o := range opts {
		o(s)
	}
	s.maxPieces = min(max(s.maxPieces, 1), v1.MaxPieces)
	var mapOpts []pool.Option
	switch be.Mode() {
	case v1.ModeVMM:
		// cuMemMap maps a VMM allocation whole (part of one answers
		// CUDA_ERROR_NOT_SUPPORTED, docs/benchmarks.md). With one piece per
		// tensor the rule's segment sizes and cache only cost memory.
		if s.maxPieces > 1 {
			mapOpts = append(mapOpts, pool.WithWholeMaps())
		}
	case v1.ModeLegacy:
		// An IPC handle opens its whole allocation wherever the driver puts it.
		s.maxPieces = 1
	}
	s.delays = newDelayLine()
	if s.writeBehind && s.coalesce > 0 {
		go s.delays.serve(s.bg, s.startDelayed)
	}
	s.pools = &poolSet{
		source: s.newSegmentSource, limit: s.deviceLimit, granularity: s.be.Granularity, events: s.segmentEvents, mapOpts: mapOpts,
		pools: map[poolKey]*pool.Pool[backend.Segment]{}, budgets: map[int]*pool.Budget{},
	}
	return s
}

// NewInstanceID returns a random agent instance id.
func NewInstanceID() string {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b[:])
}

// Instance is this agent's instance id.
func (s *Store) Instance() string { return s.instance }

// Node is the node name.
func (s *Store) Node() string { return s.node }

// Mode is the IPC mode of every tensor of this store.
func (s *Store) Mode() v1.IPCMode { return s.be.Mode() }

// Devices are the backend's devices.
func (s *Store) Devices() []backend.Device { return s.be.Devices() }

// Ping checks that Redis answers.
func (s *Store) Ping(ctx context.Context) error { return s.reg.Ping(ctx) }

// ResolveDevice maps "", an ordinal or a UUID to a device of the backend.
func (s *Store) ResolveDevice(dev string) (backend.Device, error) {
	devs := s.be.Devices()
	if dev == "" {
		dev = "0"
	}
	if n, err := strconv.Atoi(dev); err == nil {
		for _, d := range devs {
			if d.Index == n {
				return d, nil
			}
		}
		return backend.Device{}, errdefs.Invalid("device %d does not exist (the %s backend has %d device(s))", n, s.be.Mode(), len(devs))
	}
	for _, d := range devs {
		if d.UUID != "" && strings.EqualFold(d.UUID, dev) {
			return d, nil
		}
	}
	return backend.Device{}, errdefs.Invalid("no device with UUID %q", dev)
}

func (s *Store) deviceLimit(d backend.Device) uint64 {
	if s.limit > 0 {
		return s.limit
	}
	return d.Total
}

// CreateParams describe a create request.
type CreateParams struct {
	Name     string
	DType    string
	Shape    []int64
	Device   string // "" (device 0), an ordinal, or a device UUID
	Tenant   string
	OwnerPID int
	Holder   string // extra reference to take (a socket lease); "" for none
	ReqID    string
	// WriteBehind asks for the answer before the registry write (see
	// WithWriteBehind); the store decides whether it may.
	WriteBehind bool
	// Pieces: the requester maps tensors in pieces (v1.OpPieces), so the
	// tensor may be given up to the store's bound of them.
	Pieces bool
	// Who asked, for the audit log: slog attributes (pid, pod, namespace...).
	Who Who
}

// Who is the requester of an operation, as the attributes the audit log
// lines carry (creates and deletes are logged at info).
type Who []slog.Attr

// validate checks a create request and returns its dtype, byte size and device.
func (s *Store) validate(p CreateParams) (v1.DType, uint64, backend.Device, error) {
	if err := tensor.ValidateName(p.Name); err != nil {
		return "", 0, backend.Device{}, err
	}
	dt, err := tensor.ParseDType(p.DType)
	if err != nil {
		return "", 0, backend.Device{}, err
	}
	dev, err := s.ResolveDevice(p.Device)
	if err != nil {
		return "", 0, backend.Device{}, err
	}
	n, err := tensor.NumBytes(dt, p.Shape, s.deviceLimit(dev))
	if err != nil {
		return "", 0, backend.Device{}, err
	}
	return dt, n, dev, nil
}

// Create allocates a tensor and registers it, or returns the existing tensor
// of that name when dtype and shape match (taking p.Holder's reference if
// any). A mismatch is ErrAlreadyExists. The commit is nil unless the answer
// came before the registry write (p.WriteBehind); then the caller runs it
// once the answer is out.
func (s *Store) Create(ctx context.Context, p CreateParams) (v1.Tensor, Commit, error) {
	dt, n, dev, err := s.validate(p)
	if err != nil {
		return v1.Tensor{}, nil, err
	}
	if s.writesBehind(p.WriteBehind, p.Holder, p.ReqID) {
		// Holding the name's turn keeps other creators of it waiting until
		// the record is in Redis; gets may queue behind it and write behind too.
		t, ok := s.order.takeCreateBehind(p.Name, func(last *turn) bool { return last == nil && !s.table.hasName(p.Name) })
		if ok {
			return s.createBehind(ctx, p, dt, n, dev, t)
		}
	}
	var info v1.Tensor
	err = s.order.run(ctx, p.Name, func() (err error) {
		info, err = s.create(ctx, p, dt, n, dev)
		return err
	})
	return info, nil, err
}

// allocate takes a block for a new tensor and makes its record; zeroed
// waits for the zero-fills still queued on its device.
func (s *Store) allocate(ctx context.Context, p CreateParams, dt v1.DType, n uint64, dev backend.Device) (a *allocation, info v1.Tensor, zeroed func() error, err error) {
	pl := s.pools.of(dev, p.Tenant)
	s.ReapPending()
	most := 1
	if p.Pieces {
		most = s.maxPieces
	}
	blocks, err := pl.AllocPieces(ctx, n, most)
	if errors.Is(err, errdefs.ErrOutOfMemory) {
		// Other tenants' pools of the device may cache free segments.
		if _, terr := s.pools.trim(func(k poolKey) bool { return k.device == dev.Index }); terr != nil {
			s.log.Warn("trim failed", "device", dev.Index, "err", terr)
		}
		blocks, err = pl.AllocPieces(ctx, n, most)
	}
	if err != nil {
		return nil, v1.Tensor{}, nil, err
	}
	seg := blocks[0].Segment()
	now := s.now().UnixMilli()
	info = v1.Tensor{
		Name: p.Name, UID: s.instance + "-" + strconv.FormatUint(s.uidSeq.Add(1), 10), DType: dt, Shape: append([]int64{}, p.Shape...),
		Device: dev.Index, DeviceUUID: dev.UUID, Bytes: n, IPCMode: s.be.Mode(), IPCHandle: seg.Handle(),
		Offset: blocks[0].Offset(), SegmentID: seg.ID(), SegmentSize: seg.Size(), OwnerPID: p.OwnerPID,
		State: v1.StateReady, Agent: s.instance, Node: s.node, Tenant: p.Tenant, Ctime: now, Mtime: now,
	}
	if len(blocks) > 1 {
		info.Pieces = make([]v1.Piece, len(blocks))
		for i, b := range blocks {
			info.Pieces[i] = v1.Piece{SegmentID: b.Segment().ID(), SegmentSize: b.Segment().Size(), Offset: b.Offset(), Size: b.Requested()}
		}
	}
	return &allocation{name: p.Name, blocks: blocks, pool: pl, dev: dev.Index}, info, s.zeroed(dev.Index), nil
}

// create is Create's synchronous path, in the name's turn: the answer
// waits for the create script.
func (s *Store) create(ctx context.Context, p CreateParams, dt v1.DType, n uint64, dev backend.Device) (v1.Tensor, error) {
	// Most creates of an existing name are replicas asking for the same
	// weights: answer them without allocating. This agent is the only
	// writer of its prefix, so its own table says whether the name exists;
	// the create script still decides atomically.
	if s.table.hasName(p.Name) {
		cur, err := s.reg.Stat(ctx, p.Name)
		if err == nil {
			return s.existing(ctx, cur, dt, p)
		} else if !errors.Is(err, errdefs.ErrNotFound) {
			return v1.Tensor{}, err
		}
	}
	a, info, zeroed, err := s.allocate(ctx, p, dt, n, dev)
	if err != nil {
		return v1.Tensor{}, err
	}
	// Register the block before the record exists, so a concurrent release
	// that frees the record always finds it.
	a.zeroing = zeroed
	s.table.add(info.UID, a, false)
	// The zero-fill runs on the GPU while Redis runs the script.
	res, err := s.reg.Create(ctx, info, p.Holder, p.ReqID)
	if zerr := zeroed(); zerr != nil {
		if err == nil && res.Created {
			s.undoCreate(ctx, info.Name, p.Holder)
		}
		err, res = zerr, registry.CreateResult{}
	}
	switch {
	case err != nil && ambiguous(err):
		// The script may have run with its reply lost: Redis may hold the
		// record. Its memory stays until that is known (a replay of the
		// request, or GC reading the name).
		s.table.doubt(info.UID, info.Name)
		s.log.Warn("a create's registry write may or may not have been applied; its memory is kept until that is known", "name", info.Name, "err", err)
	case err != nil || !res.Created:
		s.free(info.UID)
	}
	switch {
	case err != nil:
		return v1.Tensor{}, err
	case res.Created:
		s.table.created(info.UID, res.Info)
		s.table.hold(info.UID, registry.HolderRegistry, 1)
		s.table.hold(info.UID, p.Holder, 1)
		s.audit(ctx, "tensor created", p.Who, info)
		return res.Info, nil
	case res.Dup:
		if res.Info.Name == "" {
			return v1.Tensor{}, fmt.Errorf("%w: request %s created tensor %q, which is gone since", errdefs.ErrNotFound, p.ReqID, p.Name)
		}
		if s.table.settle(res.Info.UID) {
			// The first attempt's record: its memory was kept in doubt.
			s.table.created(res.Info.UID, res.Info)
		}
		return res.Info, nil
	default:
		return s.existing(ctx, res.Info, dt, p)
	}
}

// createBehind is Create's write-behind path, holding turn t of the name:
// the answer comes once the memory is allocated and zero-filled and the
// name is taken in the table; the commit writes the record.
func (s *Store) createBehind(ctx context.Context, p CreateParams, dt v1.DType, n uint64, dev backend.Device, t *turn) (v1.Tensor, Commit, error) {
	a, info, zeroed, err := s.allocate(ctx, p, dt, n, dev)
	if err == nil {
		if err = zeroed(); err != nil {
			s.recycle(a.pool, a.dev, a.blocks...)
		}
	}
	if err != nil {
		s.order.end(p.Name, t)
		return v1.Tensor{}, nil, err
	}
	info.Refcount = 2 // the registry's and the lease's
	a.record = info
	s.table.add(info.UID, a, true)
	return info, s.commitFunc(p.Name, t, func(ctx context.Context) error {
		res, err := s.reg.Create(ctx, info, p.Holder, "")
		switch {
		case err != nil:
			return err
		case !res.Created:
			return fmt.Errorf("%w: Redis already has a record of this name (agent %s)", errdefs.ErrAlreadyExists, res.Info.Agent)
		}
		s.table.hold(info.UID, registry.HolderRegistry, 1)
		s.table.hold(info.UID, p.Holder, 1)
		// Logged here, after the answer went out: a log line costs as much
		// as the rest of a create.
		s.audit(ctx, "tensor created", p.Who, info)
		return nil
	}, func(err error) {
		s.log.Error("the registry refused a tensor already handed out; it is withdrawn", "name", info.Name, "holder", p.Holder, "err", err)
		s.table.withdraw(info.UID, info.Name, p.Holder)
	}), nil
}

// ambiguous reports whether a failed registry write may still have been
// applied (its reply was lost, or the wait for it ended).
func ambiguous(err error) bool {
	return errors.Is(err, errdefs.ErrUnavailable) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)
}

// settleDoubts resolves creates whose registry write may have been applied:
// the memory of those whose record Redis holds is the name's now, the
// others' is freed.
func (s *Store) settleDoubts(ctx context.Context) error {
	for uid, name := range s.table.doubts() {
		rec, err := s.reg.Stat(ctx, name)
		switch {
		case err == nil && rec.UID == uid:
			if s.table.settle(uid) {
				s.table.created(uid, rec)
				s.log.Info("a create whose reply was lost was applied: its tensor is served", "name", name)
			}
		case err == nil || errors.Is(err, errdefs.ErrNotFound):
			if s.table.settle(uid) {
				s.free(uid)
			}
		default:
			return err
		}
	}
	return nil
}

func (s *Store) existing(ctx context.Context, cur v1.Tensor, dt v1.DType, p CreateParams) (v1.Tensor, error) {
	if cur.DType != dt || !equalShape(cur.Shape, p.Shape) {
		return v1.Tensor{}, fmt.Errorf("%w: tensor %q exists as %s%s, not %s%s", errdefs.ErrAlreadyExists, p.Name, cur.DType, tensor.FormatShape(cur.Shape), dt, tensor.FormatShape(p.Shape))
	}
	if cur.State != v1.StateReady {
		return v1.Tensor{}, fmt.Errorf("%w: tensor %q is deleted and still referenced; its name is free once the last reference goes", errdefs.ErrAlreadyExists, p.Name)
	}
	if p.Holder == "" {
		return cur, nil
	}
	return s.get(ctx, p.Name, p.Holder, p.ReqID)
}

func equalShape(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// undoCreate drops the references a create took, for a tensor whose memory
// turned out unusable: the record goes with them.
func (s *Store) undoCreate(ctx context.Context, name, holder string) {
	if holder != "" {
		if _, err := s.reg.Release(ctx, name, holder, registry.AllRefs, false, ""); err != nil {
			s.log.Warn("could not undo the lease of a failed create", "name", name, "err", err)
		}
	}
	if _, err := s.reg.Release(ctx, name, registry.HolderRegistry, 1, true, ""); err != nil {
		s.log.Warn("could not undo a failed create", "name", name, "err", err)
	}
}

// GetParams describe a get request.
type GetParams struct {
	Name   string
	Holder string
	ReqID  string
	// WriteBehind asks for the answer before the registry write, for a
	// connection's first reference on a tensor of this agent that is live
	// in its memory (see WithWriteBehind); the store decides whether it may.
	WriteBehind bool
	// WakeAfterAnswer: the caller calls AfterAnswer once the get's answer
	// is written, and the get leaves to it what need not delay the answer.
	WakeAfterAnswer bool
}

// Get takes one reference for p.Holder. The commit is nil unless the
// answer came before the registry write (p.WriteBehind) and there is no
// coalescing window: with one, the store runs the write itself once the
// window passed, unless a release cancelled it (see delay.go).
func (s *Store) Get(ctx context.Context, p GetParams) (v1.Tensor, Commit, error) {
	if err := tensor.ValidateName(p.Name); err != nil {
		return v1.Tensor{}, nil, err
	}
	if s.writesBehind(p.WriteBehind, p.Holder, p.ReqID) {
		var info v1.Tensor
		t, ok := s.order.takeBehind(p.Name, p.Holder, func(last *turn) bool {
			// Behind a script that may free the tensor (a delete, a
			// release), only its outcome can say whether the get succeeds.
			if last != nil && !last.keeps {
				return false
			}
			var ok bool
			info, ok = s.table.referenceBehind(p.Name, s.now())
			return ok
		})
		if ok {
			commit := s.commitFunc(p.Name, t, func(ctx context.Context) error {
				_, err := s.get(ctx, p.Name, p.Holder, "")
				return err
			}, func(err error) {
				s.log.Error("the registry refused a reference already handed out; the registry's count of it is short by one", "name", p.Name, "holder", p.Holder, "err", err)
			})
			if s.coalesce > 0 {
				// Its window first: a release within it cancels both.
				s.delays.add(delayed{due: time.Now().Add(s.coalesce), name: p.Name, t: t, run: commit}, p.WakeAfterAnswer)
				return info, nil, nil
			}
			return info, commit, nil
		}
	}
	var info v1.Tensor
	err := s.order.runKeeping(ctx, p.Name, func() (err error) {
		info, err = s.get(ctx, p.Name, p.Holder, p.ReqID)
		return err
	})
	return info, nil, err
}

// get is Get's registry script, in the name's turn.
func (s *Store) get(ctx context.Context, name, holder, reqID string) (v1.Tensor, error) {
	info, err := s.reg.Acquire(ctx, name, holder, s.instance, reqID, s.table.record)
	if err != nil {
		return v1.Tensor{}, err
	}
	if info.Agent != s.instance {
		// A replayed request's record, of an instance whose memory is gone.
		return v1.Tensor{}, fmt.Errorf("%w: tensor %q belonged to agent instance %s, whose memory is gone", errdefs.ErrNotFound, name, info.Agent)
	}
	s.table.refcount(info.UID, info.Refcount, s.now())
	s.table.hold(info.UID, holder, 1)
	zeroing, ok := s.table.zeroing(info.UID)
	if ok && zeroing != nil {
		// Found between the create script and the end of its zero-fill.
		if err := zeroing(); err != nil {
			ok = false
		}
	}
	if !ok {
		// The record says it is ours but the memory is not: never hand it out.
		if _, rerr := s.reg.Release(ctx, name, holder, 1, false, ""); rerr != nil {
			s.log.Warn("could not undo reference on tensor with no memory", "name", name, "err", rerr)
		}
		return v1.Tensor{}, fmt.Errorf("%w: tensor %q has no memory in this agent", errdefs.ErrInternal, name)
	}
	return info, nil
}

// ReleaseParams describe a release.
type ReleaseParams struct {
	Name   string
	Holder string
	Count  int64 // references to drop; registry.AllRefs: every one of Holder's
	ReqID  string
	// Fence, when not nil, is the holder's GPU work on the tensor that the
	// block must wait for before it is reused.
	Fence Fence
}

// Release drops references of a holder.
func (s *Store) Release(ctx context.Context, p ReleaseParams) (registry.ReleaseResult, error) {
	if err := tensor.ValidateName(p.Name); err != nil {
		return registry.ReleaseResult{}, err
	}
	s.attachReleaseFence(p)
	if res, ok := s.cancelGet(p); ok {
		return res, nil
	}
	return s.release(ctx, p)
}

// ReleaseBehind is Release for a connection's whole reference, answered
// before its registry write when that write cannot free the tensor (it is
// not deleted, and no earlier script on the name may free it) and the
// tensor's create is in Redis (so a created and released tensor survives
// the agent from the answer on): the commit
// runs the write, like a written-behind get's. The commit is nil when the
// release was answered after its write, or needed none.
func (s *Store) ReleaseBehind(ctx context.Context, p ReleaseParams) (registry.ReleaseResult, Commit, error) {
	if err := tensor.ValidateName(p.Name); err != nil {
		return registry.ReleaseResult{}, nil, err
	}
	s.attachReleaseFence(p)
	if res, ok := s.cancelGet(p); ok {
		return res, nil, nil
	}
	if p.Count == registry.AllRefs && s.writesBehind(true, p.Holder, p.ReqID) {
		var res registry.ReleaseResult
		t, ok := s.order.takeBehind(p.Name, "", func(last *turn) bool {
			if (last != nil && !last.keeps) || s.order.createPending(p.Name) {
				return false
			}
			var ok bool
			res.UID, res.Refcount, ok = s.table.releaseBehind(p.Name, p.Holder, s.now())
			return ok
		})
		if ok {
			return res, s.commitFunc(p.Name, t, func(ctx context.Context) error {
				r, err := s.reg.Release(ctx, p.Name, p.Holder, registry.AllRefs, false, "")
				s.released(r, err, p.Holder, registry.AllRefs)
				return err
			}, func(err error) {
				s.log.Warn("the registry refused a release already answered", "name", p.Name, "holder", p.Holder, "err", err)
			}), nil
		}
	}
	res, err := s.release(ctx, p)
	return res, nil, err
}

// attachReleaseFence attaches a release's fence first: once the reference
// is gone, the block may be freed.
func (s *Store) attachReleaseFence(p ReleaseParams) {
	if p.Fence == nil {
		return
	}
	uid, ok := s.table.uidOf(p.Name)
	if !ok || !s.table.attachFence(uid, p.Fence) {
		p.Fence.Release()
	}
}

// cancelGet answers a connection's release of its whole reference whose
// get was answered and whose get script has not started: neither reaches
// Redis (order.cancel).
func (s *Store) cancelGet(p ReleaseParams) (registry.ReleaseResult, bool) {
	if p.Count != registry.AllRefs || p.ReqID != "" || p.Holder == "" || !s.order.cancel(p.Name, p.Holder) {
		return registry.ReleaseResult{}, false
	}
	uid, refcount := s.table.unreferenceBehind(p.Name, s.now())
	return registry.ReleaseResult{UID: uid, Refcount: refcount}, true
}

// release runs a release's registry script in its turn of the name.
func (s *Store) release(ctx context.Context, p ReleaseParams) (registry.ReleaseResult, error) {
	var res registry.ReleaseResult
	err := s.order.run(ctx, p.Name, func() (err error) {
		if uid, ok := s.table.takeOrphan(p.Holder, p.Name); ok {
			// Its record never made it to Redis: the holder's reference is the only one.
			s.free(uid)
			res = registry.ReleaseResult{Freed: true, UID: uid}
			return nil
		}
		res, err = s.reg.Release(ctx, p.Name, p.Holder, p.Count, false, p.ReqID)
		s.released(res, err, p.Holder, p.Count)
		return err
	})
	return res, err
}

// released applies a release script's outcome to the table.
func (s *Store) released(res registry.ReleaseResult, err error, holder string, count int64) {
	if err != nil {
		return
	}
	if res.Freed {
		s.free(res.UID)
		return
	}
	s.table.refcount(res.UID, res.Refcount, s.now())
	if !res.Dup {
		s.table.unhold(res.UID, holder, count)
	}
}

// Publish records the IPC event readers of name should wait on.
func (s *Store) Publish(ctx context.Context, name, event string) error {
	if err := tensor.ValidateName(name); err != nil {
		return err
	}
	return s.order.run(ctx, name, func() error {
		if err := s.reg.Publish(ctx, name, event); err != nil {
			return err
		}
		// Gets answered from the agent's record must hand it out too.
		s.table.published(name, event, s.now())
		return nil
	})
}

// Delete drops the registry's reference: the tensor takes no new references
// and is freed when the last one goes. who asked goes to the audit log.
func (s *Store) Delete(ctx context.Context, name, reqID string, who Who) (registry.ReleaseResult, error) {
	if err := tensor.ValidateName(name); err != nil {
		return registry.ReleaseResult{}, err
	}
	var res registry.ReleaseResult
	err := s.order.run(ctx, name, func() (err error) {
		res, err = s.reg.Release(ctx, name, registry.HolderRegistry, 1, true, reqID)
		if err == nil && res.Freed {
			s.free(res.UID)
		} else if err == nil {
			s.table.deleted(res.UID, res.Refcount, s.now())
			if !res.Dup {
				s.table.unhold(res.UID, registry.HolderRegistry, 1)
			}
		}
		return err
	})
	if err == nil && !res.Dup && s.log.Enabled(ctx, slog.LevelInfo) {
		s.log.LogAttrs(ctx, slog.LevelInfo, "tensor deleted", append([]slog.Attr{slog.String("name", name),
			slog.Bool("freed", res.Freed), slog.Int64("references_left", res.Refcount)}, who...)...)
	}
	return res, err
}

// audit logs a new tensor at info, with who asked for it.
func (s *Store) audit(ctx context.Context, msg string, who Who, t v1.Tensor) {
	if !s.log.Enabled(ctx, slog.LevelInfo) {
		return
	}
	s.log.LogAttrs(ctx, slog.LevelInfo, msg, append([]slog.Attr{slog.String("name", t.Name), slog.String("dtype", string(t.DType)),
		slog.String("shape", tensor.FormatShape(t.Shape)), slog.Uint64("bytes", t.Bytes), slog.Int("device", t.Device),
		slog.String("tenant", t.Tenant), slog.String("segment", t.SegmentID), slog.Uint64("offset", t.Offset)}, who...)...)
}

// Live reports whether a tensor uid of this instance has memory and is not
// deleted: what a connection that already holds a reference needs to know to
// take another one without asking Redis.
func (s *Store) Live(uid string) bool { return s.table.live(uid) }

// Segment returns the segment of a tensor uid of this instance.
func (s *Store) SegmentsOf(uid string) ([]backend.Segment, bool) { return s.table.segmentsOf(uid) }

// Pieced reports whether the live tensor of name on this agent lies in
// pieces (see WithMaxPieces).
func (s *Store) Pieced(name string) bool { return s.table.pieced(name) }

// Stat returns one record.
func (s *Store) Stat(ctx context.Context, name string) (v1.Tensor, error) {
	if err := tensor.ValidateName(name); err != nil {
		return v1.Tensor{}, err
	}
	if err := s.order.settle(ctx, name); err != nil {
		return v1.Tensor{}, err
	}
	return s.reg.Stat(ctx, name)
}

// List returns the records whose names start with prefix, in name order,
// at most limit (0: all) after cursor; next is the following page's cursor.
// Once the registry is reconciled every record of the prefix is this
// agent's, and the agent's own table has each one as Redis does (the agent
// writes every change): lists are served from it, without Redis.
func (s *Store) List(ctx context.Context, prefix, cursor string, limit int) ([]v1.Tensor, string, error) {
	if err := s.order.settle(ctx); err != nil {
		return nil, "", err
	}
	if !s.reconciled.Load() {
		return s.reg.List(ctx, prefix, cursor, limit)
	}
	list, next := s.table.page(prefix, cursor, limit)
	return list, next, nil
}

// Names lists the registry's index of names.
func (s *Store) Names(ctx context.Context) ([]string, error) { return s.reg.Names(ctx) }

// HeldBy lists the names that references of a holder kind may hold
// (registry.KindPID, registry.KindPod).
func (s *Store) HeldBy(ctx context.Context, kind string) ([]string, error) {
	return s.reg.HeldBy(ctx, kind)
}

// Holders returns the reference holders of a tensor and their counts.
func (s *Store) Holders(ctx context.Context, name string) (map[string]int64, error) {
	return s.reg.Holders(ctx, name)
}

// free forgets a uid's memory and retires its block.
func (s *Store) free(uid string) {
	if a, ok := s.table.remove(uid); ok {
		s.retire(a)
	}
}

// OpenLease returns a new connection holder of this instance.
func (s *Store) OpenLease() string { return s.leases.add() }

// CloseLease drops every reference of a connection holder on the named
// tensors. What cannot be dropped now (Redis down) is dropped by GC later,
// since the holder is no longer live.
func (s *Store) CloseLease(ctx context.Context, holder string, names []string) error {
	s.leases.remove(holder)
	var errs []error
	var left []string
	for _, n := range names {
		if _, _, err := s.DropHolder(ctx, n, holder); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", n, err))
			left = append(left, n)
		}
	}
	s.leases.dropFailed(holder, left)
	return errors.Join(errs...)
}

// DropHolder releases every reference of holder on name. dropped is false,
// and err nil, when there was nothing left to drop (the tensor, or the
// holder's references, went meanwhile).
func (s *Store) DropHolder(ctx context.Context, name, holder string) (res registry.ReleaseResult, dropped bool, err error) {
	res, err = s.Release(ctx, ReleaseParams{Name: name, Holder: holder, Count: registry.AllRefs})
	if errors.Is(err, errdefs.ErrNotFound) || errors.Is(err, errdefs.ErrFailedPrecondition) {
		return res, false, nil
	}
	return res, err == nil, err
}

// Trim releases cached free segments of every pool and returns the bytes given back.
func (s *Store) Trim() (uint64, error) { return s.pools.trim(allPools) }

// Pending is the number of freed blocks waiting for GPU work to finish.
func (s *Store) Pending() int {
	_, parked := s.table.counts()
	return parked
}

// Stats returns the statistics of every pool, the number of tensors this
// instance holds memory for and the freed blocks still waiting for fences.
func (s *Store) Stats() v1.Stats {
	tensors, parked := s.table.counts()
	return v1.Stats{Tensors: tensors, Pending: parked, Pools: s.pools.stats()}
}

// StopWrites gives up the registry writes still being retried.
func (s *Store) StopWrites() { s.stop() }

// Close releases every segment. Records of this instance stay in Redis and
// are reconciled by the next instance; registry writes still being retried
// are given up.
func (s *Store) Close() error {
	s.stop()
	s.zeros.stopWatchers()
	for _, a := range s.table.drain() {
		releaseFences(a.fences)
	}
	return s.pools.close()
}
