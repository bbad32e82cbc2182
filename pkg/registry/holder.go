package registry

import (
	"strconv"
	"strings"
)

// Holders of references, as they appear in a tensor's refs hash:
//
//	registry                    the registry's own reference (create .. delete)
//	conn:<instance>:<n>         a socket connection's lease, dropped when it closes
//	pid:<pid>:<start ticks>     a process that took a reference through the queue
//	pod:<namespace>/<name>/<uid> a pod's reference, held by the pod controller
//
// This file is the only place that writes or reads these formats.
const (
	// HolderRegistry is the registry's own reference, taken by create and dropped by delete.
	HolderRegistry = "registry"

	connPrefix = "conn:"
	pidPrefix  = KindPID + ":"
	podPrefix  = KindPod + ":"

	// KindPID and KindPod are the holder kinds whose names the registry
	// keeps a set of (HeldBy).
	KindPID = "pid"
	KindPod = "pod"
)

// ConnHolder names the lease of connection n of an agent instance.
func ConnHolder(instance string, n uint64) string {
	return connPrefix + instance + ":" + strconv.FormatUint(n, 10)
}

// ConnHolderInstance returns the agent instance of a connection holder; ok
// is false for other holders.
func ConnHolderInstance(h string) (instance string, ok bool) {
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

// PIDHolder names the references of process pid started at start (clock
// ticks since boot, field 22 of /proc/<pid>/stat).
func PIDHolder(pid int, start uint64) string {
	return pidPrefix + strconv.Itoa(pid) + ":" + strconv.FormatUint(start, 10)
}

// ParsePIDHolder splits a pid holder; isPID is false for other holders,
// wellFormed false for a pid holder that does not parse.
func ParsePIDHolder(h string) (pid int, start uint64, isPID, wellFormed bool) {
	rest, isPID := strings.CutPrefix(h, pidPrefix)
	if !isPID {
		return 0, 0, false, false
	}
	p, s, found := strings.Cut(rest, ":")
	pid, err1 := strconv.Atoi(p)
	start, err2 := strconv.ParseUint(s, 10, 64)
	return pid, start, true, found && err1 == nil && err2 == nil
}

// IsPIDHolderOf reports whether h names the references of process pid,
// and of the process started at start when start is not 0.
func IsPIDHolderOf(h string, pid int, start uint64) bool {
	p, s, isPID, wellFormed := ParsePIDHolder(h)
	return isPID && wellFormed && p == pid && (start == 0 || s == start)
}

// PodHolder names the references of one pod incarnation.
func PodHolder(namespace, name, uid string) string {
	return PodNamePrefix(namespace, name) + uid
}

// PodNamePrefix starts the holder of every incarnation of a pod name.
func PodNamePrefix(namespace, name string) string {
	return podPrefix + namespace + "/" + name + "/"
}

// ParsePodHolder splits a pod holder; ok is false for other holders.
func ParsePodHolder(h string) (namespace, name, uid string, ok bool) {
	rest, found := strings.CutPrefix(h, podPrefix)
	if !found {
		return "", "", "", false
	}
	parts := strings.SplitN(rest, "/", 3)
	if len(parts) != 3 {
		return "", "", "", false
	}
	return parts[0], parts[1], parts[2], true
}
