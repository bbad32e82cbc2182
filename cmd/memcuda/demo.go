package main

import (
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"hash/fnv"
	"math"
	"os"
	"os/exec"

	"github.com/memcuda/memcuda/pkg/client"
)

// The demo: a writer process creates a named tensor and fills it, then exits;
// a reader process opens the same memory by name, checks it and writes back;
// the demo process sees the reader's write. Each step prints what it did.

func cmdDemo(ctx context.Context, g globals, args []string) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	role := fs.String("role", "", "internal: writer or reader")
	name := fs.String("name", "demo.weights", "tensor name")
	keep := fs.Bool("keep", false, "keep the tensor afterwards")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageError{"demo takes no arguments"}
	}
	switch *role {
	case "writer":
		return demoWriter(ctx, g, *name)
	case "reader":
		return demoReader(ctx, g, *name)
	case "":
	default:
		return usageError{fmt.Sprintf("unknown demo role %q", *role)}
	}
	c, err := g.dial(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	h := c.Hello()
	fmt.Fprintf(g.out, "[demo   pid %d] agent %s on node %s, backend %s\n", os.Getpid(), h.Agent, h.Node, h.Mode)
	_ = c.Delete(ctx, *name) // a leftover of an earlier run
	self, err := os.Executable()
	if err != nil {
		return err
	}
	for _, r := range []string{"writer", "reader"} {
		cmd := exec.CommandContext(ctx, self, "--socket", client.SocketPath(g.socket), "demo", "--role", r, "--name", *name)
		cmd.Stdout, cmd.Stderr = g.out, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("%s process: %w", r, err)
		}
	}
	t, err := c.Get(ctx, *name)
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
	if !*keep {
		if err := c.Delete(ctx, *name); err != nil {
			return err
		}
		fmt.Fprintf(g.out, "[demo   pid %d] deleted %s; demo OK\n", os.Getpid(), *name)
	} else {
		fmt.Fprintf(g.out, "[demo   pid %d] kept %s; demo OK\n", os.Getpid(), *name)
	}
	return nil
}

var demoShape = []int64{4, 1024}

func checksum(b []byte) uint64 {
	h := fnv.New64a()
	h.Write(b)
	return h.Sum64()
}

func demoWriter(ctx context.Context, g globals, name string) error {
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

func demoReader(ctx context.Context, g globals, name string) error {
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
