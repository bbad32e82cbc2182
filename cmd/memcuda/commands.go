package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	v1 "github.com/memcuda/memcuda/api/v1"
	"github.com/memcuda/memcuda/pkg/client"
	"github.com/memcuda/memcuda/pkg/tensor"
)

func (g globals) printJSON(v any) error {
	enc := json.NewEncoder(g.out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
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

func cmdList(ctx context.Context, g globals, args []string) error {
	fs := flag.NewFlagSet("ls", flag.ContinueOnError)
	allNodes := fs.Bool("all-nodes", false, "list every node's tensors from the shared Redis")
	redisURL := fs.String("redis-url", os.Getenv("MEMCUDA_REDIS_URL"), "Redis URL (with --all-nodes)")
	clusterPrefix := fs.String("cluster-prefix", "tensor:", "the agents' --cluster-prefix (with --all-nodes)")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageError{"ls takes no arguments"}
	}
	var list []v1.Tensor
	if *allNodes {
		if *redisURL == "" {
			return usageError{"ls --all-nodes needs --redis-url (or $MEMCUDA_REDIS_URL)"}
		}
		if list, err = listAllNodes(ctx, *redisURL, *clusterPrefix); err != nil {
			return err
		}
	} else {
		c, err := g.dial(ctx)
		if err != nil {
			return err
		}
		defer c.Close()
		if list, err = c.List(ctx); err != nil {
			return err
		}
	}
	if g.output == "json" {
		if list == nil {
			list = []v1.Tensor{}
		}
		return g.printJSON(list)
	}
	tw := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tNAME\tDTYPE\tSHAPE\tBYTES\tDEVICE\tMODE\tREFS\tSTATE\tAGE")
	for _, t := range list {
		age := time.Since(time.UnixMilli(t.Ctime)).Round(time.Second)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%d\t%s\t%s\n", t.Node, t.Name, t.DType, tensor.FormatShape(t.Shape), HumanBytes(t.Bytes), t.Device, t.IPCMode, t.Refcount, t.State, age)
	}
	return tw.Flush()
}

func cmdInspect(ctx context.Context, g globals, args []string) error {
	fs := flag.NewFlagSet("inspect", flag.ContinueOnError)
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError{"inspect takes one tensor name"}
	}
	c, err := g.dial(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	info, err := c.Stat(ctx, pos[0])
	if err != nil {
		return err
	}
	if g.output == "json" {
		return g.printJSON(info)
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
	for _, r := range rows {
		fmt.Fprintf(tw, "%s:\t%s\n", r[0], r[1])
	}
	return tw.Flush()
}

func cmdCreate(ctx context.Context, g globals, args []string) error {
	fs := flag.NewFlagSet("create", flag.ContinueOnError)
	dtype := fs.String("dtype", "f32", "element type")
	shapeStr := fs.String("shape", "", "shape, e.g. 2,3 (empty: a scalar)")
	device := fs.String("device", "", "device ordinal or UUID")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError{"create takes one tensor name"}
	}
	shape, err := parseShape(*shapeStr)
	if err != nil {
		return err
	}
	c, err := g.dial(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	var opts []client.CreateOption
	if *device != "" {
		opts = append(opts, client.OnDevice(*device))
	}
	t, err := c.Create(ctx, pos[0], *dtype, shape, opts...)
	if err != nil {
		return err
	}
	// The CLI's own lease goes when it exits; the registry's reference keeps the tensor.
	if g.output == "json" {
		return g.printJSON(t.Info)
	}
	fmt.Fprintf(g.out, "%s %s%s %s on device %d (%s)\n", t.Info.Name, t.Info.DType, tensor.FormatShape(t.Info.Shape), HumanBytes(t.Info.Bytes), t.Info.Device, t.Info.IPCMode)
	return nil
}

func cmdRemove(ctx context.Context, g globals, args []string) error {
	fs := flag.NewFlagSet("rm", flag.ContinueOnError)
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		return usageError{"rm takes one or more tensor names"}
	}
	c, err := g.dial(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	var firstErr error
	for _, n := range pos {
		if err := c.Delete(ctx, n); err != nil {
			fmt.Fprintf(g.out, "%s: %v\n", n, err)
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		if g.output == "table" {
			fmt.Fprintf(g.out, "%s deleted\n", n)
		}
	}
	return firstErr
}

func cmdStats(ctx context.Context, g globals, args []string) error {
	if len(args) > 0 {
		return usageError{"stats takes no arguments"}
	}
	c, err := g.dial(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	st, err := c.Stats(ctx)
	if err != nil {
		return err
	}
	if g.output == "json" {
		return g.printJSON(st)
	}
	h := c.Hello()
	fmt.Fprintf(g.out, "agent %s on node %s, backend %s, %d tensors\n", h.Agent, h.Node, h.Mode, st.Tensors)
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
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func cmdGC(ctx context.Context, g globals, args []string) error {
	fs := flag.NewFlagSet("gc", flag.ContinueOnError)
	trim := fs.Bool("trim", false, "also release cached free segments")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageError{"gc takes no arguments"}
	}
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
	if *trim {
		if trimmed, err = c.Trim(ctx); err != nil {
			return err
		}
	}
	if g.output == "json" {
		return g.printJSON(map[string]any{"holders": res.Holders, "freed": res.Freed, "trimmed": trimmed})
	}
	fmt.Fprintf(g.out, "dropped references of %d dead holders, freed %d tensors %v", res.Holders, len(res.Freed), res.Freed)
	if *trim {
		fmt.Fprintf(g.out, ", trimmed %s", HumanBytes(trimmed))
	}
	fmt.Fprintln(g.out)
	return nil
}
