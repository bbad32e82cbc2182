package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	v1 "github.com/memcuda/memcuda/api/v1"
	"github.com/memcuda/memcuda/pkg/backend"
	"github.com/memcuda/memcuda/pkg/errdefs"
	"github.com/memcuda/memcuda/pkg/pool"
	"github.com/memcuda/memcuda/pkg/registry"
)

// Survival. A new agent instance takes over the tensors its predecessors
// left in Redis, for as much of their memory as survived them:
//
//   - host: the shared-memory objects outlive the process; each is opened
//     again by name and checked against its records' size.
//   - vmm: the memory lives while some process holds its descriptor or maps
//     it. In a hand-over the predecessor passes its descriptors; after a
//     crash the clients that map a segment offer theirs when they reconnect
//     (Offer), until the reattach grace ends (EndGrace).
//   - legacy: only the processes that opened a handle keep the memory: the
//     records become orphaned (no new references) and go with their last
//     holder.
//
// Records keep their uid, refcount and holders; only their agent changes.
// References of the predecessors' connections wait for their clients to
// reattach (Reattach) until the grace ends, and are dropped then.

// LostFunc learns of a tensor whose memory did not survive its agent: its
// record was removed; holders are its reference holders as they were.
type LostFunc func(record v1.Tensor, holders map[string]int64, reason string)

// WithLost sets what hears of lost tensors (beside the log line).
func WithLost(f LostFunc) Option { return func(s *Store) { s.lost = f } }

// AdoptReport counts what Adopt did with the predecessors' records.
type AdoptReport struct {
	Adopted  int // tensors whose memory this instance holds now
	Awaiting int // vmm tensors whose segment waits for a client's descriptor
	Orphaned int // legacy tensors usable only by the processes that opened them
	Removed  int // tensors whose memory is gone
}

// survival is what a new instance still waits for from its predecessors.
type survival struct {
	mu        sync.Mutex
	awaiting  map[string]*segmentRecords // segment id -> its records, until a descriptor comes
	inherited []string                   // names whose predecessors' connection references wait for reattach
	ended     bool
}

// segmentRecords are the records of one segment of a predecessor.
type segmentRecords struct {
	id      string
	device  int
	size    uint64
	tenant  string
	records []v1.Tensor
	holders map[string]map[string]int64 // name -> its reference holders
}

// Adopt takes over the records of other instances of this node's agent (see
// Survival) and drops index entries that have no record. handed are the
// descriptors of segments a predecessor passed in a hand-over, by segment
// id; Adopt owns them (those it does not use are closed). Until EndGrace,
// lists are read from Redis while vmm segments wait for descriptors.
func (s *Store) Adopt(ctx context.Context, handed map[string]int) (AdoptReport, error) {
	defer func() {
		for _, fd := range handed {
			unix.Close(fd)
		}
	}()
	var rep AdoptReport
	if err := s.reg.IndexNames(ctx); err != nil {
		return rep, err
	}
	groups, err := s.predecessors(ctx)
	if err != nil {
		return rep, err
	}
	reopen, _ := s.be.(backend.Reopener)
	imp, _ := s.be.(backend.Importer)
	if s.be.Mode() == v1.ModeLegacy {
		imp = nil // a legacy allocation cannot be passed on: its handle is its maker's
	}
	for _, g := range groups {
		var seg backend.Segment
		var err error
		switch fd, ok := handed[g.id]; {
		case g.records[0].IPCMode != s.be.Mode():
			err = fmt.Errorf("%w: a %s segment, and this agent runs the %s backend", errdefs.ErrFailedPrecondition, g.records[0].IPCMode, s.be.Mode())
		case ok && imp != nil:
			delete(handed, g.id)
			seg, err = imp.ImportSegment(ctx, g.device, g.id, g.size, fd)
		case reopen != nil:
			seg, err = reopen.OpenSegment(ctx, g.device, g.id, g.size)
		case imp != nil:
			s.await(g)
			rep.Awaiting += len(g.records)
			continue
		default:
			n, err := s.orphan(ctx, g)
			rep.Orphaned += n
			rep.Removed += len(g.records) - n
			if err != nil {
				return rep, err
			}
			continue
		}
		if err == nil {
			var n int
			n, err = s.adoptSegment(ctx, seg, g)
			rep.Adopted += n
		}
		if err != nil {
			rep.Removed += len(g.records)
			if rerr := s.removeLost(ctx, g.records, err.Error()); rerr != nil {
				return rep, rerr
			}
		}
	}
	s.surv.mu.Lock()
	done := len(s.surv.awaiting) == 0
	s.surv.mu.Unlock()
	s.reconciled.Store(done)
	return rep, nil
}

