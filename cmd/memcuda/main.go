// Command memcuda is mem-cuda's command-line tool: it lists, inspects,
// creates and removes named tensors through the node agent, shows pool
// statistics, triggers GC, and runs the two-process demo. Flags go
// anywhere, as with kubectl; `memcuda help COMMAND` or `--help` explains each.
//
// Exit codes: 0 success, 1 an error the agent reported, 2 bad usage,
// 3 the agent (or Redis) is unavailable, 4 not found, 5 already exists.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/memcuda/memcuda/pkg/client"
	"github.com/memcuda/memcuda/pkg/errdefs"
)

// Version is set at build time.
var Version = "dev"

// usageError is bad usage: exit code 2 and a pointer to the help.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// globals are the flags every command takes.
type globals struct {
	socket  string
	output  string
	timeout time.Duration
	out     io.Writer
	root    *cobra.Command
}

// ctx is a command's context: bounded by --timeout.
func (g *globals) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), g.timeout)
}

func (g *globals) dial(ctx context.Context) (*client.Client, error) {
	return client.Dial(ctx, g.socket, client.WithClientName("memcuda-cli "+Version))
}

func run(args []string, stdout, stderr io.Writer) int {
	g := &globals{out: stdout}
	root := &cobra.Command{
		Use:   "memcuda",
		Short: "Named, zero-copy shared GPU tensors: talk to the node's mem-cuda agent",
		Long: `memcuda lists, inspects, creates and removes the named tensors of the node's
mem-cuda agent, shows its pools, and runs its demo.

The agent's socket is --socket, else $MEMCUDA_SOCKET, else /run/memcuda/agent.sock.
Exit codes: 0 success, 1 an error the agent reported, 2 bad usage, 3 the agent
(or Redis) is unavailable or the time ran out, 4 not found, 5 already exists.`,
		Version:       Version,
		SilenceErrors: true,
		SilenceUsage:  true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return checkOutput(g.output, cmd)
		},
	}
	g.root = root
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetArgs(args)
	root.SetVersionTemplate("memcuda {{.Version}}\n")
	pf := root.PersistentFlags()
	pf.StringVar(&g.socket, "socket", "", "agent socket (default $MEMCUDA_SOCKET, else "+client.DefaultSocket+")")
	pf.StringVarP(&g.output, "output", "o", "table", "output format: table, wide, json, yaml or name")
	pf.DurationVar(&g.timeout, "timeout", 10*time.Second, "time limit of the command")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err.Error()} })
	root.AddCommand(lsCommand(g), inspectCommand(g), createCommand(g), rmCommand(g), statsCommand(g), gcCommand(g),
		demoCommand(g), versionCommand(g))
	err := root.Execute()
	return exitCode(err, root, args, stderr)
}

// formats are the -o values each command accepts.
var formats = map[string][]string{
	"ls":      {"table", "wide", "json", "yaml", "name"},
	"inspect": {"table", "json", "yaml"},
	"create":  {"table", "json", "yaml", "name"},
	"rm":      {"table", "name"},
	"stats":   {"table", "json", "yaml"},
	"gc":      {"table", "json", "yaml"},
}

func checkOutput(output string, cmd *cobra.Command) error {
	allowed, ok := formats[cmd.Name()]
	if !ok {
		allowed = []string{"table"}
	}
	for _, f := range allowed {
		if output == f {
			return nil
		}
	}
	if !cmd.Flags().Changed("output") && output == "table" {
		return nil
	}
	return usagef("%s: -o %q: want %s", cmd.Name(), output, strings.Join(allowed, ", "))
}

func exitCode(err error, root *cobra.Command, args []string, stderr io.Writer) int {
	if err == nil {
		return 0
	}
	var ue usageError
	if errors.As(err, &ue) || strings.HasPrefix(err.Error(), "unknown command") || strings.Contains(err.Error(), "arg(s)") {
		cmd, _, ferr := root.Find(args)
		if ferr != nil || cmd == nil {
			cmd = root
		}
		fmt.Fprintf(stderr, "memcuda: %v\nSee '%s --help'.\n", err, cmd.CommandPath())
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

// exactArgs is cobra.ExactArgs with a usage error.
func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if len(args) != n {
			return usagef("%s, got %d argument(s)", what, len(args))
		}
		return nil
	}
}

func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef("%s takes no arguments, got %q", cmd.Name(), args)
	}
	return nil
}

// tensorName accepts NAME or tensor/NAME (what -o name prints).
func tensorName(arg string) string { return strings.TrimPrefix(arg, "tensor/") }

func versionCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  noArgs,
		RunE: func(*cobra.Command, []string) error {
			fmt.Fprintln(g.out, "memcuda", Version)
			return nil
		},
	}
}
