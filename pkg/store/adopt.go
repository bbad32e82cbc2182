package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
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
	awaiting  map[string]*adoptGroup // segment id -> its group, until a descriptor comes
	inherited []string               // names whose predecessors' connection references wait for reattach
	ended     bool
}

// adoptGroup is what a predecessor left in segments that are taken over
// together: one segment, or several that tensors in pieces link (a tensor
// lives only when all of its segments do), with their records.
type adoptGroup struct {
	segs    []groupSegment // by id
	tenant  string
	records []v1.Tensor
	holders map[string]map[string]int64 // name -> its reference holders
	// got are the segments obtained while others of the group wait for a
	// client's descriptor (vmm after a crash), by id.
	got map[string]backend.Segment
}

type groupSegment struct {
	id     string
	device int
	size   uint64
}

func (g *adoptGroup) ids() string {
	ids := make([]string, len(g.segs))
	for i, gs := range g.segs {
		ids[i] = gs.id
	}
	return strings.Join(ids, ",")
}

// releaseGot gives back the segments obtained for a group that is not adopted.
func (s *Store) releaseGot(g *adoptGroup) {
	for id, seg := range g.got {
		if err := seg.Release(); err != nil {
			s.log.Warn("releasing a segment that could not be adopted", "segment", id, "err", err)
		}
	}
	g.got = nil
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
		if g.records[0].IPCMode != s.be.Mode() {
			err := fmt.Errorf("%w: a %s segment, and this agent runs the %s backend", errdefs.ErrFailedPrecondition, g.records[0].IPCMode, s.be.Mode())
			rep.Removed += len(g.records)
			if rerr := s.removeLost(ctx, g.records, err.Error()); rerr != nil {
				return rep, rerr
			}
			continue
		}
		if imp == nil && reopen == nil {
			n, err := s.orphan(ctx, g)
			rep.Orphaned += n
			rep.Removed += len(g.records) - n
			if err != nil {
				return rep, err
			}
			continue
		}
		g.got = map[string]backend.Segment{}
		var err error
		waits := false
		for _, gs := range g.segs {
			var seg backend.Segment
			switch fd, ok := handed[gs.id]; {
			case ok && imp != nil:
				delete(handed, gs.id)
				seg, err = imp.ImportSegment(ctx, gs.device, gs.id, gs.size, fd)
			case reopen != nil:
				seg, err = reopen.OpenSegment(ctx, gs.device, gs.id, gs.size)
			default:
				waits = true
				continue
			}
			if err != nil {
				break
			}
			g.got[gs.id] = seg
		}
		switch {
		case err != nil:
			s.releaseGot(g)
		case waits:
			s.await(g)
			rep.Awaiting += len(g.records)
			continue
		default:
			var n int
			n, err = s.adoptGroup(ctx, g)
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
// in adoption groups: segments linked by a tensor in pieces go together.
// Index entries without a record are removed.
func (s *Store) predecessors(ctx context.Context) ([]*adoptGroup, error) {
	names, err := s.reg.Names(ctx)
	if err != nil {
		return nil, err
	}
	listed := make(map[string]bool, len(names))
	var records []v1.Tensor
	segs := map[string]groupSegment{}
	parent := map[string]string{} // union-find over segment ids
	var root func(id string) string
	root = func(id string) string {
		for parent[id] != id {
			parent[id] = parent[parent[id]]
			id = parent[id]
		}
		return id
	}
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
			records = append(records, rec)
			for i, id := range rec.Segments() {
				if _, ok := parent[id]; !ok {
					parent[id] = id
					segs[id] = groupSegment{id: id, device: rec.Device, size: segmentSizeOf(rec, id)}
				}
				if i > 0 {
					parent[root(id)] = root(rec.SegmentID)
				}
			}
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
	byRoot := map[string]*adoptGroup{}
	for _, rec := range records {
		r := root(rec.SegmentID)
		g := byRoot[r]
		if g == nil {
			g = &adoptGroup{tenant: rec.Tenant}
			byRoot[r] = g
		}
		g.records = append(g.records, rec)
	}
	for id := range segs {
		g := byRoot[root(id)]
		g.segs = append(g.segs, segs[id])
	}
	out := make([]*adoptGroup, 0, len(byRoot))
	for _, g := range byRoot {
		slices.SortFunc(g.segs, func(a, b groupSegment) int { return strings.Compare(a.id, b.id) })
		names := make([]string, len(g.records))
		for i, rec := range g.records {
			names[i] = rec.Name
		}
		if g.holders, err = s.reg.HoldersOf(ctx, names); err != nil {
			return nil, err
		}
		out = append(out, g)
	}
	slices.SortFunc(out, func(a, b *adoptGroup) int { return strings.Compare(a.segs[0].id, b.segs[0].id) })
	return out, nil
}

// segmentSizeOf is the size rec gives segment id.
func segmentSizeOf(rec v1.Tensor, id string) uint64 {
	for _, p := range rec.Pieces {
		if p.SegmentID == id {
			return p.SegmentSize
		}
	}
	return rec.SegmentSize
}

// adoptGroup rebuilds the blocks of g's records in g.got's segments, in
// the pool of their device and tenant, and makes the records this
// instance's. It returns how many were adopted; on an error the segments
// are released and nothing is adopted.
func (s *Store) adoptGroup(ctx context.Context, g *adoptGroup) (int, error) {
	fail := func(err error) (int, error) {
		s.releaseGot(g)
		return 0, err
	}
	device := g.segs[0].device
	dev, err := s.ResolveDevice(strconv.Itoa(device))
	if err != nil {
		return fail(err)
	}
	// Each record's ranges, by segment; where each range's block goes.
	type place struct{ rec, piece int }
	ranges := map[string][]pool.Range{}
	places := map[string][]place{}
	size := map[string]uint64{}
	for _, gs := range g.segs {
		size[gs.id] = gs.size
	}
	blocks := make([][]*pool.Block[backend.Segment], len(g.records))
	for i, rec := range g.records {
		if rec.Tenant != g.tenant || rec.Device != device {
			return fail(fmt.Errorf("%w: the records of segments %s disagree on their device or tenant", errdefs.ErrInternal, g.ids()))
		}
		pieces := rec.Pieces
		if len(pieces) == 0 {
			pieces = []v1.Piece{{SegmentID: rec.SegmentID, SegmentSize: rec.SegmentSize, Offset: rec.Offset, Size: rec.Bytes}}
		}
		blocks[i] = make([]*pool.Block[backend.Segment], len(pieces))
		for j, pc := range pieces {
			if pc.SegmentSize != size[pc.SegmentID] {
				return fail(fmt.Errorf("%w: the records of segment %s disagree on its size", errdefs.ErrInternal, pc.SegmentID))
			}
			ranges[pc.SegmentID] = append(ranges[pc.SegmentID], pool.Range{Offset: pc.Offset, Requested: pc.Size})
			places[pc.SegmentID] = append(places[pc.SegmentID], place{i, j})
		}
	}
	pl := s.pools.of(dev, g.tenant)
	var adoptedBlocks []*pool.Block[backend.Segment]
	for n, gs := range g.segs {
		seg := g.got[gs.id]
		bs, free, err := pl.Adopt(seg, ranges[gs.id])
		if err != nil {
			// The segments adopted so far stay in the pool, holding only
			// free blocks then; the rest are released.
			for _, b := range adoptedBlocks {
				pl.Free(b)
			}
			for _, done := range g.segs[:n] {
				delete(g.got, done.id)
			}
			return fail(err)
		}
		adoptedBlocks = append(adoptedBlocks, bs...)
		for k, b := range bs {
			pc := places[gs.id][k]
			blocks[pc.rec][pc.piece] = b
		}
		if s.zeroFill {
			// Free bytes are zero in a pool; a crash may have come between a
			// free and its zero-fill.
			for _, sp := range free {
				if err := s.zero(dev.Index, seg, sp.Offset, sp.Size); err != nil {
					s.log.Warn("zero-filling the free part of an adopted segment", "segment", gs.id, "err", err)
				}
			}
		}
	}
	g.got = nil
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
			for _, b := range blocks[i] {
				pl.Free(b) // changed meanwhile: not the predecessor's any more
			}
			continue
		}
		rec.Agent = s.instance
		a := &allocation{name: rec.Name, blocks: blocks[i], pool: pl, dev: dev.Index, deleted: rec.State != v1.StateReady, record: rec,
			holders: g.holders[rec.Name]}
		s.table.add(rec.UID, a, true)
		s.inherit(rec.Name)
		n++
	}
	s.log.Info("adopted segments of a previous agent instance", "segments", g.ids(), "device", device, "tensors", n)
	return n, nil
}

