package store

import (
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/btree"

	v1 "github.com/memcuda/memcuda/api/v1"
	"github.com/memcuda/memcuda/pkg/backend"
	"github.com/memcuda/memcuda/pkg/pool"
)

// allocation is a tensor's blocks (one, or its pieces in order) and the
// pool they return to.
type allocation struct {
	name    string
	blocks  []*pool.Block[backend.Segment]
	pool    *pool.Pool[backend.Segment]
	dev     int          // device index of the pool
	deleted bool         // delete ran: no new references, even from connections that hold one
	fences  []Fence      // GPU work to finish before the block is reused
	record  v1.Tensor    // as created: what acquires need not read back from Redis
	zeroing func() error // the wait for the block's zero-fill while a create runs; nil after
	// holders mirrors the record's reference holders in Redis, as this
	// agent's scripts left them: what it writes back if Redis loses its data.
	holders map[string]int64
}

// orphanKey is a withdrawn tensor's holder and name.
type orphanKey struct{ holder, name string }

// table is the agent's own account of its memory: which block every live
// tensor uid has, which uid each name serves, withdrawn tensors a holder
// still uses, and freed blocks parked until their fences are done.
type table struct {
	mu      sync.Mutex
	byUID   map[string]*allocation
	byName  map[string]string     // name -> uid of this instance's live tensor
	names   *btree.BTreeG[string] // byName's keys in order, for lists
	orphans map[orphanKey]string
	parked  []*allocation
	// inDoubt are creates whose registry write may have been applied
	// (uid -> name): their memory is kept until it is known.
	inDoubt map[string]string
}

func newTable() *table {
	return &table{byUID: map[string]*allocation{}, byName: map[string]string{}, names: btree.NewOrderedG[string](32),
		orphans: map[orphanKey]string{}, inDoubt: map[string]string{}}
}

// doubt keeps uid's memory while its create's outcome is unknown.
func (t *table) doubt(uid, name string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.inDoubt[uid] = name
}

// settle ends uid's doubt and reports whether it was in doubt.
func (t *table) settle(uid string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	_, ok := t.inDoubt[uid]
	delete(t.inDoubt, uid)
	return ok
}

// doubts are the creates in doubt, uid -> name.
func (t *table) doubts() map[string]string {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string]string, len(t.inDoubt))
	for uid, name := range t.inDoubt {
		out[uid] = name
	}
	return out
}

// name makes uid the name's tensor; unname takes it back when it still is.
func (t *table) name(name, uid string) {
	t.byName[name] = uid
	t.names.ReplaceOrInsert(name)
}

func (t *table) unname(name, uid string) {
	if t.byName[name] == uid {
		delete(t.byName, name)
		t.names.Delete(name)
	}
}

// page returns the records of the named tensors whose names start with
// prefix, in name order, after cursor, at most limit (0: all), and the
// next page's cursor.
func (t *table) page(prefix, cursor string, limit int) ([]v1.Tensor, string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	from := prefix
	if cursor > from {
		from = cursor
	}
	out := make([]v1.Tensor, 0, min(max(limit, 16), 1024))
	next := ""
	t.names.AscendGreaterOrEqual(from, func(name string) bool {
		if name == cursor {
			return true
		}
		if !strings.HasPrefix(name, prefix) {
			return false
		}
		if limit > 0 && len(out) == limit {
			next = out[len(out)-1].Name
			return false
		}
		if a := t.byUID[t.byName[name]]; a != nil && a.record.UID != "" {
			out = append(out, a.record) // shapes are never changed after create: no copy
		}
		return true
	})
	return out, next
}

// add registers a's block under uid; named also makes it the name's tensor.
func (t *table) add(uid string, a *allocation, named bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.byUID[uid] = a
	if named {
		t.name(a.name, uid)
	}
}

// created records that the registry took uid's record: the name serves it.
func (t *table) created(uid string, record v1.Tensor) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if a, ok := t.byUID[uid]; ok {
		a.record, a.zeroing = record, nil
		t.name(a.name, uid)
	}
}

// remove forgets uid and returns its allocation.
func (t *table) remove(uid string) (*allocation, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	a, ok := t.byUID[uid]
	if !ok {
		return nil, false
	}
	delete(t.byUID, uid)
	t.unname(a.name, uid)
	return a, true
}

