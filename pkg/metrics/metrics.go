// Package metrics exports the agent's Prometheus metrics: operation counts and
// latencies by path (socket, queue) and result code, pool gauges per device
// and tenant, and the command queue's depth.
package metrics

import (
	"context"
	"math"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	v1 "github.com/memcuda/memcuda/api/v1"
	"github.com/memcuda/memcuda/internal/nodecpu"
	"github.com/memcuda/memcuda/pkg/errdefs"
)

// StatsSource gives the pools' statistics (the agent's store).
type StatsSource interface {
	Stats() v1.Stats
}

// Metrics records operations.
type Metrics struct {
	ops     *prometheus.CounterVec
	latency *prometheus.HistogramVec
	lost    prometheus.Counter
	series  sync.Map // seriesKey -> *opSeries: Observe is on every request's path
}

type seriesKey struct{ path, op, code string }

type opSeries struct {
	count   prometheus.Counter
	latency prometheus.Observer
}

// New registers the agent's metrics on reg. queueDepth may be nil.
func New(reg prometheus.Registerer, st StatsSource, queueDepth func(context.Context) (int64, error)) *Metrics {
	m := &Metrics{
		ops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "memcuda_ops_total", Help: "Operations handled, by path (socket|queue), op and result code.",
		}, []string{"path", "op", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "memcuda_op_duration_seconds", Help: "Time to handle an operation, by path and op.",
			Buckets: prometheus.ExponentialBuckets(10e-6, 2.5, 14),
		}, []string{"path", "op"}),
		lost: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "memcuda_tensors_lost_total", Help: "Tensors of earlier agent instances whose memory did not survive them (their records were removed).",
		}),
	}
	reg.MustRegister(m.ops, m.latency, m.lost, &poolCollector{st: st, queueDepth: queueDepth})
	return m
}

// TensorLost counts a tensor whose memory did not survive its agent.
func (m *Metrics) TensorLost() { m.lost.Inc() }

// Observe records one operation that started at start.
func (m *Metrics) Observe(path, op string, err error, start time.Time) {
	k := seriesKey{path, op, errdefs.Code(err)}
	v, ok := m.series.Load(k)
	if !ok {
		v, _ = m.series.LoadOrStore(k, &opSeries{count: m.ops.WithLabelValues(path, op, k.code), latency: m.latency.WithLabelValues(path, op)})
	}
	sr := v.(*opSeries)
	sr.count.Inc()
	sr.latency.Observe(time.Since(start).Seconds())
}

// HotSpinSource reports the server's --hot-spin (server.Server): its polls,
// and whether they may run now.
type HotSpinSource interface {
	HotSpins() (caught, missed, skipped uint64)
	HotSpinOn() bool
}

// NodeCPUSource is what --hot-spin's gate last read of the node's CPUs
// (nodecpu.Gate).
type NodeCPUSource interface {
	Last() (nodecpu.Signal, float64)
}

// RegisterHotSpins registers memcuda_hot_spins_total and its companions,
// read from src, and with a gate, what the gate read, on reg.
func RegisterHotSpins(reg prometheus.Registerer, src HotSpinSource, gate NodeCPUSource) {
	reg.MustRegister(hotSpinCollector{src, gate})
}

var (
	hotSpinsDesc = prometheus.NewDesc("memcuda_hot_spins_total",
		"Polls of --hot-spin, by whether the next request came within it (caught) or not.", []string{"caught"}, nil)
	hotSpinsSkippedDesc = prometheus.NewDesc("memcuda_hot_spins_skipped_total",
		"Polls of --hot-spin not made because the node's CPUs were busy.", nil, nil)
	hotSpinOnDesc = prometheus.NewDesc("memcuda_hot_spin_on",
		"1 while --hot-spin may poll, 0 while the node's CPUs are busy.", nil, nil)
	nodePressureDesc = prometheus.NewDesc("memcuda_node_cpu_pressure",
		"Share of the last 100ms in which some task of the node waited for a CPU (/proc/pressure/cpu), as --hot-spin's gate read it.", nil, nil)
	nodeIdleDesc = prometheus.NewDesc("memcuda_node_idle_cpus",
		"The node's idle CPUs over the last 100ms, as --hot-spin's gate read it where the kernel has no /proc/pressure/cpu.", nil, nil)
)

