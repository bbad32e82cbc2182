package main

import (
	"fmt"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	v1 "github.com/memcuda/memcuda/api/v1"
	"github.com/memcuda/memcuda/pkg/client"
	"github.com/memcuda/memcuda/pkg/registry"
	"github.com/memcuda/memcuda/pkg/tensor"
)

// inspected is what inspect prints: the record and its holders.
type inspected struct {
	v1.Tensor `json:",inline"`
	Holders   map[string]int64 `json:"holders"`
}

func inspectCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "inspect NAME",
		Short: "Show one tensor's record and who holds references on it",
		Long: `Show one tensor's record (dtype, shape, device, IPC handle, segment, offset,
owner pid, agent, times) and its reference holders: the registry's own
reference, socket connections (conn:AGENT:N), processes that took one
through the Redis queue (pid:PID:START) and pods (pod:NAMESPACE/NAME/UID).`,
		Example: "  memcuda inspect llama.wq\n  memcuda inspect llama.wq -o yaml",
		Args:    exactArgs(1, "inspect takes one tensor name"),
		RunE: func(_ *cobra.Command, args []string) error {
			ctx, cancel := g.ctx()
			defer cancel()
			c, err := g.dial(ctx)
			if err != nil {
				return err
			}
			defer c.Close()
			name := tensorName(args[0])
			info, err := c.Stat(ctx, name)
			if err != nil {
				return err
			}
			holders, err := c.Holders(ctx, name)
			if err != nil {
				return err
			}
			if ok, err := printStructured(g.out, g.output, inspected{info, holders}); ok {
				return err
			}
			tw := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
			rows := [][2]string{
				{"Name", info.Name}, {"UID", info.UID}, {"DType", string(info.DType)}, {"Shape", tensor.FormatShape(info.Shape)},
				{"Bytes", fmt.Sprintf("%d (%s)", info.Bytes, HumanBytes(info.Bytes))}, {"Device", fmt.Sprint(info.Device)},
				{"Device UUID", info.DeviceUUID}, {"IPC mode", string(info.IPCMode)}, {"IPC handle", info.IPCHandle},
				{"Segment", fmt.Sprintf("%s (%s)", info.SegmentID, HumanBytes(info.SegmentSize))}, {"Offset", fmt.Sprint(info.Offset)},
				{"Refcount", fmt.Sprint(info.Refcount)}, {"State", string(info.State)}, {"Owner PID", fmt.Sprint(info.OwnerPID)},
				{"Agent", info.Agent}, {"Node", info.Node}, {"Tenant", info.Tenant},
				{"Created", time.UnixMilli(info.Ctime).UTC().Format(time.RFC3339Nano)},
				{"Modified", time.UnixMilli(info.Mtime).UTC().Format(time.RFC3339Nano)},
			}
			for i, pc := range info.Pieces {
				rows = append(rows, [2]string{fmt.Sprintf("Piece %d", i), fmt.Sprintf("%s (%s) at %d, %s",
					pc.SegmentID, HumanBytes(pc.SegmentSize), pc.Offset, HumanBytes(pc.Size))})
			}
			for _, r := range rows {
				fmt.Fprintf(tw, "%s:\t%s\n", r[0], r[1])
			}
			fmt.Fprintf(tw, "Holders:\t%d\n", len(holders))
			keys := make([]string, 0, len(holders))
			for h := range holders {
				keys = append(keys, h)
			}
			sort.Strings(keys)
			for _, h := range keys {
				fmt.Fprintf(tw, "  %s\t%d\t%s\n", h, holders[h], describeHolder(h))
			}
			return tw.Flush()
		},
	}
}

// describeHolder says what kind of holder h is.
func describeHolder(h string) string {
	if h == registry.HolderRegistry {
		return "the registry (until rm)"
	}
	if inst, ok := registry.ConnHolderInstance(h); ok {
		return "a socket connection to agent " + inst
	}
	if pid, _, ok, _ := registry.ParsePIDHolder(h); ok {
		return fmt.Sprintf("process %d, through the Redis queue", pid)
	}
	if ns, name, _, ok := registry.ParsePodHolder(h); ok {
		return "pod " + ns + "/" + name
	}
	return ""
}

func createCommand(g *globals) *cobra.Command {
	var dtype, shapeStr, device string
	cmd := &cobra.Command{
		Use:   "create NAME --dtype DTYPE --shape DIMS [--device N|UUID]",
		Short: "Create a tensor (zero-filled), or check the existing one",
		Long: `Create a named tensor, zero-filled, or check that the existing one has this
dtype and shape (exit 5 when it does not). The CLI's own reference goes
when it exits; the registry's keeps the tensor until memcuda rm.`,
		Example: "  memcuda create llama.wq --dtype bf16 --shape 4096,4096\n  memcuda create scalar --dtype f32 --shape ''",
		Args:    exactArgs(1, "create takes one tensor name"),
		RunE: func(_ *cobra.Command, args []string) error {
			shape, err := parseShape(shapeStr)
			if err != nil {
				return err
			}
			ctx, cancel := g.ctx()
			defer cancel()
			c, err := g.dial(ctx)
			if err != nil {
				return err
			}
			defer c.Close()
			var opts []client.CreateOption
			if device != "" {
				opts = append(opts, client.OnDevice(device))
			}
			t, err := c.Create(ctx, tensorName(args[0]), dtype, shape, opts...)
			if err != nil {
				return err
			}
			if ok, err := printStructured(g.out, g.output, t.Info); ok {
				return err
			}
			if g.output == "name" {
				fmt.Fprintf(g.out, "tensor/%s\n", t.Info.Name)
				return nil
			}
			fmt.Fprintf(g.out, "%s %s%s %s on device %d (%s)\n", t.Info.Name, t.Info.DType, tensor.FormatShape(t.Info.Shape), HumanBytes(t.Info.Bytes), t.Info.Device, t.Info.IPCMode)
			return nil
		},
	}
	cmd.Flags().StringVar(&dtype, "dtype", "f32", "element type: f16 bf16 f32 f64 i8 i16 i32 i64 u8 bool f8e4m3 f8e5m2 (or aliases such as float32)")
	cmd.Flags().StringVar(&shapeStr, "shape", "", "dimensions, e.g. 2,3 or 2x3 (empty: a scalar)")
	cmd.Flags().StringVar(&device, "device", "", "device ordinal or GPU UUID (default 0)")
	return cmd
}