// predecessors reads every record and returns those of other instances
// grouped by segment; index entries without a record are removed.
func (s *Store) predecessors(ctx context.Context) ([]*segmentRecords, error) {
	names, err := s.reg.Names(ctx)
	if err != nil {
		return nil, err
	}
	listed := make(map[string]bool, len(names))
	bySeg := map[string]*segmentRecords{}
	var order []string
	cursor := ""
	for {
		page, next, err := s.reg.List(ctx, "", cursor, v1.MaxListLimit)
		if err != nil {
			return nil, err
		}
		for _, rec := range page {
			listed[rec.Name] = true
			if rec.Agent == s.instance {
				continue
			}
			g := bySeg[rec.SegmentID]
			if g == nil {
				g = &segmentRecords{id: rec.SegmentID, device: rec.Device, size: rec.SegmentSize, tenant: rec.Tenant}
				bySeg[rec.SegmentID] = g
				order = append(order, rec.SegmentID)
			}
			g.records = append(g.records, rec)
		}
		if next == "" {
			break
		}
		cursor = next
	}
	for _, n := range names {
		if !listed[n] {
			if _, err := s.reg.Remove(ctx, n, ""); err != nil {
				return nil, err
			}
		}
	}
	for _, g := range bySeg {
		names := make([]string, len(g.records))
		for i, rec := range g.records {
			names[i] = rec.Name
		}
		if g.holders, err = s.reg.HoldersOf(ctx, names); err != nil {
			return nil, err
		}
	}
	slices.Sort(order)
	out := make([]*segmentRecords, len(order))
	for i, id := range order {
		out[i] = bySeg[id]
	}
	return out, nil
}

// adoptSegment rebuilds seg's blocks from its records in the pool of their
// device and tenant, and makes the records this instance's. It returns how
// many were adopted; on an error seg is released and nothing is adopted.
func (s *Store) adoptSegment(ctx context.Context, seg backend.Segment, g *segmentRecords) (int, error) {
	fail := func(err error) (int, error) {
		if rerr := seg.Release(); rerr != nil {
			s.log.Warn("releasing a segment that could not be adopted", "segment", g.id, "err", rerr)
		}
		return 0, err
	}
	dev, err := s.ResolveDevice(strconv.Itoa(g.device))
	if err != nil {
		return fail(err)
	}
	ranges := make([]pool.Range, len(g.records))
	for i, rec := range g.records {
		if rec.Tenant != g.tenant || rec.Device != g.device || rec.SegmentSize != g.size {
			return fail(fmt.Errorf("%w: the records of segment %s disagree on its device, size or tenant", errdefs.ErrInternal, g.id))
		}
		ranges[i] = pool.Range{Offset: rec.Offset, Requested: rec.Bytes}
	}
	pl := s.pools.of(dev, g.tenant)
	blocks, free, err := pl.Adopt(seg, ranges)
	if err != nil {
		return fail(err)
	}
	if s.zeroFill {
		// Free bytes are zero in a pool; a crash may have come between a
		// free and its zero-fill.
		for _, sp := range free {
			if err := s.zero(dev.Index, seg, sp.Offset, sp.Size); err != nil {
				s.log.Warn("zero-filling the free part of an adopted segment", "segment", g.id, "err", err)
			}
		}
	}
	byAgent := map[string][]string{}
	for _, rec := range g.records {
		byAgent[rec.Agent] = append(byAgent[rec.Agent], rec.Name)
	}
	adopted := map[string]bool{}
	for old, names := range byAgent {
		ok, err := s.reg.Adopt(ctx, names, old, s.instance)
		for _, n := range ok {
			adopted[n] = true
		}
		if err != nil {
			s.withdrawAdopted(pl, g, blocks, adopted)
			return 0, err
		}
	}
	n := 0
	for i, rec := range g.records {
		if !adopted[rec.Name] {
			pl.Free(blocks[i]) // changed meanwhile: not the predecessor's any more
			continue
		}
		rec.Agent = s.instance
		a := &allocation{name: rec.Name, block: blocks[i], pool: pl, dev: dev.Index, deleted: rec.State != v1.StateReady, record: rec,
			holders: g.holders[rec.Name]}
		s.table.add(rec.UID, a, true)
		s.inherit(rec.Name)
		n++
	}
	s.log.Info("adopted a segment of a previous agent instance", "segment", g.id, "device", g.device, "bytes", g.size, "tensors", n)
	return n, nil
}

