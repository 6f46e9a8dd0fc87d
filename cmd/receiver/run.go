package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/cvat-sync/cvat-sync/internal/config"
)

// version is stamped at build time: -ldflags "-X main.version=v1.2.3".
var version = "dev"

// stdio are the standard streams: main passes the process's, tests their
// own. A nil one reads nothing or discards what is written.
type stdio struct {
	in       io.Reader
	out, err io.Writer
	// listening, if set, is told the address serve listens on once it does
	// (tests give serve 127.0.0.1:0 and learn the port here).
	listening func(addr string)
}

func (s stdio) orDiscard() stdio {
	if s.in == nil {
		s.in = strings.NewReader("")
	}
	if s.out == nil {
		s.out = io.Discard
	}
	if s.err == nil {
		s.err = io.Discard
	}
	return s
}

// invocation is what a command runs with: its settings, its positional
// arguments, the environment and the streams.
type invocation struct {
	cfg    config.Config
	args   []string
	getenv func(string) string
	stdio
}

// runner runs a command once its flags are parsed.
type runner interface {
	run(ctx context.Context, inv invocation) error
}

// runFunc is a runner of a command without flags of its own.
type runFunc func(ctx context.Context, inv invocation) error

func (f runFunc) run(ctx context.Context, inv invocation) error { return f(ctx, inv) }

// command is one of receiver's commands.
type command struct {
	name     string // as typed: "webhook register"
	synopsis string // positional arguments after the flags, e.g. "[FILE]"; "" for none
	summary  string // one line, for the list of commands
	about    string // a paragraph, for the command's help
	// settings are the settings the command reads (flag names); it has
	// flags for these only, and its help lists exactly these.
	settings []string
	needs    config.Needs
	// flags declares the command's own flags on fs and returns what runs
	// with their values.
	flags func(fs *flag.FlagSet) runner
}

// Settings several commands read.
var (
	cvatSettings  = []string{"cvat-url", "cvat-token", "cvat-auth", "cvat-username", "cvat-password", "cvat-org"}
	cloudSettings = []string{"gcp-project", "gcs-bucket", "gcs-prefix", "gcs-state-prefix", "outbox-topic",
		"inbox-topic", "inbox-subscription", "inbox-dead-letter-topic", "max-attempts", "data-dir"}
	registrationSettings = []string{"webhook-secret", "public-url", "webhook-project-id", "webhook-org"}
)

// commands is the table of commands, in the order help lists them.
func commands() []command {
	return []command{{
		name:     "serve",
		summary:  "receive CVAT webhooks and export changed tasks (the default)",
		about:    "Receives CVAT's signed webhooks, stores them in the inbox and exports the tasks they change to Cloud Storage, announcing each archive on the outbox topic; convergence exports what webhooks missed. \"receiver\" alone means \"receiver serve\".",
		settings: config.Names(),
		needs:    config.NeedsSecret,
		flags: func(*flag.FlagSet) runner {
			return runFunc(func(ctx context.Context, inv invocation) error {
				return serve(ctx, inv.cfg, inv.getenv, inv.out, inv.listening)
			})
		},
	}, {
		name:     "backfill",
		summary:  "export the existing tasks of a project, an organization or the server",
		about:    "Exports the existing tasks of a project, an organization or the whole server through the same exporter as serve, with progress on standard output; exit status 3 when a task was not exported. It never binds the listen address, so it runs beside serve with the same environment.",
		settings: slices.Concat(cvatSettings, cloudSettings, []string{"export-formats", "save-images", "trigger", "log-level"}),
		needs:    config.NeedsCVAT,
		flags:    newBackfill,
	}, {
		name:     "webhook register",
		summary:  "create or update the CVAT webhook that points at this service",
		about:    "Creates or updates the CVAT webhook that points at $CVAT_SYNC_PUBLIC_URL/webhooks/cvat (a project webhook with --webhook-project-id, else an organization webhook) with the first webhook secret; running it again changes nothing. Prints the webhook as JSON.",
		settings: slices.Concat(cvatSettings, registrationSettings, []string{"log-level"}),
		// Credentials are checked when it runs: with --optional their
		// absence is no failure.
		needs: config.NeedsCVATURL | config.NeedsSecret | config.NeedsPublicURL,
		flags: newRegister,
	}, {
		name:     "webhook ping",
		summary:  "ask CVAT to deliver a ping to this service",
		about:    "Makes CVAT deliver a ping through the webhook register manages (or --id) and reports CVAT's record of the delivery; fails with a hint when the delivery did not get a 2xx.",
		settings: slices.Concat(cvatSettings, registrationSettings, []string{"log-level"}),
		needs:    config.NeedsCVAT,
		flags:    newPing,
	}, {
		name:     "outbox tail",
		summary:  "print the export notices as JSON lines",
		about:    "Prints the export notices published from now on as JSON lines, from a subscription of its own that it deletes on exit. On the embedded default it attaches to the running serve (the same --data-dir).",
		settings: []string{"gcp-project", "data-dir", "outbox-topic", "log-level"},
		flags:    newTail,
	}, {
		name:     "sign",
		synopsis: "[FILE]",
		summary:  "print the X-Signature-256 value CVAT would send for a body",
		about:    "Prints the X-Signature-256 header value CVAT would send for the body in FILE (or standard input), to debug signature mismatches.",
		flags:    newSign,
	}, {
		name:    "version",
		summary: "print the version",
		flags: func(*flag.FlagSet) runner {
			return runFunc(func(_ context.Context, inv invocation) error {
				_, err := fmt.Fprintln(inv.out, "receiver", version)
				return err
			})
		},
	}}
}