func parseShape(s string) ([]int64, error) {
	s = strings.Trim(strings.TrimSpace(s), "[]()")
	if s == "" {
		return []int64{}, nil
	}
	var out []int64
	for _, p := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == 'x' || r == ' ' }) {
		var n int64
		if _, err := fmt.Sscan(p, &n); err != nil || fmt.Sprint(n) != p {
			return nil, usagef("bad shape %q: %q is not an integer", s, p)
		}
		out = append(out, n)
	}
	return out, nil
}

func rmCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "rm NAME...",
		Aliases: []string{"delete"},
		Short:   "Delete tensors: no new references; memory goes with the last one",
		Example: "  memcuda rm llama.wq\n  memcuda ls -o name --prefix llama. | xargs memcuda rm",
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usagef("rm takes one or more tensor names")
			}
			return nil
		},
		RunE: func(_ *cobra.Command, args []string) error {
			ctx, cancel := g.ctx()
			defer cancel()
			c, err := g.dial(ctx)
			if err != nil {
				return err
			}
			defer c.Close()
			var firstErr error
			for _, a := range args {
				n := tensorName(a)
				if err := c.Delete(ctx, n); err != nil {
					fmt.Fprintf(g.out, "%s: %v\n", n, err)
					if firstErr == nil {
						firstErr = err
					}
					continue
				}
				if g.output == "name" {
					fmt.Fprintf(g.out, "tensor/%s\n", n)
				} else {
					fmt.Fprintf(g.out, "%s deleted\n", n)
				}
			}
			return firstErr
		},
	}
}

func statsCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "stats",
		Short: "Pool statistics per device and tenant",
		Long: `Pool statistics per device and tenant: allocated, reserved, peak reserved,
limit, segments, blocks, free blocks and fragmentation, and the freed blocks
still waiting for clients' GPU work.`,
		Args: noArgs,
		RunE: func(*cobra.Command, []string) error {
			ctx, cancel := g.ctx()
			defer cancel()
			c, err := g.dial(ctx)
			if err != nil {
				return err
			}
			defer c.Close()
			st, err := c.Stats(ctx)
			if err != nil {
				return err
			}
			if ok, err := printStructured(g.out, g.output, st); ok {
				return err
			}
			h := c.Hello()
			fmt.Fprintf(g.out, "agent %s on node %s, backend %s, %d tensors, %d freed blocks waiting for GPU work\n", h.Agent, h.Node, h.Mode, st.Tensors, st.Pending)
			tw := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "DEVICE\tTENANT\tALLOCATED\tRESERVED\tPEAK RESERVED\tLIMIT\tSEGMENTS\tBLOCKS\tFREE BLOCKS\tFRAGMENTATION")
			for _, p := range st.Pools {
				limit := "none"
				if p.Limit > 0 {
					limit = HumanBytes(p.Limit)
				}
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%.3f\n", p.Device, orDash(p.Tenant), HumanBytes(p.Allocated), HumanBytes(p.Reserved),
					HumanBytes(p.PeakReserved), limit, p.Segments, p.ActiveBlocks, p.FreeBlocks, p.Fragmentation)
			}
			return tw.Flush()
		},
	}
}

func gcCommand(g *globals) *cobra.Command {
	var trim bool
	cmd := &cobra.Command{
		Use:   "gc [--trim]",
		Short: "Drop the references of dead processes now",
		Long: `Drop the references of processes that are gone (the agent does this every
--gc-interval anyway); --trim also gives cached free segments back to the driver.`,
		Args: noArgs,
		RunE: func(*cobra.Command, []string) error {
			ctx, cancel := g.ctx()
			defer cancel()
			c, err := g.dial(ctx)
			if err != nil {
				return err
			}
			defer c.Close()
			res, err := c.GC(ctx)
			if err != nil {
				return err
			}
			var trimmed uint64
			if trim {
				if trimmed, err = c.Trim(ctx); err != nil {
					return err
				}
			}
			if ok, err := printStructured(g.out, g.output, map[string]any{"holders": res.Holders, "freed": res.Freed, "trimmed": trimmed}); ok {
				return err
			}
			fmt.Fprintf(g.out, "dropped references of %d dead holders, freed %d tensors %v", res.Holders, len(res.Freed), res.Freed)
			if trim {
				fmt.Fprintf(g.out, ", trimmed %s", HumanBytes(trimmed))
			}
			fmt.Fprintln(g.out)
			return nil
		},
	}
	cmd.Flags().BoolVar(&trim, "trim", false, "also release cached free segments")
	return cmd
}