type hotSpinCollector struct {
	src  HotSpinSource
	gate NodeCPUSource // nil: polls whatever the node's load
}

func (c hotSpinCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{hotSpinsDesc, hotSpinsSkippedDesc, hotSpinOnDesc, nodePressureDesc, nodeIdleDesc} {
		ch <- d
	}
}

func (c hotSpinCollector) Collect(ch chan<- prometheus.Metric) {
	caught, missed, skipped := c.src.HotSpins()
	ch <- prometheus.MustNewConstMetric(hotSpinsDesc, prometheus.CounterValue, float64(caught), "true")
	ch <- prometheus.MustNewConstMetric(hotSpinsDesc, prometheus.CounterValue, float64(missed), "false")
	ch <- prometheus.MustNewConstMetric(hotSpinsSkippedDesc, prometheus.CounterValue, float64(skipped))
	on := 0.0
	if c.src.HotSpinOn() {
		on = 1
	}
	ch <- prometheus.MustNewConstMetric(hotSpinOnDesc, prometheus.GaugeValue, on)
	if c.gate == nil {
		return
	}
	signal, v := c.gate.Last()
	if math.IsNaN(v) {
		return // not sampled yet
	}
	d := nodeIdleDesc
	if signal == nodecpu.SignalPressure {
		d = nodePressureDesc
	}
	ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v)
}

var (
	tensorsDesc   = prometheus.NewDesc("memcuda_tensors", "Tensors whose memory this agent holds.", nil, nil)
	allocDesc     = prometheus.NewDesc("memcuda_pool_allocated_bytes", "Bytes in allocated blocks.", []string{"device", "tenant"}, nil)
	reservedDesc  = prometheus.NewDesc("memcuda_pool_reserved_bytes", "Bytes in segments obtained from the backend.", []string{"device", "tenant"}, nil)
	peakDesc      = prometheus.NewDesc("memcuda_pool_peak_reserved_bytes", "Peak of reserved bytes.", []string{"device", "tenant"}, nil)
	segmentsDesc  = prometheus.NewDesc("memcuda_pool_segments", "Segments held.", []string{"device", "tenant"}, nil)
	fragDesc      = prometheus.NewDesc("memcuda_pool_fragmentation_ratio", "1 - largest free block / free bytes.", []string{"device", "tenant"}, nil)
	queueDepthDsc = prometheus.NewDesc("memcuda_queue_depth", "Commands waiting in the command list.", nil, nil)
)

type poolCollector struct {
	st         StatsSource
	queueDepth func(context.Context) (int64, error)
}

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{tensorsDesc, allocDesc, reservedDesc, peakDesc, segmentsDesc, fragDesc, queueDepthDsc} {
		ch <- d
	}
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.st.Stats()
	ch <- prometheus.MustNewConstMetric(tensorsDesc, prometheus.GaugeValue, float64(st.Tensors))
	for _, p := range st.Pools {
		l := []string{strconv.Itoa(p.Device), p.Tenant}
		ch <- prometheus.MustNewConstMetric(allocDesc, prometheus.GaugeValue, float64(p.Allocated), l...)
		ch <- prometheus.MustNewConstMetric(reservedDesc, prometheus.GaugeValue, float64(p.Reserved), l...)
		ch <- prometheus.MustNewConstMetric(peakDesc, prometheus.GaugeValue, float64(p.PeakReserved), l...)
		ch <- prometheus.MustNewConstMetric(segmentsDesc, prometheus.GaugeValue, float64(p.Segments), l...)
		ch <- prometheus.MustNewConstMetric(fragDesc, prometheus.GaugeValue, p.Fragmentation, l...)
	}
	if c.queueDepth != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if d, err := c.queueDepth(ctx); err == nil {
			ch <- prometheus.MustNewConstMetric(queueDepthDsc, prometheus.GaugeValue, float64(d))
		}
	}
}
