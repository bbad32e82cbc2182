// Package nodecpu reads how much of the node's CPU time went idle, from
// /proc/stat: the agent polls for requests only while the node has CPUs
// to spare (server.WithHotSpinIdle).
package nodecpu

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
)

// Times are the node's CPU times since boot, in clock ticks, summed over
// its online CPUs.
type Times struct {
	Idle  uint64 // idle and waiting for I/O
	Total uint64 // every state
	CPUs  int    // online CPUs (the cpuN lines)
}

// IdleCPUs is how many CPUs were idle on average from a to b.
func IdleCPUs(a, b Times) float64 {
	if b.Total <= a.Total || b.CPUs == 0 {
		return 0
	}
	return float64(b.CPUs) * float64(b.Idle-a.Idle) / float64(b.Total-a.Total)
}

// Parse reads Times from the text of /proc/stat.
func Parse(r io.Reader) (Times, error) {
	br := bufio.NewReaderSize(r, 4096)
	var t Times
	seen := false
	for {
		line, err := br.ReadSlice('\n')
		if !bytes.HasPrefix(line, []byte("cpu")) {
			// The cpu lines come first; the rest (interrupt counts, which
			// can be long) is not read.
			if err != nil && err != io.EOF && err != bufio.ErrBufferFull {
				return Times{}, err
			}
			break
		}
		name, fields, _ := bytes.Cut(bytes.TrimSpace(line), []byte(" "))
		if len(name) > 3 {
			t.CPUs++
		} else {
			// user nice system idle iowait irq softirq steal; guest time
			// is counted in user already.
			f := bytes.Fields(fields)
			if len(f) < 8 {
				return Times{}, fmt.Errorf("/proc/stat: the cpu line has %d fields, want at least 8", len(f))
			}
			for i := range 8 {
				v, err := strconv.ParseUint(string(f[i]), 10, 64)
				if err != nil {
					return Times{}, fmt.Errorf("/proc/stat: cpu field %d: %w", i+1, err)
				}
				t.Total += v
				if i == 3 || i == 4 {
					t.Idle += v
				}
			}
			seen = true
		}
		if err != nil {
			break
		}
	}
	if !seen || t.CPUs == 0 {
		return Times{}, fmt.Errorf("/proc/stat: no cpu lines")
	}
	return t, nil
}

// Read reads the node's Times from /proc/stat.
func Read() (Times, error) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return Times{}, err
	}
	defer f.Close()
	return Parse(f)
}

// Sampler reports the node's idle CPUs between its calls.
type Sampler struct {
	mu   sync.Mutex
	last Times
}

// IdleCPUs is how many CPUs were idle on average since the previous call
// (since the first call's own read for the first: zero).
func (s *Sampler) IdleCPUs() (float64, error) {
	t, err := Read()
	if err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	idle := IdleCPUs(s.last, t)
	if s.last.Total == 0 {
		idle = 0
	}
	s.last = t
	return idle, nil
}