func (t *table) hasName(name string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	_, ok := t.byName[name]
	return ok
}

// pieced reports whether name's live tensor lies in more than one block.
func (t *table) pieced(name string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	a := t.byUID[t.byName[name]]
	return a != nil && len(a.blocks) > 1
}

func (t *table) uidOf(name string) (string, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	uid, ok := t.byName[name]
	return uid, ok
}

// live reports whether uid has memory here and is not deleted.
func (t *table) live(uid string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	a, ok := t.byUID[uid]
	return ok && !a.deleted
}

// segmentsOf are the backend segments uid lies in, its first piece's
// first, each once.
func (t *table) segmentsOf(uid string) ([]backend.Segment, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	a, ok := t.byUID[uid]
	if !ok {
		return nil, false
	}
	return a.segments(), true
}

// segments are the backend segments of a's blocks, in order, each once.
func (a *allocation) segments() []backend.Segment {
	if len(a.blocks) == 1 {
		return []backend.Segment{a.blocks[0].Segment()}
	}
	out := make([]backend.Segment, 0, len(a.blocks))
	for _, b := range a.blocks {
		if seg := b.Segment(); !slices.Contains(out, seg) {
			out = append(out, seg)
		}
	}
	return out
}

// zeroing returns the zero-fill wait of a uid still being created (nil
// when there is none) and whether uid has memory here.
func (t *table) zeroing(uid string) (func() error, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	a, ok := t.byUID[uid]
	if !ok {
		return nil, false
	}
	return a.zeroing, true
}

// record is uid's record as created, when this instance made it.
func (t *table) record(uid string) (v1.Tensor, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	a, ok := t.byUID[uid]
	if !ok || a.record.UID != uid {
		return v1.Tensor{}, false
	}
	return copyRecord(a.record), true
}

// referenceBehind counts one more reference on name's tensor in its record,
// for a get answered before its registry write, and returns the record.
// ok is false when the tensor cannot be answered from here: not this
// agent's, deleted, or still being created.
func (t *table) referenceBehind(name string, now time.Time) (v1.Tensor, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	uid, ok := t.byName[name]
	a := t.byUID[uid]
	if !ok || a == nil || a.deleted || a.zeroing != nil || a.record.UID != uid {
		return v1.Tensor{}, false
	}
	a.record.Refcount++ // the registry's count once the script ran, unless others moved it meanwhile
	a.record.Mtime = now.UnixMilli()
	return copyRecord(a.record), true
}

// unreferenceBehind undoes referenceBehind of name for a reference
// released before its script ran, and returns the uid and count.
func (t *table) unreferenceBehind(name string, now time.Time) (string, int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	uid := t.byName[name]
	a, ok := t.byUID[uid]
	if !ok || a.record.UID != uid {
		return uid, 0
	}
	if a.record.Refcount > 0 {
		a.record.Refcount--
	}
	a.record.Mtime = now.UnixMilli()
	return uid, a.record.Refcount
}

// releaseBehind counts a release of holder's references on name answered
// before its script, when that script cannot free it: the tensor is live
// here, not deleted, and not an orphan of holder's. It returns the uid and
// the count once the script ran. The holders change when it ran (after
// the holder's own get or create script, which adds it).
func (t *table) releaseBehind(name, holder string, now time.Time) (string, int64, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	uid, ok := t.byName[name]
	a := t.byUID[uid]
	if !ok || a == nil || a.deleted || a.zeroing != nil || a.record.UID != uid {
		return "", 0, false
	}
	if _, orphan := t.orphans[orphanKey{holder, name}]; orphan {
		return "", 0, false
	}
	if a.record.Refcount > 1 { // the registry's own reference stays until a delete
		a.record.Refcount--
	}
	a.record.Mtime = now.UnixMilli()
	return uid, a.record.Refcount, true
}

// refcount keeps uid's record's count as Redis last reported it, changed at now.
func (t *table) refcount(uid string, n int64, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if a, ok := t.byUID[uid]; ok && a.record.UID == uid {
		a.record.Refcount, a.record.Mtime = n, now.UnixMilli()
	}
}

// deleted marks uid deleted: it takes no new references.
func (t *table) deleted(uid string, refcount int64, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if a, ok := t.byUID[uid]; ok {
		a.deleted = true
		a.record.Refcount, a.record.State, a.record.Mtime = refcount, v1.StateDeleted, now.UnixMilli()
	}
}