// exitError carries a specific exit status.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// exitIncomplete is backfill's exit status when some task was not exported.
const exitIncomplete = 3

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	return 1
}

// usageError is a mistake on the command line or in the settings: exit
// status 2.
func usageError(format string, a ...any) error {
	return &exitError{code: 2, err: fmt.Errorf(format, a...)}
}

// run is the whole program; main only supplies the process's context,
// arguments, environment and standard streams.
func run(ctx context.Context, args []string, getenv func(string) string, std stdio) error {
	std = std.orDiscard()
	r, inv, err := parse(args, getenv, std)
	if errors.Is(err, flag.ErrHelp) {
		return nil // help was printed
	}
	if err != nil {
		return err
	}
	return r.run(ctx, inv)
}

// parse finds the command in args, parses its flags and settings, and
// returns what runs it. It returns flag.ErrHelp once it has printed help
// to std.out.
func parse(args []string, getenv func(string) string, std stdio) (runner, invocation, error) {
	cmds := commands()
	rest := args[1:]
	if len(rest) > 0 {
		switch rest[0] {
		case "help", "-h", "-help", "--help":
			return nil, invocation{}, help(std.out, cmds, rest[1:])
		case "-version", "--version":
			rest = []string{"version"}
		}
	}
	if len(rest) == 0 || strings.HasPrefix(rest[0], "-") {
		rest = append([]string{"serve"}, rest...)
	}
	c, rest, err := lookup(cmds, rest, std.out)
	if err != nil {
		return nil, invocation{}, err
	}

	fs := flag.NewFlagSet("receiver "+c.name, flag.ContinueOnError)
	// The flag package would print usage on every error, and to its own
	// output; help is printed here, once.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	r := c.flags(fs)
	var settings *config.Flags
	if c.settings != nil {
		if settings, err = config.Register(fs, c.settings); err != nil {
			return nil, invocation{}, fmt.Errorf("%s: %w", c.name, err) // a mistake in the table of commands
		}
	}
	if err := fs.Parse(rest); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			commandHelp(std.out, c, fs, settings)
			return nil, invocation{}, err
		}
		return nil, invocation{}, usageError("%s: %v (\"receiver %s -h\" lists its flags)", c.name, err, c.name)
	}
	if c.synopsis == "" && fs.NArg() > 0 {
		hint := ""
		if a := fs.Arg(0); a == "true" || a == "false" {
			hint = "; a boolean flag takes its value after =, e.g. --save-images=false"
		}
		return nil, invocation{}, usageError("%s: unexpected argument %q (\"receiver %s -h\" shows its usage%s)", c.name, fs.Arg(0), c.name, hint)
	}
	inv := invocation{args: fs.Args(), getenv: getenv, stdio: std}
	if settings != nil {
		if inv.cfg, err = settings.Load(getenv, c.needs); err != nil {
			return nil, invocation{}, &exitError{code: 2, err: fmt.Errorf("%s: invalid configuration:\n%w", c.name, err)}
		}
	}
	return r, inv, nil
}

// lookup finds the command args start with: one word ("backfill") or two
// ("webhook register"). A group's name alone ("webhook") with -h lists its
// commands.
func lookup(cmds []command, args []string, stdout io.Writer) (command, []string, error) {
	for _, c := range cmds {
		words := strings.Fields(c.name)
		if len(args) >= len(words) && slices.Equal(args[:len(words)], words) {
			return c, args[len(words):], nil
		}
	}
	var group []command
	for _, c := range cmds {
		if g, _, ok := strings.Cut(c.name, " "); ok && g == args[0] {
			group = append(group, c)
		}
	}
	if len(group) == 0 {
		return command{}, nil, usageError("unknown command %q (\"receiver help\" lists the commands)", args[0])
	}
	if len(args) > 1 && isHelp(args[1]) {
		writeCommands(stdout, "usage: receiver "+args[0]+" <command> [flags]", group)
		return command{}, nil, flag.ErrHelp
	}
	var names []string
	for _, c := range group {
		names = append(names, strings.TrimPrefix(c.name, args[0]+" "))
	}
	got := ""
	if len(args) > 1 {
		got = fmt.Sprintf(", not %q", args[1])
	}
	return command{}, nil, usageError("%s: want %s%s (\"receiver %s -h\" lists them)", args[0], strings.Join(names, " or "), got, args[0])
}

func isHelp(arg string) bool { return arg == "-h" || arg == "-help" || arg == "--help" }

// help prints the list of commands, or with "help <command>" that
// command's help, and returns flag.ErrHelp.
func help(stdout io.Writer, cmds []command, args []string) error {
	if len(args) == 0 || args[0] == "help" || strings.HasPrefix(args[0], "-") {
		writeCommands(stdout, "usage: receiver [command] [flags]", cmds)
		return flag.ErrHelp
	}
	_, _, err := parse(append([]string{"receiver"}, append(args, "-h")...), func(string) string { return "" }, stdio{out: stdout})
	return err
}