// withdrawAdopted undoes a half-done adoption whose registry write failed:
// the records already adopted are handed back (they stay in Redis, for the
// next attempt), the blocks freed.
func (s *Store) withdrawAdopted(pl *pool.Pool[backend.Segment], g *segmentRecords, blocks []*pool.Block[backend.Segment], adopted map[string]bool) {
	ctx, cancel := context.WithTimeout(s.bg, 5*time.Second)
	defer cancel()
	for i, rec := range g.records {
		if adopted[rec.Name] {
			if _, err := s.reg.Adopt(ctx, []string{rec.Name}, s.instance, rec.Agent); err != nil {
				s.log.Warn("could not hand an adopted record back", "name", rec.Name, "err", err)
			}
		}
		pl.Free(blocks[i])
	}
}

// orphan makes a legacy segment's records orphaned and returns how many
// are (the rest had no holder and are gone).
func (s *Store) orphan(ctx context.Context, g *segmentRecords) (int, error) {
	n := 0
	for _, rec := range g.records {
		removed, err := s.reg.Orphan(ctx, rec.Name, rec.Agent, s.instance)
		if err != nil {
			return n, err
		}
		if removed {
			s.reportLost(rec, nil, "legacy CUDA IPC memory dies with its agent and nobody had it open")
			continue
		}
		n++
		s.inherit(rec.Name)
		s.log.Warn("tensor orphaned: legacy CUDA IPC memory stays only with the processes that had it open; no new gets",
			"name", rec.Name, "refcount", rec.Refcount)
	}
	return n, nil
}

func (s *Store) await(g *segmentRecords) {
	s.surv.mu.Lock()
	defer s.surv.mu.Unlock()
	if s.surv.awaiting == nil {
		s.surv.awaiting = map[string]*segmentRecords{}
	}
	s.surv.awaiting[g.id] = g
	for _, rec := range g.records {
		s.surv.inherited = append(s.surv.inherited, rec.Name)
	}
}

func (s *Store) inherit(name string) {
	s.surv.mu.Lock()
	defer s.surv.mu.Unlock()
	if !s.surv.ended {
		s.surv.inherited = append(s.surv.inherited, name)
	}
}

// SegmentIDs are the ids of every segment holding a tensor of this instance.
func (s *Store) SegmentIDs() map[string]bool {
	s.table.mu.Lock()
	defer s.table.mu.Unlock()
	out := make(map[string]bool, len(s.table.byUID))
	for _, a := range s.table.byUID {
		out[a.block.Segment().ID()] = true
	}
	return out
}

// SegmentFDs are the descriptors of the segments holding tensors of this
// instance, by segment id (vmm; host and legacy segments have none here).
func (s *Store) SegmentFDs() map[string]int {
	s.table.mu.Lock()
	defer s.table.mu.Unlock()
	out := map[string]int{}
	for _, a := range s.table.byUID {
		if seg := a.block.Segment(); seg.FD() >= 0 && s.be.Mode() == v1.ModeVMM {
			out[seg.ID()] = seg.FD()
		}
	}
	return out
}

// Awaiting reports whether a segment of a predecessor waits for a descriptor.
func (s *Store) Awaiting(segmentID string) bool {
	s.surv.mu.Lock()
	defer s.surv.mu.Unlock()
	return s.surv.awaiting[segmentID] != nil
}

