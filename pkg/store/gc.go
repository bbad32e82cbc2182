package store

import (
	"context"
	"fmt"

	"github.com/memcuda/memcuda/internal/procinfo"
	"github.com/memcuda/memcuda/pkg/errdefs"
	"github.com/memcuda/memcuda/pkg/registry"
)

// PIDHolder names the references of a running process. It fails when the
// process does not exist, as the agent sees it, or when start (the start
// time the caller gave, 0 for none) is not that process's: then the pid
// names another process here, as a pid from another PID namespace does.
func PIDHolder(pid int, start uint64) (string, error) {
	st, err := procinfo.StartTime(pid)
	if err != nil {
		return "", fmt.Errorf("%w: process %d is not running in the agent's PID namespace: %w", errdefs.ErrInvalidArgument, pid, err)
	}
	if start != 0 && st != start {
		return "", fmt.Errorf("%w: pid %d is another process in the agent's PID namespace (started at tick %d, not %d); "+
			"a process in a PID namespace of its own must use the agent's socket", errdefs.ErrFailedPrecondition, pid, st, start)
	}
	return registry.PIDHolder(pid, st), nil
}

// GCResult reports what a GC pass dropped.
type GCResult struct {
	Holders int      // dead holders whose references were dropped
	Freed   []string // tensors freed as a result
}

// GC drops the references of processes that are gone (pid holders whose pid
// no longer runs with the recorded start time) and of this instance's closed
// connections whose release failed earlier. It reads only the names that
// may hold such references (the registry's pid set and the leases whose
// drop failed), not every tensor.
func (s *Store) GC(ctx context.Context) (GCResult, error) {
	var out GCResult
	if err := s.settleDoubts(ctx); err != nil {
		return out, err
	}
	names, err := s.reg.HeldBy(ctx, registry.KindPID)
	if err != nil {
		return out, err
	}
	var untracked []string
	for _, name := range names {
		pids, err := s.gcName(ctx, name, &out)
		if err != nil {
			return out, err
		}
		if pids == 0 {
			untracked = append(untracked, name)
		}
	}
	if err := s.reg.NotHeldBy(ctx, registry.KindPID, untracked...); err != nil {
		return out, err
	}
	for holder, names := range s.leases.failedDrops() {
		var left []string
		for _, name := range names {
			res, _, err := s.DropHolder(ctx, name, holder)
			if err != nil {
				left = append(left, name)
				continue
			}
			out.Holders++
			if res.Freed {
				out.Freed = append(out.Freed, name)
			}
		}
		s.leases.dropFailed(holder, left)
	}
	return out, nil
}

// gcName drops the dead holders of one tensor and returns how many pid
// holders it still has.
func (s *Store) gcName(ctx context.Context, name string, out *GCResult) (pids int, err error) {
	holders, err := s.reg.Holders(ctx, name)
	if err != nil {
		return 0, err
	}
	for h := range holders {
		if !s.deadHolder(h) {
			if _, _, isPID, _ := registry.ParsePIDHolder(h); isPID {
				pids++
			}
			continue
		}
		res, dropped, err := s.DropHolder(ctx, name, h)
		if err != nil {
			return 0, err
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
	return pids, nil
}

func (s *Store) deadHolder(h string) bool {
	if pid, start, isPID, wellFormed := registry.ParsePIDHolder(h); isPID {
		return !wellFormed || !procinfo.Alive(pid, start) // nobody can release a malformed one
	}
	if inst, ok := registry.ConnHolderInstance(h); ok {
		return inst == s.instance && !s.leases.live(h)
	}
	return false
}
