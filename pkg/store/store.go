// Package store is the heart of the agent: it ties the pools of each device
// and tenant to the Redis registry. The socket server and the queue worker
// both call it; it never speaks a wire protocol itself.
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
	"sync"
	"sync/atomic"
	"time"

	"github.com/memcuda/memcuda/pkg/backend"
	"github.com/memcuda/memcuda/pkg/errdefs"
	"github.com/memcuda/memcuda/pkg/pool"
	"github.com/memcuda/memcuda/pkg/registry"
	"github.com/memcuda/memcuda/pkg/tensor"
)

// allocation is a tensor's block and the pool it returns to.
type allocation struct {
	name    string
	block   *pool.Block
	pool    *pool.Pool
	dev     int          // device index of the pool
	deleted bool         // delete ran: no new references, even from connections that hold one
	fences  []Fence      // GPU work to finish before the block is reused
	record  tensor.Info  // as created: what acquires need not read back from Redis
	filling func() error // the zero-fill's wait while create runs; nil after
}

type poolKey struct {
	device int
	tenant string
}

// Store serves create/get/release/delete over one backend and one registry.
type Store struct {
	reg      *registry.Registry
	be       backend.Backend
	instance string
	node     string
	log      *slog.Logger
	limit    uint64
	zeroFill bool
	early    bool // socket creates and gets may be answered before their script
	now      func() time.Time
	bg       context.Context // registry writes retried after their request ended
	stop     context.CancelFunc

	mu      sync.Mutex
	pools   map[poolKey]*pool.Pool
	budgets map[int]*pool.Budget
	blocks  map[string]allocation // tensor uid -> its memory
	names   map[string]string     // name -> uid of this instance's live tensors
	leases  map[string]struct{}   // live connection holders of this instance
	pending []allocation          // freed blocks waiting for their fences
	turns   map[string]*turn      // name -> its last queued registry script
	clears  map[int]*pendingClear // device -> its latest queued clear
	orphans map[string]string     // holder+"\x00"+name -> uid of a withdrawn tensor that holder still has
	uidSeq  atomic.Uint64
	// reconciled: Redis holds no records of a predecessor any more, so the
	// agent's own index may decide creates (write-behind waits for it).
	reconciled atomic.Bool
	connSeq    atomic.Uint64
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

// WithWriteBehind lets the socket server answer a create, or a connection's
// first get of a tensor, as soon as the agent has decided it, and run the
// Redis script right after (CreateEarly, GetEarly). Default off.
func WithWriteBehind(on bool) Option { return func(s *Store) { s.early = on } }

// New returns a store. instance identifies this agent process: records of
// other instances are stale after a restart.
func New(reg *registry.Registry, be backend.Backend, instance, node string, opts ...Option) *Store {
	s := &Store{
		reg: reg, be: be, instance: instance, node: node, log: slog.Default(), zeroFill: true, now: time.Now,
		pools: map[poolKey]*pool.Pool{}, budgets: map[int]*pool.Budget{}, blocks: map[string]allocation{}, names: map[string]string{},
		leases: map[string]struct{}{}, turns: map[string]*turn{}, orphans: map[string]string{}, clears: map[int]*pendingClear{},
	}
	s.bg, s.stop = context.WithCancel(context.Background())
	for _, o := range opts {
		o(s)
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

// Backend is the store's backend.
func (s *Store) Backend() backend.Backend { return s.be }

// Registry is the store's registry.
func (s *Store) Registry() *registry.Registry { return s.reg }

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
}

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

func (s *Store) poolFor(d backend.Device, tenant string) *pool.Pool {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := poolKey{d.Index, tenant}
	if p := s.pools[k]; p != nil {
		return p
	}
	b := s.budgets[d.Index]
	if b == nil {
		b = pool.NewBudget(s.deviceLimit(d))
		s.budgets[d.Index] = b
	}
	dev := d.Index
	p := pool.New(pool.SourceFunc(func(ctx context.Context, size uint64) (pool.Segment, error) {
		seg, err := s.be.NewSegment(ctx, dev, size)
		if err != nil || !s.zeroFill {
			return seg, err
		}
		// A new segment may hold what its memory held before.
		if err := s.clear(dev, seg, 0, seg.Size()); err != nil {
			seg.Release()
			return nil, fmt.Errorf("zero-fill: %w", err)
		}
		return seg, nil
	}), pool.WithBudget(b), pool.WithGranularity(s.be.Granularity(dev)))
	s.pools[k] = p
	return p
}

// validate checks a create request and returns its dtype, byte size and device.
func (s *Store) validate(p CreateParams) (tensor.DType, uint64, backend.Device, error) {
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
// any). A mismatch is ErrAlreadyExists.
func (s *Store) Create(ctx context.Context, p CreateParams) (tensor.Info, error) {
	dt, n, dev, err := s.validate(p)
	if err != nil {
		return tensor.Info{}, err
	}
	return s.createInTurn(ctx, p, dt, n, dev)
}

// createInTurn is Create of a validated request.
func (s *Store) createInTurn(ctx context.Context, p CreateParams, dt tensor.DType, n uint64, dev backend.Device) (info tensor.Info, err error) {
	err = s.inTurn(ctx, p.Name, func() (err error) {
		info, err = s.create(ctx, p, dt, n, dev)
		return err
	})
	return info, err
}

// create is Create in the name's turn.
func (s *Store) create(ctx context.Context, p CreateParams, dt tensor.DType, n uint64, dev backend.Device) (tensor.Info, error) {
	// Most creates of an existing name are replicas asking for the same
	// weights: answer them without allocating. This agent is the only
	// writer of its prefix, so its own index says whether the name exists;
	// the create script still decides atomically.
	if s.hasName(p.Name) {
		cur, err := s.reg.Stat(ctx, p.Name)
		if err == nil {
			return s.existing(ctx, cur, dt, p)
		} else if !errors.Is(err, errdefs.ErrNotFound) {
			return tensor.Info{}, err
		}
	}
	p0 := s.poolFor(dev, p.Tenant)
	blk, filled, err := s.alloc(ctx, p0, dev.Index, n)
	if err != nil {
		return tensor.Info{}, err
	}
	info := s.newInfo(p, dt, n, dev, blk)
	// Register the block before the record exists, so a concurrent release
	// that frees the record always finds it.
	s.mu.Lock()
	s.blocks[info.UID] = allocation{name: info.Name, block: blk, pool: p0, dev: dev.Index, filling: filled}
	s.mu.Unlock()
	// The zero-fill runs on the GPU while Redis runs the script.
	res, err := s.reg.Create(ctx, info, p.Holder, p.ReqID)
	if ferr := filled(); ferr != nil {
		if err == nil && res.Created {
			s.undoCreate(ctx, info.Name, p.Holder)
		}
		err, res = ferr, registry.CreateResult{}
	}
	if err != nil || !res.Created {
		s.freeUID(info.UID)
	}
	switch {
	case err != nil:
		return tensor.Info{}, err
	case res.Created:
		s.mu.Lock()
		s.names[info.Name] = info.UID
		if a, ok := s.blocks[info.UID]; ok {
			a.record, a.filling = res.Info, nil
			s.blocks[info.UID] = a
		}
		s.mu.Unlock()
		s.log.Debug("tensor created", "name", info.Name, "dtype", dt, "shape", info.Shape, "bytes", n, "segment", info.SegmentID, "offset", info.Offset)
		return res.Info, nil
	case res.Dup:
		if res.Info.Name == "" {
			return tensor.Info{}, fmt.Errorf("%w: request %s created tensor %q, which is gone since", errdefs.ErrNotFound, p.ReqID, p.Name)
		}
		return res.Info, nil
	default:
		return s.existing(ctx, res.Info, dt, p)
	}
}

func (s *Store) existing(ctx context.Context, cur tensor.Info, dt tensor.DType, p CreateParams) (tensor.Info, error) {
	if cur.DType != dt || !equalShape(cur.Shape, p.Shape) {
		return tensor.Info{}, fmt.Errorf("%w: tensor %q exists as %s%s, not %s%s", errdefs.ErrAlreadyExists, p.Name, cur.DType, tensor.FormatShape(cur.Shape), dt, tensor.FormatShape(p.Shape))
	}
	if cur.State != tensor.StateReady {
		return tensor.Info{}, fmt.Errorf("%w: tensor %q is deleted and still referenced; its name is free once the last reference goes", errdefs.ErrAlreadyExists, p.Name)
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

// alloc takes a block; filled waits for the clears still queued on its
// device (callers overlap it with the registry's round trip).
func (s *Store) alloc(ctx context.Context, p *pool.Pool, dev int, n uint64) (blk *pool.Block, filled func() error, err error) {
	s.ReapPending()
	blk, err = p.Alloc(ctx, n)
	if errors.Is(err, errdefs.ErrOutOfMemory) {
		// Other tenants' pools of the device may cache free segments.
		s.trimDevice(dev)
		blk, err = p.Alloc(ctx, n)
	}
	if err != nil {
		return nil, nil, err
	}
	return blk, s.cleared(dev), nil
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

// Get takes one reference for holder.
func (s *Store) Get(ctx context.Context, name, holder, reqID string) (tensor.Info, error) {
	if err := tensor.ValidateName(name); err != nil {
		return tensor.Info{}, err
	}
	return s.getInTurn(ctx, name, holder, reqID)
}

// getInTurn is Get of a validated name.
func (s *Store) getInTurn(ctx context.Context, name, holder, reqID string) (info tensor.Info, err error) {
	err = s.inTurn(ctx, name, func() (err error) {
		info, err = s.get(ctx, name, holder, reqID)
		return err
	})
	return info, err
}

// get is Get in the name's turn.
func (s *Store) get(ctx context.Context, name, holder, reqID string) (tensor.Info, error) {
	info, err := s.reg.Acquire(ctx, name, holder, s.instance, reqID, s.record)
	if err != nil {
		return tensor.Info{}, err
	}
	s.noteRefcount(info.UID, info.Refcount)
	s.mu.Lock()
	a, ok := s.blocks[info.UID]
	s.mu.Unlock()
	if ok && a.filling != nil {
		// Found between the create script and the end of its zero-fill.
		if err := a.filling(); err != nil {
			ok = false
		}
	}
	if !ok {
		// The record says it is ours but the memory is not: never hand it out.
		if _, rerr := s.reg.Release(ctx, name, holder, 1, false, ""); rerr != nil {
			s.log.Warn("could not undo reference on tensor with no memory", "name", name, "err", rerr)
		}
		return tensor.Info{}, fmt.Errorf("%w: tensor %q has no memory in this agent", errdefs.ErrInternal, name)
	}
	return info, nil
}

// Release drops count references of holder (registry.AllRefs: every one).
func (s *Store) Release(ctx context.Context, name, holder string, count int64, reqID string) (registry.ReleaseResult, error) {
	return s.ReleaseAfter(ctx, name, holder, count, reqID, nil)
}

// ReleaseAfter is Release with a fence: the holder's GPU work on the tensor
// that the block must wait for before it is reused. uid, when known, lets
// the fence be attached before the reference goes.
func (s *Store) ReleaseAfter(ctx context.Context, name, holder string, count int64, reqID string, f Fence) (registry.ReleaseResult, error) {
	if err := tensor.ValidateName(name); err != nil {
		return registry.ReleaseResult{}, err
	}
	if f != nil {
		// Attach first: once the reference is gone, the block may be freed.
		s.mu.Lock()
		uid, ok := s.names[name]
		s.mu.Unlock()
		if !ok || !s.AttachFence(uid, f) {
			f.Release()
		}
	}
	var res registry.ReleaseResult
	err := s.inTurn(ctx, name, func() (err error) {
		res, err = s.release(ctx, name, holder, count, reqID)
		return err
	})
	return res, err
}

// release is Release in the name's turn.
func (s *Store) release(ctx context.Context, name, holder string, count int64, reqID string) (registry.ReleaseResult, error) {
	if uid, ok := s.takeOrphan(holder, name); ok {
		// Its record never made it to Redis: the holder's reference is the only one.
		s.freeUID(uid)
		return registry.ReleaseResult{Freed: true, UID: uid}, nil
	}
	res, err := s.reg.Release(ctx, name, holder, count, false, reqID)
	if err == nil && res.Freed {
		s.freeUID(res.UID)
	} else if err == nil {
		s.noteRefcount(res.UID, res.Refcount)
	}
	return res, err
}

// Publish records the IPC event readers of name should wait on.
func (s *Store) Publish(ctx context.Context, name, event string) error {
	if err := tensor.ValidateName(name); err != nil {
		return err
	}
	return s.inTurn(ctx, name, func() error {
		if err := s.reg.Publish(ctx, name, event); err != nil {
			return err
		}
		// Gets answered from the agent's record must hand it out too.
		s.mu.Lock()
		uid := s.names[name]
		if a, ok := s.blocks[uid]; ok {
			a.record.Event = event
			s.blocks[uid] = a
		}
		s.mu.Unlock()
		return nil
	})
}

// Delete drops the registry's reference: the tensor takes no new references
// and is freed when the last one goes.
func (s *Store) Delete(ctx context.Context, name, reqID string) (registry.ReleaseResult, error) {
	if err := tensor.ValidateName(name); err != nil {
		return registry.ReleaseResult{}, err
	}
	var res registry.ReleaseResult
	err := s.inTurn(ctx, name, func() (err error) {
		res, err = s.reg.Release(ctx, name, registry.HolderRegistry, 1, true, reqID)
		if err == nil && res.Freed {
			s.freeUID(res.UID)
		} else if err == nil {
			s.mu.Lock()
			if a, ok := s.blocks[res.UID]; ok {
				a.deleted = true
				a.record.Refcount = res.Refcount
				s.blocks[res.UID] = a
			}
			s.mu.Unlock()
		}
		return err
	})
	return res, err
}

// Live reports whether a tensor uid of this instance has memory and is not
// deleted: what a connection that already holds a reference needs to know to
// take another one without asking Redis.
func (s *Store) Live(uid string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.blocks[uid]
	return ok && !a.deleted
}

// record is a tensor's record as created, when this instance made it.
func (s *Store) record(uid string) (tensor.Info, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.blocks[uid]
	if !ok || a.record.UID != uid {
		return tensor.Info{}, false
	}
	info := a.record
	info.Shape = append([]int64(nil), info.Shape...) // callers own what they get
	return info, true
}

// Stat returns one record.
func (s *Store) Stat(ctx context.Context, name string) (tensor.Info, error) {
	if err := tensor.ValidateName(name); err != nil {
		return tensor.Info{}, err
	}
	if err := s.settle(ctx, name); err != nil {
		return tensor.Info{}, err
	}
	return s.reg.Stat(ctx, name)
}

// List returns every record.
func (s *Store) List(ctx context.Context) ([]tensor.Info, error) {
	if err := s.settle(ctx); err != nil {
		return nil, err
	}
	return s.reg.List(ctx)
}

// Block returns the block of a tensor uid of this instance.
func (s *Store) Block(uid string) (*pool.Block, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.blocks[uid]
	return a.block, ok
}

func (s *Store) hasName(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.names[name]
	return ok
}

func (s *Store) freeUID(uid string) {
	s.mu.Lock()
	a, ok := s.blocks[uid]
	delete(s.blocks, uid)
	if ok && s.names[a.name] == uid {
		delete(s.names, a.name)
	}
	s.mu.Unlock()
	if ok {
		s.retire(a)
	}
}

// OpenLease returns a new connection holder of this instance.
func (s *Store) OpenLease() string {
	h := fmt.Sprintf("%s%s:%d", connPrefix, s.instance, s.connSeq.Add(1))
	s.mu.Lock()
	s.leases[h] = struct{}{}
	s.mu.Unlock()
	return h
}

// CloseLease drops every reference of a connection holder on the named
// tensors. What cannot be dropped now (Redis down) is dropped by GC later,
// since the holder is no longer live.
func (s *Store) CloseLease(ctx context.Context, holder string, names []string) error {
	s.mu.Lock()
	delete(s.leases, holder)
	s.mu.Unlock()
	var errs []error
	for _, n := range names {
		if _, _, err := s.DropHolder(ctx, n, holder); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", n, err))
		}
	}
	return errors.Join(errs...)
}

// DropHolder releases every reference of holder on name. dropped is false,
// and err nil, when there was nothing left to drop (the tensor, or the
// holder's references, went meanwhile).
func (s *Store) DropHolder(ctx context.Context, name, holder string) (res registry.ReleaseResult, dropped bool, err error) {
	res, err = s.Release(ctx, name, holder, registry.AllRefs, "")
	if errors.Is(err, errdefs.ErrNotFound) || errors.Is(err, errdefs.ErrFailedPrecondition) {
		return res, false, nil
	}
	return res, err == nil, err
}

func (s *Store) leaseLive(h string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.leases[h]
	return ok
}

// GCResult reports what a GC pass dropped.
type GCResult struct {
	Holders int      `json:"holders"` // dead holders whose references were dropped
	Freed   []string `json:"freed"`   // tensors freed as a result
}

// GC drops the references of processes that are gone (pid holders whose pid
// no longer runs with the recorded start time) and of this instance's closed
// connections whose release failed earlier.
func (s *Store) GC(ctx context.Context) (GCResult, error) {
	var out GCResult
	names, err := s.reg.Names(ctx)
	if err != nil {
		return out, err
	}
	for _, name := range names {
		holders, err := s.reg.Holders(ctx, name)
		if err != nil {
			return out, err
		}
		for h := range holders {
			if !s.deadHolder(h) {
				continue
			}
			res, dropped, err := s.DropHolder(ctx, name, h)
			if err != nil {
				return out, err
			}
			if !dropped {
				continue // released meanwhile
			}
			out.Holders++
			s.log.Info("dropped references of a dead holder", "name", name, "holder", h, "freed", res.Freed)
			if res.Freed {
				out.Freed = append(out.Freed, name)
			}
		}
	}
	return out, nil
}

func (s *Store) deadHolder(h string) bool {
	if alive, ok := pidHolderAlive(h); ok {
		return !alive
	}
	if inst, ok := connHolderInstance(h); ok {
		return inst == s.instance && !s.leaseLive(h)
	}
	return false
}

// Reconcile removes records whose memory no longer exists: those of other
// instances of this node's agent (a crashed or restarted predecessor) and
// index entries with no record. It returns the names removed.
func (s *Store) Reconcile(ctx context.Context) ([]string, error) {
	names, err := s.reg.Names(ctx)
	if err != nil {
		return nil, err
	}
	var removed []string
	for _, name := range names {
		info, err := s.reg.Stat(ctx, name)
		owner := info.Agent
		if errors.Is(err, errdefs.ErrNotFound) {
			owner = ""
		} else if err != nil {
			return removed, err
		}
		if owner == s.instance {
			continue
		}
		ok, err := s.reg.Remove(ctx, name, owner)
		if err != nil {
			return removed, err
		}
		if ok {
			removed = append(removed, name)
			s.log.Warn("removed tensor whose memory is gone", "name", name, "agent", owner, "refcount", info.Refcount)
		}
	}
	s.reconciled.Store(true)
	return removed, nil
}

// Trim releases cached free segments of every pool and returns the bytes given back.
func (s *Store) Trim() (uint64, error) {
	s.mu.Lock()
	pools := make([]*pool.Pool, 0, len(s.pools))
	for _, p := range s.pools {
		pools = append(pools, p)
	}
	s.mu.Unlock()
	var total uint64
	var errs []error
	for _, p := range pools {
		n, err := p.Trim()
		total += n
		errs = append(errs, err)
	}
	return total, errors.Join(errs...)
}

func (s *Store) trimDevice(dev int) {
	s.mu.Lock()
	var pools []*pool.Pool
	for k, p := range s.pools {
		if k.device == dev {
			pools = append(pools, p)
		}
	}
	s.mu.Unlock()
	for _, p := range pools {
		if _, err := p.Trim(); err != nil {
			s.log.Warn("trim failed", "device", dev, "err", err)
		}
	}
}

// Pending is the number of freed blocks waiting for GPU work to finish.
func (s *Store) Pending() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.pending)
}

// PoolStats are the statistics of one pool.
type PoolStats struct {
	Device int    `json:"device"`
	Tenant string `json:"tenant,omitempty"`
	Limit  uint64 `json:"limit"`
	pool.Stats
}

// Stats returns the statistics of every pool and the number of tensors this
// instance holds memory for.
func (s *Store) Stats() (tensors int, pools []PoolStats) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, p := range s.pools {
		pools = append(pools, PoolStats{Device: k.device, Tenant: k.tenant, Limit: s.budgets[k.device].Limit(), Stats: p.Stats()})
	}
	return len(s.blocks), pools
}

// StopWrites gives up the registry writes still being retried.
func (s *Store) StopWrites() { s.stop() }

// Close releases every segment. Records of this instance stay in Redis and
// are reconciled by the next instance; registry writes still being retried
// are given up.
func (s *Store) Close() error {
	s.stop()
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for k, p := range s.pools {
		errs = append(errs, p.Close())
		delete(s.pools, k)
	}
	for _, a := range s.blocks {
		releaseFences(a.fences)
	}
	for _, a := range s.pending {
		releaseFences(a.fences)
	}
	s.blocks = map[string]allocation{}
	s.names = map[string]string{}
	s.pending = nil
	return errors.Join(errs...)
}
