// Command memcuda is mem-cuda's command-line tool: it lists, inspects,
// creates and removes named tensors through the node agent, shows pool
// statistics, triggers GC, and runs the two-process demo.
//
// Exit codes: 0 success, 1 an error the agent reported, 2 bad usage,
// 3 the agent (or Redis) is unavailable, 4 not found, 5 already exists.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/memcuda/memcuda/pkg/client"
	"github.com/memcuda/memcuda/pkg/errdefs"
)

const usage = `usage: memcuda [global flags] <command> [flags] [args]

commands:
  ls                       list tensors (table; -o json)
  inspect NAME             show one tensor's record and reference holders
  create NAME --dtype D --shape 2,3 [--device 0]
                           create a tensor (or check the existing one)
  rm NAME...               delete tensors (memory goes with the last reference)
  stats                    pool statistics per device and tenant
  gc [--trim]              drop references of dead processes now; --trim also
                           releases cached free segments
  demo                     two processes share a named tensor
  version                  print the version

global flags:
  --socket PATH            agent socket (env MEMCUDA_SOCKET, default /run/memcuda/agent.sock)
  -o, --output FORMAT      table or json
  --timeout DURATION       time limit of the command (default 10s)
`

// Version is set at build time.
var Version = "dev"

type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

type globals struct {
	socket  string
	output  string
	timeout time.Duration
	out     io.Writer
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("memcuda", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	g := globals{out: stdout}
	fs.StringVar(&g.socket, "socket", "", "agent socket")
	fs.StringVar(&g.output, "output", "table", "table or json")
	fs.StringVar(&g.output, "o", "table", "table or json")
	fs.DurationVar(&g.timeout, "timeout", 10*time.Second, "time limit")
	if err := fs.Parse(args); err != nil {
		fmt.Fprint(stderr, usage)
		return 2
	}
	if g.output != "table" && g.output != "json" {
		fmt.Fprintf(stderr, "memcuda: --output %q: want table or json\n", g.output)
		return 2
	}
	rest := fs.Args()
	if len(rest) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), g.timeout)
	defer cancel()
	var err error
	switch cmd, cargs := rest[0], rest[1:]; cmd {
	case "ls", "list":
		err = cmdList(ctx, g, cargs)
	case "inspect":
		err = cmdInspect(ctx, g, cargs)
	case "create":
		err = cmdCreate(ctx, g, cargs)
	case "rm", "delete":
		err = cmdRemove(ctx, g, cargs)
	case "stats":
		err = cmdStats(ctx, g, cargs)
	case "gc":
		err = cmdGC(ctx, g, cargs)
	case "demo":
		err = cmdDemo(ctx, g, cargs)
	case "version":
		fmt.Fprintln(stdout, "memcuda", Version)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		err = usageError{fmt.Sprintf("unknown command %q", cmd)}
	}
	return exitCode(err, stderr)
}

func exitCode(err error, stderr io.Writer) int {
	if err == nil {
		return 0
	}
	var ue usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(stderr, "memcuda: %s\n\n%s", ue.msg, usage)
		return 2
	}
	fmt.Fprintln(stderr, "memcuda:", err)
	switch {
	case errors.Is(err, errdefs.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		return 3
	case errors.Is(err, errdefs.ErrNotFound):
		return 4
	case errors.Is(err, errdefs.ErrAlreadyExists):
		return 5
	case errors.Is(err, errdefs.ErrInvalidArgument):
		return 2
	}
	return 1
}

func (g globals) dial(ctx context.Context) (*client.Client, error) {
	return client.Dial(ctx, g.socket, client.WithClientName("memcuda-cli "+Version))
}

// parseFlags parses interleaved flags and positional arguments.
func parseFlags(fs *flag.FlagSet, args []string) ([]string, error) {
	fs.SetOutput(io.Discard)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, usageError{err.Error()}
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func parseShape(s string) ([]int64, error) {
	s = strings.Trim(strings.TrimSpace(s), "[]()")
	if s == "" {
		return []int64{}, nil
	}
	var out []int64
	for _, p := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == 'x' || r == ' ' }) {
		n, err := strconv.ParseInt(p, 10, 64)
		if err != nil {
			return nil, usageError{fmt.Sprintf("bad shape %q: %q is not an integer", s, p)}
		}
		out = append(out, n)
	}
	return out, nil
}
