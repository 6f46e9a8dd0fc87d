package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/cvat-sync/cvat-sync/internal/signature"
)

// version is stamped at build time: -ldflags "-X main.version=v1.2.3".
var version = "dev"

const usageText = `usage: receiver [command] [flags]

commands:
  serve             receive CVAT webhooks and export changed tasks (the default)
  backfill          export the existing tasks of a project, an organization or the server
  webhook register  create or update the CVAT webhook that points at this service
  webhook ping      ask CVAT to deliver a ping to this service
  outbox tail       print the export notices as JSON lines
  sign              print the X-Signature-256 value CVAT would send for a body
  version           print the version

Every setting is a flag with a CVAT_SYNC_* environment fallback; run
"receiver serve -h" for the list.
`

// exitError carries a specific exit status.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func exitCode(err error) int {
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	return 1
}

func usageError(format string, a ...any) error {
	return &exitError{code: 2, err: fmt.Errorf(format, a...)}
}

// run is the whole program; main only supplies the process's context,
// arguments, environment and standard output.
func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	err := dispatch(ctx, args, getenv, stdout)
	if errors.Is(err, flag.ErrHelp) {
		return nil // the command printed its usage
	}
	return err
}

func dispatch(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	cmd, rest := "serve", args[1:]
	if len(rest) > 0 && !strings.HasPrefix(rest[0], "-") {
		cmd, rest = rest[0], rest[1:]
	}
	sub := func() (string, []string) {
		if len(rest) == 0 || strings.HasPrefix(rest[0], "-") {
			return "", rest
		}
		return rest[0], rest[1:]
	}
	switch cmd {
	case "serve":
		return serve(ctx, rest, getenv, stdout)
	case "sign":
		return sign(rest, stdout)
	case "version":
		fmt.Fprintln(stdout, "receiver", version)
		return nil
	case "backfill":
		return backfill(ctx, rest, getenv, stdout)
	case "webhook":
		switch s, r := sub(); s {
		case "register":
			return webhookRegister(ctx, r, getenv, stdout)
		case "ping":
			return webhookPing(ctx, r, getenv, stdout)
		default:
			return usageError("webhook: want \"register\" or \"ping\", got %q\n\n%s", s, usageText)
		}
	case "outbox":
		switch s, r := sub(); s {
		case "tail":
			return outboxTail(ctx, r, getenv, stdout)
		default:
			return usageError("outbox: want \"tail\", got %q\n\n%s", s, usageText)
		}
	case "help":
		fmt.Fprint(stdout, usageText)
		return nil
	default:
		return usageError("unknown command %q\n\n%s", cmd, usageText)
	}
}

// flagSet returns a flag set whose -h prints its defaults to stdout.
func flagSet(name string, stdout io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(stdout, "usage: receiver %s [flags]\n\n", name)
		fs.SetOutput(stdout)
		fs.PrintDefaults()
	}
	return fs
}

// sign prints the header value CVAT would send for FILE (or stdin).
func sign(args []string, stdout io.Writer) error {
	fs := flagSet("sign", stdout)
	secret := fs.String("secret", "", "the webhook secret")
	secretFile := fs.String("secret-file", "", "file holding the webhook secret")
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.Usage()
			return nil
		}
		return usageError("sign: %v", err)
	}
	s := *secret
	if *secretFile != "" {
		b, err := os.ReadFile(*secretFile)
		if err != nil {
			return fmt.Errorf("sign: read --secret-file: %w", err)
		}
		s = strings.TrimSpace(string(b))
	}
	if s == "" {
		return usageError("sign: --secret or --secret-file is required: receiver sign --secret S [FILE]")
	}
	var body []byte
	var err error
	switch fs.NArg() {
	case 0:
		body, err = io.ReadAll(os.Stdin)
	case 1:
		body, err = os.ReadFile(fs.Arg(0))
	default:
		return usageError("sign: at most one FILE")
	}
	if err != nil {
		return fmt.Errorf("sign: %w", err)
	}
	fmt.Fprintln(stdout, signature.Sign(s, body))
	return nil
}
