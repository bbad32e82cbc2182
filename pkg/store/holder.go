package store

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/memcuda/memcuda/internal/procinfo"
	"github.com/memcuda/memcuda/pkg/errdefs"
)

// Holders of references, as they appear in a tensor's refs hash:
//
//	registry                 the registry's own reference (create .. delete)
//	conn:<instance>:<n>      a socket connection's lease, dropped when it closes
//	pid:<pid>:<start ticks>  a process that took a reference through the queue
const (
	connPrefix = "conn:"
	pidPrefix  = "pid:"
)

// PIDHolder names the references of a running process. It fails when the
// process does not exist, as the agent sees it, or when start (the start
// time the caller gave, 0 for none) is not that process's: then the pid
// names another process here, as a pid from another PID namespace does.
func PIDHolder(pid int, start uint64) (string, error) {
	st, err := procinfo.StartTime(pid)
	if err != nil {
		return "", fmt.Errorf("%w: process %d is not running in the agent's PID namespace: %v", errdefs.ErrInvalidArgument, pid, err)
	}
	if start != 0 && st != start {
		return "", fmt.Errorf("%w: pid %d is another process in the agent's PID namespace (started at tick %d, not %d); "+
			"a process in a PID namespace of its own must use the agent's socket", errdefs.ErrFailedPrecondition, pid, st, start)
	}
	return pidHolderName(pid, st), nil
}

func pidHolderName(pid int, start uint64) string {
	return pidPrefix + strconv.Itoa(pid) + ":" + strconv.FormatUint(start, 10)
}

// IsPIDHolderOf reports whether h names the references of process pid,
// and of the process started at start when start is not 0.
func IsPIDHolderOf(h string, pid int, start uint64) bool {
	p, s, isPID, wellFormed := parsePIDHolder(h)
	return isPID && wellFormed && p == pid && (start == 0 || s == start)
}

// pidHolderAlive reports whether a pid holder's process still runs; ok is
// false when h is not a pid holder.
func pidHolderAlive(h string) (alive, ok bool) {
	pid, start, isPID, wellFormed := parsePIDHolder(h)
	if !isPID {
		return false, false
	}
	if !wellFormed {
		return false, true // nobody can release it
	}
	return procinfo.Alive(pid, start), true
}

// parsePIDHolder splits a pid holder name; isPID is false for other
// holders, wellFormed false for a pid holder that does not parse.
func parsePIDHolder(h string) (pid int, start uint64, isPID, wellFormed bool) {
	rest, isPID := strings.CutPrefix(h, pidPrefix)
	if !isPID {
		return 0, 0, false, false
	}
	p, s, found := strings.Cut(rest, ":")
	pid, err1 := strconv.Atoi(p)
	start, err2 := strconv.ParseUint(s, 10, 64)
	return pid, start, true, found && err1 == nil && err2 == nil
}

// connHolderInstance returns the agent instance of a connection holder.
func connHolderInstance(h string) (string, bool) {
	rest, found := strings.CutPrefix(h, connPrefix)
	if !found {
		return "", false
	}
	i := strings.LastIndexByte(rest, ':')
	if i < 0 {
		return "", true
	}
	return rest[:i], true
}