// published sets the event of name's record.
func (t *table) published(name, event string, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if a, ok := t.byUID[t.byName[name]]; ok {
		a.record.Event, a.record.Mtime = event, now.UnixMilli()
	}
}

// withdraw takes uid's name back; holder keeps using the memory until it
// releases it.
func (t *table) withdraw(uid, name, holder string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.unname(name, uid)
	if a, ok := t.byUID[uid]; ok {
		a.deleted = true
		t.orphans[orphanKey{holder, name}] = uid
	}
}

// takeOrphan returns, and forgets, the withdrawn tensor holder has under name.
func (t *table) takeOrphan(holder, name string) (string, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	k := orphanKey{holder, name}
	uid, ok := t.orphans[k]
	delete(t.orphans, k)
	return uid, ok
}

// attachFence adds f to uid's fences; false when uid has no memory here.
func (t *table) attachFence(uid string, f Fence) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	a, ok := t.byUID[uid]
	if !ok {
		return false
	}
	for _, g := range a.fences {
		if g == f {
			// The same event re-recorded: its latest record covers the
			// earlier one, so one attachment is enough.
			f.Release()
			return true
		}
	}
	a.fences = append(a.fences, f)
	return true
}

// park keeps a freed allocation until its fences are done.
func (t *table) park(a *allocation) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.parked = append(t.parked, a)
}

// unpark returns the parked allocations whose fences are done and the
// number still waiting.
func (t *table) unpark() (ready []*allocation, waiting int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.parked) == 0 {
		return nil, 0
	}
	keep := t.parked[:0]
	for _, a := range t.parked {
		if fencesDone(a.fences) {
			ready = append(ready, a)
		} else {
			keep = append(keep, a)
		}
	}
	clear(t.parked[len(keep):])
	t.parked = keep
	return ready, len(keep)
}

// counts are the live tensors and the parked blocks.
func (t *table) counts() (tensors, parked int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.byUID), len(t.parked)
}

// drain forgets everything and returns every allocation, live and parked.
func (t *table) drain() []*allocation {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := t.parked
	for _, a := range t.byUID {
		out = append(out, a)
	}
	t.byUID, t.byName, t.orphans, t.parked = map[string]*allocation{}, map[string]string{}, map[orphanKey]string{}, nil
	clear(t.inDoubt)
	t.names.Clear(false)
	return out
}

// hold counts n more references of holder on uid (mirroring Redis).
func (t *table) hold(uid, holder string, n int64) {
	if holder == "" || n <= 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if a, ok := t.byUID[uid]; ok {
		if a.holders == nil {
			a.holders = map[string]int64{}
		}
		a.holders[holder] += n
	}
}

// holdOnce makes holder's count on uid at least one (a connection's one
// reference in Redis).
func (t *table) holdOnce(uid, holder string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if a, ok := t.byUID[uid]; ok {
		if a.holders == nil {
			a.holders = map[string]int64{}
		}
		if a.holders[holder] <= 0 {
			a.holders[holder] = 1
		}
	}
}

// unhold drops n references of holder on uid (n <= 0: all of them).
func (t *table) unhold(uid, holder string, n int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	a, ok := t.byUID[uid]
	if !ok || a.holders == nil {
		return
	}
	if left := a.holders[holder] - n; n > 0 && left > 0 {
		a.holders[holder] = left
	} else {
		delete(a.holders, holder)
	}
}

// setHolders replaces uid's holders (an adopted record's, read from Redis).
func (t *table) setHolders(uid string, h map[string]int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if a, ok := t.byUID[uid]; ok {
		a.holders = h
	}
}

// named returns a copy of every named tensor's record and holders.
func (t *table) named() (records []v1.Tensor, holders []map[string]int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for name, uid := range t.byName {
		a := t.byUID[uid]
		if a == nil || a.record.UID != uid || a.zeroing != nil {
			continue
		}
		rec := copyRecord(a.record)
		rec.Name = name
		h := make(map[string]int64, len(a.holders))
		for k, v := range a.holders {
			h[k] = v
		}
		records = append(records, rec)
		holders = append(holders, h)
	}
	return records, holders
}

// copyRecord is a record the caller owns.
func copyRecord(r v1.Tensor) v1.Tensor {
	r.Shape = append([]int64(nil), r.Shape...)
	return r
}
