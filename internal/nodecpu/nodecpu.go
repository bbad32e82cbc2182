// Package nodecpu reads how busy the node's CPUs are: how often a task
// waited for one (the kernel's pressure stall information,
// /proc/pressure/cpu) and how many went idle (/proc/stat). Its Gate lets
// the agent poll for requests only while the node has CPUs to spare
// (server.WithHotSpinGate).
package nodecpu

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"sync"
	"time"
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

// Pressure is the time, in microseconds since boot, in which at least one
// task waited for a CPU ("some" of /proc/pressure/cpu).
func Pressure() (uint64, error) {
	b, err := os.ReadFile("/proc/pressure/cpu")
	if err != nil {
		return 0, err
	}
	return ParsePressure(b)
}

// ParsePressure reads the "some" total of /proc/pressure/cpu's text.
func ParsePressure(b []byte) (uint64, error) {
	for line := range bytes.Lines(b) {
		if !bytes.HasPrefix(line, []byte("some ")) {
			continue
		}
		for f := range bytes.FieldsSeq(line) {
			if v, ok := bytes.CutPrefix(f, []byte("total=")); ok {
				return strconv.ParseUint(string(v), 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("/proc/pressure/cpu: no some total")
}

// Signal names what a Gate reads.
type Signal string

const (
	// SignalPressure: the share of time in which some task waited for a
	// CPU. It sees the demand that polls would take from, while they run.
	SignalPressure Signal = "pressure"
	// SignalIdle: idle CPUs, where the kernel has no pressure stall
	// information (built without it, or booted with psi=0).
	SignalIdle Signal = "idle"
)

// Gate decides whether the agent's polls may run, from how busy the
// node's CPUs were since its last call. With pressure stall information
// it reads the share of time some task waited for a CPU: polls stop once
// it reaches maxPressure and start again below two thirds of it. Polls
// that take only CPUs nobody wanted make nobody wait, so a lightly loaded
// node keeps them; a node whose tasks wait for CPUs, with the polls or
// without, does not. Without that information it reads idle CPUs: polls
// start once spinners CPUs could poll with minIdle still idle beside
// them, and stop once fewer than minIdle are idle.
type Gate struct {
	spinners    int
	maxPressure float64
	minIdle     float64
	signal      Signal

	mu       sync.Mutex
	value    float64   // the last sample of signal
	at       time.Time // of the last pressure sample
	pressure uint64
	times    Times
}

// NewGate returns a Gate over the node's pressure stall information, or
// over its idle CPUs where the kernel has none.
func NewGate(spinners int, maxPressure, minIdle float64) (*Gate, error) {
	g := &Gate{spinners: spinners, maxPressure: maxPressure, minIdle: minIdle, value: math.NaN(), at: time.Now()}
	var err error
	if g.pressure, err = Pressure(); err == nil {
		g.signal = SignalPressure
		return g, nil
	}
	if g.times, err = Read(); err != nil {
		return nil, fmt.Errorf("neither /proc/pressure/cpu nor /proc/stat can be read: %w", err)
	}
	g.signal = SignalIdle
	return g, nil
}

// Allow is whether polls may run until the next call, given whether they
// were on since the last (on).
func (g *Gate) Allow(on bool) (bool, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.signal == SignalPressure {
		now := time.Now()
		p, err := Pressure()
		if err != nil {
			return false, err
		}
		elapsed := float64(now.Sub(g.at)) / float64(time.Microsecond)
		g.value = 0
		if elapsed > 0 && p >= g.pressure {
			g.value = min(float64(p-g.pressure)/elapsed, 1)
		}
		g.pressure, g.at = p, now
	} else {
		t, err := Read()
		if err != nil {
			return false, err
		}
		g.value = IdleCPUs(g.times, t)
		g.times = t
	}
	return g.allow(g.value, on), nil
}

// allow is Allow's decision on a sample of the gate's signal.
func (g *Gate) allow(v float64, on bool) bool {
	if g.signal == SignalPressure {
		if on {
			return v < g.maxPressure
		}
		return v < g.maxPressure*2/3
	}
	need := g.minIdle
	if !on {
		need += float64(g.spinners)
	}
	return v >= need
}

// Last is what the gate reads and its last sample (NaN before one).
func (g *Gate) Last() (Signal, float64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.signal, g.value
}
