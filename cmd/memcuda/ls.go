package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/spf13/cobra"

	v1 "github.com/memcuda/memcuda/api/v1"
	"github.com/memcuda/memcuda/pkg/client"
)

type lsOptions struct {
	allNodes      bool
	redisURL      string
	clusterPrefix string
	prefix        string
	namespace     string
	watch         bool
	interval      time.Duration
}

func lsCommand(g *globals) *cobra.Command {
	var o lsOptions
	cmd := &cobra.Command{
		Use:     "ls [flags]",
		Aliases: []string{"list", "get"},
		Short:   "List tensors",
		Long: `List the agent's tensors: node, name, dtype, shape, bytes, device, IPC mode,
refcount, state and age (-o wide adds tenant, owner pid, segment, offset,
agent and uid; -o json and -o yaml print the records; -o name prints
tensor/NAME lines for xargs memcuda rm).

--prefix and --namespace select by name. --watch keeps listing and prints
the rows that change. --all-nodes reads every agent's registry from a
shared Redis (--redis-url) instead of asking the local agent.`,
		Example: `  memcuda ls
  memcuda ls -o json --prefix llama.
  memcuda ls -n team-a -o wide
  memcuda ls --watch
  memcuda ls --all-nodes --redis-url redis://redis:6379/0`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runLs(cmd, g, o) },
	}
	f := cmd.Flags()
	f.BoolVar(&o.allNodes, "all-nodes", false, "list every node's tensors from the shared Redis")
	f.StringVar(&o.redisURL, "redis-url", os.Getenv("MEMCUDA_REDIS_URL"), "Redis URL, with --all-nodes (default $MEMCUDA_REDIS_URL)")
	f.StringVar(&o.clusterPrefix, "cluster-prefix", "tensor:", "the agents' --cluster-prefix, with --all-nodes")
	f.StringVar(&o.prefix, "prefix", "", "only names starting with this")
	f.StringVarP(&o.namespace, "namespace", "n", "", "only tensors of this Kubernetes namespace (names NAMESPACE/...)")
	f.BoolVarP(&o.watch, "watch", "w", false, "after listing, print the rows that change until interrupted")
	f.DurationVar(&o.interval, "watch-interval", time.Second, "how often --watch lists")
	return cmd
}

func (o lsOptions) namePrefix() (string, error) {
	if o.namespace == "" {
		return o.prefix, nil
	}
	if strings.Contains(o.namespace, "/") {
		return "", usagef("--namespace %q: a namespace has no '/'", o.namespace)
	}
	if strings.Contains(o.prefix, "/") {
		return "", usagef("--prefix %q with --namespace: give the name's part after %s/", o.prefix, o.namespace)
	}
	return o.namespace + "/" + o.prefix, nil
}

func runLs(cmd *cobra.Command, g *globals, o lsOptions) error {
	prefix, err := o.namePrefix()
	if err != nil {
		return err
	}
	if o.allNodes && o.redisURL == "" {
		return usagef("ls --all-nodes needs --redis-url (or $MEMCUDA_REDIS_URL)")
	}
	if o.watch && g.output != "table" && g.output != "wide" && g.output != "name" {
		return usagef("ls --watch prints rows: -o table, wide or name")
	}
	var c *client.Client
	list := func(ctx context.Context) ([]v1.Tensor, error) {
		if o.allNodes {
			return listAllNodes(ctx, o.redisURL, o.clusterPrefix, prefix)
		}
		if c == nil {
			var err error
			if c, err = g.dial(ctx); err != nil {
				return nil, err
			}
		}
		return c.List(ctx, client.WithPrefix(prefix))
	}
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	ctx, cancel := g.ctx()
	tensors, err := list(ctx)
	cancel()
	if err != nil {
		return err
	}
	if tensors == nil {
		tensors = []v1.Tensor{}
	}
	if g.output == "json" {
		return printTensorsJSON(g.out, tensors)
	}
	if ok, err := printStructured(g.out, g.output, tensors); ok {
		return err
	}
	out := bufio.NewWriterSize(g.out, 1<<16)
	if g.output == "name" {
		for _, t := range tensors {
			fmt.Fprintf(out, "tensor/%s\n", t.Name)
		}
	} else {
		tt := newTensorTable(out, g.output == "wide")
		tt.header()
		for _, t := range tensors {
			tt.row(t, "")
		}
		if err := tt.flush(); err != nil {
			return err
		}
	}
	if err := out.Flush(); err != nil {
		return err
	}
	if !o.watch {
		return nil
	}
	return watch(cmd, g, o, list, tensors)
}

// watch lists every interval and prints the rows that changed (a tensor
// gone shows with STATE gone), until interrupted or --timeout when given.
func watch(cmd *cobra.Command, g *globals, o lsOptions, list func(context.Context) ([]v1.Tensor, error), last []v1.Tensor) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if cmd.Flags().Changed("timeout") {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, g.timeout)
		defer cancel()
	}
	seen := map[string]v1.Tensor{}
	for _, t := range last {
		seen[t.Name] = t
	}
	tick := time.NewTicker(o.interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		lctx, cancel := context.WithTimeout(ctx, g.timeout)
		now, err := list(lctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		tt := newTensorTable(g.out, g.output == "wide")
		current := map[string]bool{}
		for _, t := range now {
			current[t.Name] = true
			if old, ok := seen[t.Name]; ok && old.UID == t.UID && old.Refcount == t.Refcount && old.State == t.State && old.Mtime == t.Mtime {
				continue
			}
			seen[t.Name] = t
			printWatched(g, tt, t, "")
		}
		for name, t := range seen {
			if !current[name] {
				delete(seen, name)
				printWatched(g, tt, t, "gone")
			}
		}
		if err := tt.flush(); err != nil {
			return err
		}
	}
}

func printWatched(g *globals, tt *tensorTable, t v1.Tensor, state string) {
	if g.output == "name" {
		fmt.Fprintf(g.out, "tensor/%s\n", t.Name)
		return
	}
	tt.row(t, state)
}
