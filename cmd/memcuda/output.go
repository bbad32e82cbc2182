package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"sigs.k8s.io/yaml"

	v1 "github.com/memcuda/memcuda/api/v1"
	"github.com/memcuda/memcuda/pkg/tensor"
)

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func printYAML(w io.Writer, v any) error {
	b, err := yaml.Marshal(v)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// printTensorsJSON prints a JSON array of records, one per line: a
// hundred thousand of them print in a blink, unlike indented JSON.
func printTensorsJSON(w io.Writer, ts []v1.Tensor) error {
	bw := bufio.NewWriterSize(w, 1<<16)
	if len(ts) == 0 {
		bw.WriteString("[]\n")
		return bw.Flush()
	}
	buf := make([]byte, 0, 1024)
	bw.WriteString("[\n")
	for i := range ts {
		buf = v1.AppendTensorJSON(append(buf[:0], "  "...), &ts[i])
		if i < len(ts)-1 {
			buf = append(buf, ',')
		}
		buf = append(buf, '\n')
		bw.Write(buf)
	}
	bw.WriteString("]\n")
	return bw.Flush()
}

// printStructured prints v as json or yaml; ok is false for other formats.
func printStructured(w io.Writer, format string, v any) (ok bool, err error) {
	switch format {
	case "json":
		return true, printJSON(w, v)
	case "yaml":
		return true, printYAML(w, v)
	}
	return false, nil
}

// HumanBytes formats a byte count with a binary unit.
func HumanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// age is how long ago a millisecond timestamp was, as kubectl shows it.
func age(ms int64, now time.Time) string {
	d := now.Sub(time.UnixMilli(ms))
	switch {
	case d < 0:
		return "0s"
	case d < 2*time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < 2*time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

// tensorTable writes tensors as rows; wide adds the columns operators
// debug with.
type tensorTable struct {
	tw   *tabwriter.Writer
	wide bool
	now  time.Time
}

func newTensorTable(w io.Writer, wide bool) *tensorTable {
	return &tensorTable{tw: tabwriter.NewWriter(w, 0, 4, 2, ' ', 0), wide: wide, now: time.Now()}
}

func (t *tensorTable) header() {
	h := "NODE\tNAME\tDTYPE\tSHAPE\tBYTES\tDEVICE\tMODE\tREFS\tSTATE\tAGE"
	if t.wide {
		h += "\tTENANT\tOWNER PID\tSEGMENT\tOFFSET\tAGENT\tUID"
	}
	fmt.Fprintln(t.tw, h)
}

func (t *tensorTable) row(i v1.Tensor, state string) {
	if state == "" {
		state = string(i.State)
	}
	fmt.Fprintf(t.tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%d\t%s\t%s", i.Node, i.Name, i.DType, tensor.FormatShape(i.Shape), HumanBytes(i.Bytes),
		i.Device, i.IPCMode, i.Refcount, state, age(i.Ctime, t.now))
	if t.wide {
		fmt.Fprintf(t.tw, "\t%s\t%d\t%s\t%d\t%s\t%s", orDash(i.Tenant), i.OwnerPID, i.SegmentID, i.Offset, i.Agent, i.UID)
	}
	fmt.Fprintln(t.tw)
}

func (t *tensorTable) flush() error { return t.tw.Flush() }
