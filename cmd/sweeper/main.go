package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

// Exit codes.
const (
	exitOK          = 0
	exitDifferent   = 1 // verify found differences; run left failed chunks
	exitError       = 2 // bad usage, bad flags, unreachable servers, ...
	exitInterrupted = 130
)

func main() {
	// The first SIGINT or SIGTERM cancels the context: a sweep finishes its
	// chunks in flight and exits 130. stop restores the default handling, so
	// a second signal ends the process at once.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop()
	}()
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// command is one subcommand.
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, c *cli, args []string) (int, error)
}

var commands = []command{
	{"init", "create lazymigrate's schema in NEW (idempotent)", cmdInit},
	{"run", "sweep a table: copy every unsettled key from OLD to NEW", cmdRun},
	{"verify", "compare OLD and NEW chunk by chunk; exit 1 when they differ", cmdVerify},
	{"status", "settled keys, the sweep's rate and a heatmap of the key space", cmdStatus},
	{"rebuild-tracker", "rebuild the tracker's bitmap from NEW's keys and tombstones", cmdRebuild},
	{"pause", "hold every sweeper of a table after its chunks in flight", cmdPause},
	{"resume", "let paused sweepers go on", cmdResume},
	{"mode", "show or set the read mode of a table (rollback, rollout)", cmdMode},
}

// run runs the command line args (without the program name) and returns
// the exit code. It is main without the process: tests call it directly.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return exitError
	}
	name := args[0]
	switch name {
	case "help", "-h", "-help", "--help":
		if name == "help" && len(args) > 1 {
			return run(ctx, []string{args[1], "-h"}, stdout, stderr)
		}
		usage(stdout)
		return exitOK
	}
	for _, cmd := range commands {
		if cmd.name != name {
			continue
		}
		c := &cli{name: cmd.name, summary: cmd.summary, stdout: stdout, stderr: stderr}
		code, err := cmd.run(ctx, c, args[1:])
		return c.exit(ctx, code, err)
	}
	fmt.Fprintf(stderr, "sweeper: unknown command %q (see 'sweeper help')\n", name)
	return exitError
}

// usage prints the list of subcommands.
func usage(w io.Writer) {
	fmt.Fprint(w, `sweeper moves the cold rows of a table from OLD to NEW, alongside lazymigrate's
read-through, and checks the result.

Usage: sweeper <command> [flags]

Commands:
`)
	for _, cmd := range commands {
		fmt.Fprintf(w, "  %-16s %s\n", cmd.name, cmd.summary)
	}
	fmt.Fprint(w, `
Run 'sweeper <command> -h' for a command's flags. Connections come from
--old-dsn, --new-dsn and --redis, or from LM_OLD_DSN, LM_NEW_DSN and
LM_REDIS_ADDR.

Exit codes: 0 done; 1 verify found differences, or run left chunks NEW
refused; 2 an error; 130 interrupted (run again to resume).
`)
}

// exit reports err, if any, and returns the exit code.
func (c *cli) exit(ctx context.Context, code int, err error) int {
	var u usageError
	switch {
	case err == nil:
		return code
	case errors.Is(err, errHelp):
		return exitOK
	case errors.As(err, &u):
		fmt.Fprintf(c.stderr, "sweeper: %s: %s (see 'sweeper %s -h')\n", c.name, oneLine(u.msg), c.name)
		return exitError
	case ctx.Err() != nil && errors.Is(err, context.Canceled):
		fmt.Fprintf(c.stderr, "sweeper: %s: interrupted\n", c.name)
		return exitInterrupted
	}
	fmt.Fprintf(c.stderr, "sweeper: %s: %s\n", c.name, oneLine(err.Error()))
	if code == exitOK {
		code = exitError
	}
	return code
}

// oneLine folds a message onto one line: errors from servers sometimes
// carry a detail or hint on lines of their own.
func oneLine(s string) string {
	var b strings.Builder
	for i, line := range strings.Split(s, "\n") {
		line = strings.Join(strings.Fields(line), " ")
		switch {
		case line == "":
			continue
		case i > 0 && strings.HasSuffix(b.String(), ":"):
			b.WriteString(" ")
		case i > 0 && b.Len() > 0:
			b.WriteString("; ")
		}
		b.WriteString(line)
	}
	return b.String()
}
