package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"math"
	"os"
	"os/exec"

	"github.com/spf13/cobra"

	"github.com/memcuda/memcuda/pkg/client"
)

// The demo: a writer process creates a named tensor and fills it, then exits;
// a reader process opens the same memory by name, checks it and writes back;
// the demo process sees the reader's write. Each step prints what it did.

func demoCommand(g *globals) *cobra.Command {
	var role, name string
	var keep bool
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Two processes share a named tensor",
		Long: `The demo: a writer process creates a named tensor and fills it, then exits; a
reader process opens the same memory by name, checks it and writes back; this
process sees the reader's write. Each step prints what it did.`,
		Args: noArgs,
		RunE: func(*cobra.Command, []string) error {
			ctx, cancel := g.ctx()
			defer cancel()
			return runDemo(ctx, g, role, name, keep)
		},
	}
	cmd.Flags().StringVar(&role, "role", "", "internal: writer or reader")
	cmd.Flags().StringVar(&name, "name", "demo.weights", "tensor name")
	cmd.Flags().BoolVar(&keep, "keep", false, "keep the tensor afterwards")
	_ = cmd.Flags().MarkHidden("role")
	return cmd
}

func runDemo(ctx context.Context, g *globals, role, name string, keep bool) error {
	switch role {
	case "writer":
		return demoWriter(ctx, g, name)
	case "reader":
		return demoReader(ctx, g, name)
	case "":
	default:
		return usagef("unknown demo role %q", role)
	}
	c, err := g.dial(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	h := c.Hello()
	fmt.Fprintf(g.out, "[demo   pid %d] agent %s on node %s, backend %s\n", os.Getpid(), h.Agent, h.Node, h.Mode)
	_ = c.Delete(ctx, name) // a leftover of an earlier run
	self, err := os.Executable()
	if err != nil {
		return err
	}
	for _, r := range []string{"writer", "reader"} {
		cmd := exec.CommandContext(ctx, self, "--socket", client.SocketPath(g.socket), "demo", "--role", r, "--name", name)
		cmd.Stdout, cmd.Stderr = g.out, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("%s process: %w", r, err)
		}
	}
	t, err := c.Get(ctx, name)
	if err != nil {
		return err
	}
	got := math.Float32frombits(binary.LittleEndian.Uint32(t.Bytes()))
	fmt.Fprintf(g.out, "[demo   pid %d] element 0 is %g: the reader's write is visible here, refcount %d\n", os.Getpid(), got, t.Info.Refcount)
	if got != -1 {
		return fmt.Errorf("element 0 is %g, the reader wrote -1", got)
	}
	if err := t.Release(ctx); err != nil {
		return err
	}
	if !keep {
		if err := c.Delete(ctx, name); err != nil {
			return err
		}
		fmt.Fprintf(g.out, "[demo   pid %d] deleted %s; demo OK\n", os.Getpid(), name)
	} else {
		fmt.Fprintf(g.out, "[demo   pid %d] kept %s; demo OK\n", os.Getpid(), name)
	}
	return nil
}

var demoShape = []int64{4, 1024}

func checksum(b []byte) uint64 {
	h := fnv.New64a()
	h.Write(b)
	return h.Sum64()
}

func demoWriter(ctx context.Context, g *globals, name string) error {
	c, err := g.dial(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	t, err := c.Create(ctx, name, "float32", demoShape)
	if err != nil {
		return err
	}
	b := t.Bytes()
	for i := 0; i < len(b)/4; i++ {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(float32(i)*0.5))
	}
	fmt.Fprintf(g.out, "[writer pid %d] created %s f32%v (%d bytes) in %s at offset %d, wrote i*0.5, checksum %016x; exiting\n",
		os.Getpid(), name, demoShape, t.Info.Bytes, t.Info.IPCHandle, t.Info.Offset, checksum(b))
	return nil
}

func demoReader(ctx context.Context, g *globals, name string) error {
	c, err := g.dial(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	t, err := c.Get(ctx, name)
	if err != nil {
		return err
	}
	b := t.Bytes()
	for i := 0; i < len(b)/4; i++ {
		if v := math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:])); v != float32(i)*0.5 {
			return fmt.Errorf("element %d is %g, want %g", i, v, float32(i)*0.5)
		}
	}
	fmt.Fprintf(g.out, "[reader pid %d] opened %s by name (refcount %d), all %d elements match, checksum %016x; writing -1 to element 0\n",
		os.Getpid(), name, t.Info.Refcount, len(b)/4, checksum(b))
	binary.LittleEndian.PutUint32(b, math.Float32bits(-1))
	return nil
}
