package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/memcuda/memcuda/pkg/backend"
	"github.com/memcuda/memcuda/pkg/errdefs"
	"github.com/memcuda/memcuda/pkg/pool"
	"github.com/memcuda/memcuda/pkg/tensor"
)

// Commit runs the registry script of a request that was answered before it
// (CreateEarly, GetEarly). Call it once, after the answer is sent. Failures
// are the store's to handle: a Redis that went away is retried in the
// background until it is back (later requests on the name wait or answer
// unavailable meanwhile); a refusal, which only a registry changed behind
// the agent's back can cause, is logged and the tensor withdrawn.
type Commit func(ctx context.Context)

// retryWait bounds the pause between attempts of a registry write that
// found Redis down.
const retryWait = 2 * time.Second

// CreateEarly is Create for a connection's lease (p.Holder) that answers
// before the registry write: once the memory is allocated and zero-filled
// and the name is taken in the agent, the agent's own index being the
// authority on its prefix. The returned commit writes the record. It is a
// synchronous Create (nil commit) when write-behind is off, the registry is
// not reconciled yet (a predecessor's record may still hold the name), the
// name exists or has scripts pending, or Redis is known down (so that is a
// clear error).
func (s *Store) CreateEarly(ctx context.Context, p CreateParams) (tensor.Info, Commit, error) {
	dt, n, dev, err := s.validate(p)
	if err != nil {
		return tensor.Info{}, nil, err
	}
	if !s.early || p.Holder == "" || p.ReqID != "" || !s.reconciled.Load() || !s.reg.Up() {
		info, err := s.createInTurn(ctx, p, dt, n, dev)
		return info, nil, err
	}
	s.mu.Lock()
	_, exists := s.names[p.Name]
	if exists || s.turns[p.Name] != nil {
		s.mu.Unlock()
		info, err := s.createInTurn(ctx, p, dt, n, dev)
		return info, nil, err
	}
	// Holding the name's turn keeps other creators of it waiting until the
	// record is in Redis; gets may queue behind it and answer early too.
	t := s.takeTurnLocked(p.Name, true)
	s.mu.Unlock()

	p0 := s.poolFor(dev, p.Tenant)
	blk, filled, err := s.alloc(ctx, p0, dev.Index, n)
	if err == nil {
		if err = filled(); err != nil {
			s.recycle(p0, dev.Index, blk)
		}
	}
	if err != nil {
		s.end(p.Name, t)
		return tensor.Info{}, nil, err
	}
	info := s.newInfo(p, dt, n, dev, blk)
	info.Refcount = 2 // the registry's and the lease's
	s.mu.Lock()
	s.blocks[info.UID] = allocation{name: info.Name, block: blk, pool: p0, dev: dev.Index, record: info}
	s.names[info.Name] = info.UID
	s.mu.Unlock()
	if s.log.Enabled(ctx, slog.LevelDebug) { // its arguments alone cost allocations on every create
		s.log.Debug("tensor created", "name", info.Name, "dtype", dt, "shape", info.Shape, "bytes", n, "segment", info.SegmentID, "offset", info.Offset, "registry", "pending")
	}
	commit := func(ctx context.Context) {
		s.commit(ctx, p.Name, t, func(ctx context.Context) error {
			res, err := s.reg.Create(ctx, info, p.Holder, "")
			switch {
			case err != nil:
				return err
			case !res.Created:
				return fmt.Errorf("%w: Redis already has a record of this name (agent %s)", errdefs.ErrAlreadyExists, res.Info.Agent)
			}
			return nil
		}, func(err error) { s.withdraw(info, p.Holder, err) })
	}
	return info, commit, nil
}