// withdrawAdopted undoes a half-done adoption whose registry write failed:
// the records already adopted are handed back (they stay in Redis, for the
// next attempt), the blocks freed.
func (s *Store) withdrawAdopted(pl *pool.Pool[backend.Segment], g *adoptGroup, blocks [][]*pool.Block[backend.Segment], adopted map[string]bool) {
	ctx, cancel := context.WithTimeout(s.bg, 5*time.Second)
	defer cancel()
	for i, rec := range g.records {
		if adopted[rec.Name] {
			if _, err := s.reg.Adopt(ctx, []string{rec.Name}, s.instance, rec.Agent); err != nil {
				s.log.Warn("could not hand an adopted record back", "name", rec.Name, "err", err)
			}
		}
		for _, b := range blocks[i] {
			pl.Free(b)
		}
	}
}

// orphan makes a legacy segment's records orphaned and returns how many
// are (the rest had no holder and are gone).
func (s *Store) orphan(ctx context.Context, g *adoptGroup) (int, error) {
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

func (s *Store) await(g *adoptGroup) {
	s.surv.mu.Lock()
	defer s.surv.mu.Unlock()
	s.awaitMissing(g)
	for _, rec := range g.records {
		s.surv.inherited = append(s.surv.inherited, rec.Name)
	}
}

// awaitMissing makes g wait for a descriptor of each of its segments not
// obtained yet. Called with s.surv.mu held.
func (s *Store) awaitMissing(g *adoptGroup) {
	if s.surv.awaiting == nil {
		s.surv.awaiting = map[string]*adoptGroup{}
	}
	for _, gs := range g.segs {
		if g.got[gs.id] == nil {
			s.surv.awaiting[gs.id] = g
		}
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
		for _, seg := range a.segments() {
			out[seg.ID()] = true
		}
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
		for _, seg := range a.segments() {
			if seg.FD() >= 0 && s.be.Mode() == v1.ModeVMM {
				out[seg.ID()] = seg.FD()
			}
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
	var gs groupSegment
	for _, c := range g.segs {
		if c.id == segmentID {
			gs = c
		}
	}
	seg, err := imp.ImportSegment(ctx, gs.device, gs.id, gs.size, fd)
	s.surv.mu.Lock()
	complete := false
	if err == nil && !s.surv.ended {
		if g.got == nil {
			g.got = map[string]backend.Segment{}
		}
		// The group's segments arrive one offer at a time; the group is
		// adopted with its last (offers of one group come from one client,
		// in turn, so only one completes it).
		g.got[segmentID] = seg
		complete = len(g.got) == len(g.segs)
	} else if err == nil {
		seg.Release()
	}
	s.surv.mu.Unlock()
	if complete {
		_, err = s.adoptGroup(ctx, g)
	}
	s.surv.mu.Lock()
	if err != nil && !s.surv.ended {
		s.awaitMissing(g) // another holder may offer good ones
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
	seen := map[*adoptGroup]bool{}
	for _, g := range awaiting {
		if seen[g] {
			continue
		}
		seen[g] = true
		s.surv.mu.Lock()
		s.releaseGot(g)
		s.surv.mu.Unlock()
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
