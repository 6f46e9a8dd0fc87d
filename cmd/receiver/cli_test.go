package main

import (
	"bytes"
	"context"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// runHelp runs args and returns what went to standard output; help must
// exit 0 and print nothing on standard error.
func runHelp(t *testing.T, args ...string) string {
	t.Helper()
	var out, errOut bytes.Buffer
	err := run(context.Background(), append([]string{"receiver"}, args...), envMap(nil), stdio{out: &out, err: &errOut})
	if err != nil || exitCode(err) != 0 {
		t.Fatalf("receiver %s: %v (exit %d)", strings.Join(args, " "), err, exitCode(err))
	}
	if errOut.Len() > 0 {
		t.Errorf("receiver %s wrote to standard error: %q", strings.Join(args, " "), errOut.String())
	}
	return out.String()
}

// TestHelpListsCommands: -h, --help and help list the commands, not serve's
// flags.
func TestHelpListsCommands(t *testing.T) {
	for _, args := range [][]string{{"-h"}, {"--help"}, {"-help"}, {"help"}, {"help", "-h"}} {
		out := runHelp(t, args...)
		if n := strings.Count(out, "usage: receiver"); n != 1 {
			t.Errorf("receiver %s: usage printed %d times:\n%s", strings.Join(args, " "), n, out)
		}
		for _, c := range commands() {
			if !strings.Contains(out, "  "+c.name+" ") {
				t.Errorf("receiver %s does not list %q:\n%s", strings.Join(args, " "), c.name, out)
			}
		}
		if strings.Contains(out, "--listen") {
			t.Errorf("receiver %s lists serve's flags:\n%s", strings.Join(args, " "), out)
		}
	}
	out := runHelp(t, "webhook", "-h")
	if !strings.Contains(out, "webhook register") || !strings.Contains(out, "webhook ping") || strings.Contains(out, "backfill") {
		t.Errorf("webhook -h lists:\n%s", out)
	}
}

// settingsIn returns the settings' flags a command's help lists.
func settingsIn(help string) []string {
	_, list, _ := strings.Cut(help, "\nSettings:")
	var out []string
	for _, m := range regexp.MustCompile(`(?m)^  --([a-z0-9-]+)`).FindAllStringSubmatch(list, -1) {
		out = append(out, m[1])
	}
	slices.Sort(out)
	return out
}

// TestCommandHelp: each command's -h (and "help <command>") prints its
// usage once, on standard output, with exactly the settings it reads.
func TestCommandHelp(t *testing.T) {
	for _, c := range commands() {
		t.Run(c.name, func(t *testing.T) {
			args := append(strings.Fields(c.name), "-h")
			out := runHelp(t, args...)
			if n := strings.Count(out, "usage: receiver "+c.name); n != 1 {
				t.Errorf("usage printed %d times:\n%s", n, out)
			}
			if again := runHelp(t, append([]string{"help"}, strings.Fields(c.name)...)...); again != out {
				t.Errorf("help %s differs from %s -h:\n%s", c.name, c.name, cmp.Diff(out, again))
			}
			want := slices.Sorted(slices.Values(c.settings))
			if diff := cmp.Diff(want, settingsIn(out)); diff != "" {
				t.Errorf("settings listed (-declared +help):\n%s", diff)
			}
		})
	}
}

// TestBackfillHelpListsOnlyWhatBackfillUses: backfill reads CVAT, the
// bucket and topics, the export settings and the log level; nothing of the
// listener, the webhooks, coalescing or convergence.
func TestBackfillHelpListsOnlyWhatBackfillUses(t *testing.T) {
	out := runHelp(t, "backfill", "-h")
	want := []string{
		"cvat-auth", "cvat-org", "cvat-password", "cvat-token", "cvat-url", "cvat-username",
		"data-dir", "export-formats", "gcp-project", "gcs-bucket", "gcs-prefix", "gcs-state-prefix",
		"inbox-dead-letter-topic", "inbox-subscription", "inbox-topic", "log-level", "max-attempts",
		"outbox-topic", "save-images", "trigger",
	}
	if diff := cmp.Diff(want, settingsIn(out)); diff != "" {
		t.Errorf("backfill -h settings (-want +got):\n%s\n%s", diff, out)
	}
	for _, own := range []string{"--project int", "--dry-run", "--task", "--since", "--org"} {
		if !strings.Contains(out, "\n  "+own) {
			t.Errorf("backfill -h lacks its flag %s", own)
		}
	}
	for _, not := range []string{"--listen", "--debounce", "--webhook-secret", "--max-wait", "--shutdown-grace"} {
		if strings.Contains(out, not) {
			t.Errorf("backfill -h lists %s, which backfill does not use", not)
		}
	}
}

// TestParseBackfill: boolean flags stand alone, numbers and lists are typed.
func TestParseBackfill(t *testing.T) {
	env := envMap(map[string]string{"CVAT_SYNC_CVAT_URL": "http://cvat:8080", "CVAT_SYNC_CVAT_TOKEN": "tok",
		"CVAT_SYNC_DEBOUNCE": "not a duration"}) // serve's setting: backfill does not read it
	tests := []struct {
		args []string
		want backfillCmd
	}{
		{[]string{"--dry-run", "--save-images", "--project", "1"}, backfillCmd{project: 1, dryRun: true}},
		{[]string{"--project=7", "--task", "3, 4", "--task", "5", "--org", "o"}, backfillCmd{project: 7, tasks: idList{3, 4, 5}, org: "o"}},
	}
	for _, tt := range tests {
		r, inv, err := parse(append([]string{"receiver", "backfill"}, tt.args...), env, stdio{})
		if err != nil {
			t.Fatalf("backfill %s: %v", strings.Join(tt.args, " "), err)
		}
		b, ok := r.(*backfillCmd)
		if !ok {
			t.Fatalf("backfill %s parsed as %T", strings.Join(tt.args, " "), r)
		}
		if diff := cmp.Diff(tt.want, *b, cmp.AllowUnexported(backfillCmd{}, sinceFlag{})); diff != "" {
			t.Errorf("backfill %s (-want +got):\n%s", strings.Join(tt.args, " "), diff)
		}
		if got := inv.cfg.SaveImages; got != slices.Contains(tt.args, "--save-images") {
			t.Errorf("backfill %s: SaveImages %v", strings.Join(tt.args, " "), got)
		}
	}
	r, _, err := parse([]string{"receiver", "backfill", "--since", "72h"}, env, stdio{})
	if err != nil || r.(*backfillCmd).since.t.IsZero() {
		t.Errorf("--since 72h: %v", err)
	}
}

// TestUsageErrors: mistakes on the command line exit 2 with a message that
// says what is wrong, without printing usage.
func TestUsageErrors(t *testing.T) {
	cvat := map[string]string{"CVAT_SYNC_CVAT_URL": "http://cvat:8080", "CVAT_SYNC_CVAT_TOKEN": "tok"}
	tests := []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"frobnicate"}, nil, `unknown command "frobnicate"`},
		{[]string{"webhook"}, nil, `webhook: want register or ping ("receiver webhook -h" lists them)`},
		{[]string{"webhook", "bogus"}, nil, `want register or ping, not "bogus"`},
		{[]string{"outbox"}, nil, `outbox: want tail`},
		{[]string{"backfill", "--listen", ":1"}, cvat, "backfill: flag provided but not defined: -listen"},
		{[]string{"backfill", "--project", "x"}, cvat, `invalid value "x" for flag -project`},
		{[]string{"backfill", "--task", "1,x"}, cvat, `"x" is not a task id`},
		{[]string{"backfill", "--since", "yesterday"}, cvat, "neither an RFC 3339 time"},
		{[]string{"backfill"}, nil, "CVAT_SYNC_CVAT_URL (--cvat-url): required"},
		{[]string{"backfill", "stray"}, cvat, `backfill: unexpected argument "stray"`},
		{[]string{"backfill", "--save-images", "false"}, cvat, "a boolean flag takes its value after ="},
		{[]string{"serve", "--debounce", "soon"}, map[string]string{"CVAT_SYNC_WEBHOOK_SECRET": "s"}, "CVAT_SYNC_DEBOUNCE (--debounce)"},
		{[]string{"webhook", "register", "--wait", "forever"}, cvat, `invalid value "forever" for flag -wait`},
		{[]string{"sign", "--secret", "s", "a", "b"}, nil, "at most one FILE"},
	}
	for _, tt := range tests {
		var out bytes.Buffer
		err := run(context.Background(), append([]string{"receiver"}, tt.args...), envMap(tt.env), stdio{out: &out})
		if exitCode(err) != 2 || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("receiver %s: %v (exit %d), want exit 2 and %q", strings.Join(tt.args, " "), err, exitCode(err), tt.want)
		}
		if strings.Contains(out.String(), "usage:") {
			t.Errorf("receiver %s printed usage on a mistake:\n%s", strings.Join(tt.args, " "), out.String())
		}
	}
}