// GetEarly is Get for a connection's first reference on a tensor of this
// agent that is live in its memory: it answers from the agent's record and
// the returned commit takes the reference in Redis. Otherwise (write-behind
// off, a tensor of another agent or not known here, a delete or release of
// it pending, Redis known down) it is a synchronous Get with a nil commit.
func (s *Store) GetEarly(ctx context.Context, name, holder string) (tensor.Info, Commit, error) {
	if err := tensor.ValidateName(name); err != nil {
		return tensor.Info{}, nil, err
	}
	if !s.early || holder == "" || !s.reconciled.Load() || !s.reg.Up() {
		info, err := s.getInTurn(ctx, name, holder, "")
		return info, nil, err
	}
	s.mu.Lock()
	uid, ok := s.names[name]
	a, live := s.blocks[uid]
	last := s.turns[name]
	// Behind a script that may free the tensor (a delete, a release), only
	// its outcome can say whether the get succeeds.
	if !ok || !live || a.deleted || a.filling != nil || a.record.UID != uid || (last != nil && !last.early) {
		s.mu.Unlock()
		info, err := s.getInTurn(ctx, name, holder, "")
		return info, nil, err
	}
	t := s.takeTurnLocked(name, true)
	a.record.Refcount++ // the registry's count once the script ran, unless others moved it meanwhile
	a.record.Mtime = s.now().UnixMilli()
	s.blocks[uid] = a
	info := a.record
	info.Shape = append([]int64(nil), info.Shape...)
	s.mu.Unlock()
	commit := func(ctx context.Context) {
		s.commit(ctx, name, t, func(ctx context.Context) error {
			_, err := s.get(ctx, name, holder, "")
			return err
		}, func(err error) {
			s.log.Error("the registry refused a reference already handed out; the registry's count of it is short by one", "name", name, "holder", holder, "err", err)
		})
	}
	return info, commit, nil
}

// commit runs write as turn t of name: now, and when Redis is unreachable,
// again in the background until it is back or the store closes. refused
// handles any other failure.
func (s *Store) commit(ctx context.Context, name string, t *turn, write func(context.Context) error, refused func(error)) {
	attempt := func(ctx context.Context) error {
		if err := t.wait(ctx); err != nil {
			return err
		}
		return write(ctx)
	}
	err := attempt(ctx)
	if err == nil || !retryable(err) {
		if err != nil {
			refused(err)
		}
		s.end(name, t)
		return
	}
	s.log.Warn("registry write failed; retrying until Redis is back", "name", name, "err", err)
	go func() {
		defer s.end(name, t)
		for wait := 50 * time.Millisecond; retryable(err); wait = min(2*wait, retryWait) {
			select {
			case <-s.bg.Done():
				s.log.Error("registry write given up: the agent is stopping", "name", name, "err", err)
				return
			case <-time.After(wait):
			}
			ctx, cancel := context.WithTimeout(s.bg, 10*time.Second)
			err = attempt(ctx)
			cancel()
		}
		if err != nil {
			refused(err)
			return
		}
		s.log.Info("registry write done after a retry", "name", name)
	}()
}

func retryable(err error) bool {
	return errors.Is(err, errdefs.ErrUnavailable) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)
}

// withdraw takes back a tensor whose record Redis refused: its name is free
// again and nobody else can get it. The creating holder may still use the
// memory; the block is freed when that holder releases it.
func (s *Store) withdraw(info tensor.Info, holder string, err error) {
	s.log.Error("the registry refused a tensor already handed out; it is withdrawn", "name", info.Name, "holder", holder, "err", err)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.names[info.Name] == info.UID {
		delete(s.names, info.Name)
	}
	if a, ok := s.blocks[info.UID]; ok {
		a.deleted = true
		s.blocks[info.UID] = a
		s.orphans[holder+"\x00"+info.Name] = info.UID
	}
}

// takeOrphan returns, and forgets, the withdrawn tensor holder has under name.
func (s *Store) takeOrphan(holder, name string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := holder + "\x00" + name
	uid, ok := s.orphans[k]
	delete(s.orphans, k)
	return uid, ok
}

// noteRefcount keeps the agent's record's count as Redis last reported it.
func (s *Store) noteRefcount(uid string, n int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if a, ok := s.blocks[uid]; ok && a.record.UID == uid {
		a.record.Refcount = n
		s.blocks[uid] = a
	}
}

// newInfo is the record of a new tensor in blk.
func (s *Store) newInfo(p CreateParams, dt tensor.DType, n uint64, dev backend.Device, blk *pool.Block) tensor.Info {
	seg := blk.Segment().(backend.Segment)
	now := s.now().UnixMilli()
	return tensor.Info{
		Name: p.Name, UID: s.instance + "-" + strconv.FormatUint(s.uidSeq.Add(1), 10), DType: dt, Shape: append([]int64{}, p.Shape...),
		Device: dev.Index, DeviceUUID: dev.UUID, Bytes: n, IPCMode: s.be.Mode(), IPCHandle: seg.Handle(),
		Offset: blk.Offset(), SegmentID: seg.ID(), SegmentSize: seg.Size(), OwnerPID: p.OwnerPID,
		State: tensor.StateReady, Agent: s.instance, Node: s.node, Tenant: p.Tenant, Ctime: now, Mtime: now,
	}
}