// Offer hands the store a descriptor of a predecessor's segment that a
// client still holds (vmm, after a crash): the segment is adopted with its
// records. tenant is the offering client's namespace, which must be the
// segment's when checkTenant is set (a pod offers only its namespace's
// memory). The store owns fd; a segment nobody waits for is not an error.
func (s *Store) Offer(ctx context.Context, segmentID string, fd int, tenant string, checkTenant bool) error {
	s.surv.mu.Lock()
	g := s.surv.awaiting[segmentID]
	if g != nil && (!checkTenant || g.tenant == tenant) {
		delete(s.surv.awaiting, segmentID)
	}
	s.surv.mu.Unlock()
	if g == nil {
		unix.Close(fd)
		return nil
	}
	if checkTenant && g.tenant != tenant {
		unix.Close(fd)
		return fmt.Errorf("%w: segment %s holds tensors of namespace %q", errdefs.ErrPermissionDenied, segmentID, g.tenant)
	}
	imp, ok := s.be.(backend.Importer)
	if !ok {
		unix.Close(fd)
		return fmt.Errorf("%w: the %s backend takes no segment descriptors", errdefs.ErrFailedPrecondition, s.be.Mode())
	}
	seg, err := imp.ImportSegment(ctx, g.device, g.id, g.size, fd)
	if err == nil {
		_, err = s.adoptSegment(ctx, seg, g)
	}
	s.surv.mu.Lock()
	if err != nil && !s.surv.ended {
		s.surv.awaiting[segmentID] = g // another holder may offer a good one
	}
	done := len(s.surv.awaiting) == 0
	s.surv.mu.Unlock()
	if err != nil {
		return fmt.Errorf("adopt segment %s: %w", segmentID, err)
	}
	if done {
		s.reconciled.Store(true)
	}
	return nil
}

// EndGrace ends the time predecessors' clients had to come back: segments
// no descriptor came for are lost (their records removed), and references
// of predecessors' connections that no client reattached are dropped.
func (s *Store) EndGrace(ctx context.Context) error {
	s.surv.mu.Lock()
	s.surv.ended = true
	awaiting := s.surv.awaiting
	s.surv.awaiting = nil
	names := s.surv.inherited
	s.surv.inherited = nil
	s.surv.mu.Unlock()
	var errs []error
	for _, g := range awaiting {
		errs = append(errs, s.removeLost(ctx, g.records, "no process kept a descriptor or a mapping of its segment"))
	}
	s.reconciled.Store(true)
	slices.Sort(names)
	for _, name := range slices.Compact(names) {
		holders, err := s.reg.Holders(ctx, name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for h := range holders {
			if inst, ok := registry.ConnHolderInstance(h); ok && inst != s.instance {
				if _, _, err := s.DropHolder(ctx, name, h); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	return errors.Join(errs...)
}

// removeLost removes records whose memory is gone.
func (s *Store) removeLost(ctx context.Context, records []v1.Tensor, reason string) error {
	for _, rec := range records {
		holders, err := s.reg.Holders(ctx, rec.Name)
		if err != nil {
			return err
		}
		ok, err := s.reg.Remove(ctx, rec.Name, rec.Agent)
		if err != nil {
			return err
		}
		if ok {
			s.reportLost(rec, holders, reason)
		}
	}
	return nil
}

func (s *Store) reportLost(rec v1.Tensor, holders map[string]int64, reason string) {
	s.log.Warn("tensor lost: its memory did not survive its agent", "name", rec.Name, "agent", rec.Agent,
		"segment", rec.SegmentID, "refcount", rec.Refcount, "reason", reason)
	if s.lost != nil {
		s.lost(rec, holders, reason)
	}
}

// WriteBack writes every record this instance holds memory for, with the
// reference holders its scripts left, into a Redis that lost them (a
// restart without persistence); records Redis still has are left alone. It
// returns how many were written.
func (s *Store) WriteBack(ctx context.Context) (int, error) {
	records, holders := s.table.named()
	n := 0
	for i, rec := range records {
		ok, err := s.reg.Restore(ctx, rec, holders[i])
		if err != nil {
			return n, err
		}
		if ok {
			n++
		}
	}
	return n, nil
}

// Reattach moves the reference a connection of a predecessor (oldHolder)
// held on name to newHolder, a connection of this instance; when the old
// connection held none (its get had not reached Redis), a new reference is
// taken. It returns the record.
func (s *Store) Reattach(ctx context.Context, name, oldHolder, newHolder string) (v1.Tensor, error) {
	if inst, ok := registry.ConnHolderInstance(oldHolder); !ok || inst == s.instance {
		return v1.Tensor{}, errdefs.Invalid("%q is not a connection of a previous agent instance", oldHolder)
	}
	var info v1.Tensor
	err := s.order.run(ctx, name, func() error {
		rec, moved, err := s.reg.Reattach(ctx, name, oldHolder, newHolder)
		if err != nil {
			return err
		}
		if moved {
			info = rec
			s.table.refcount(rec.UID, rec.Refcount, s.now())
			s.table.unhold(rec.UID, oldHolder, 0)
			s.table.holdOnce(rec.UID, newHolder)
			return nil
		}
		info, err = s.get(ctx, name, newHolder, "")
		return err
	})
	return info, err
}
