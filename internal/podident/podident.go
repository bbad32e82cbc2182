// Package podident finds the Kubernetes pod of a process from its cgroup
// path (/proc/<pid>/cgroup), for the cgroup v1 and v2 layouts that
// containerd, CRI-O and Docker create with the systemd and cgroupfs drivers.
package podident

import (
	"fmt"
	"os"
	"regexp"
	"strings"
)

// Pod is what a cgroup path says about a process.
type Pod struct {
	UID       string // pod UID with dashes, "" for a process outside any pod
	Container string // container id, when the path names one
}

var (
	// kubepods-burstable-pod1b2c..._.slice (systemd) or /kubepods/besteffort/pod1b2c-... (cgroupfs)
	podRE = regexp.MustCompile(`pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})`)
	// cri-containerd-<id>.scope, crio-<id>.scope, docker-<id>.scope, or a bare 64-hex directory.
	ctrRE = regexp.MustCompile(`(?:cri-containerd-|crio-|docker-|containerd-)?([0-9a-f]{64})(?:\.scope)?$`)
)

// Parse reads the content of a /proc/<pid>/cgroup file.
func Parse(content string) Pod {
	var p Pod
	for _, line := range strings.Split(content, "\n") {
		// hierarchy-ID:controllers:path; the path may hold ':' itself.
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		path := parts[2]
		m := podRE.FindStringSubmatch(path)
		if m == nil {
			continue
		}
		p.UID = strings.ReplaceAll(m[1], "_", "-")
		if c := ctrRE.FindStringSubmatch(path); c != nil {
			p.Container = c[1]
		}
		return p
	}
	return p
}

// OfPID reads and parses /proc/<pid>/cgroup.
func OfPID(pid int) (Pod, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return Pod{}, err
	}
	return Parse(string(b)), nil
}
