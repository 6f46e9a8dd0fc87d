package config

import (
	"flag"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// parse reads every setting from args and e, as serve does.
func parse(t *testing.T, args []string, e map[string]string, needs Needs) (Config, error) {
	t.Helper()
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	f, err := Register(fs, Names())
	if err != nil {
		t.Fatal(err)
	}
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	return f.Load(env(e), needs)
}

func TestDefaults(t *testing.T) {
	c, err := parse(t, nil, map[string]string{"CVAT_SYNC_WEBHOOK_SECRET": "s3cret-value"}, NeedsSecret)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		Listen: ":8080", WebhookSecrets: []string{"s3cret-value"}, MaxBodyBytes: 1 << 20, CVATAuth: "auto",
		GCSBucket: "cvat-sync", OutboxTopic: "cvat-sync-exports", InboxTopic: "cvat-sync-inbox",
		InboxSubscription: "cvat-sync-inbox", DeadLetterTopic: "cvat-sync-inbox-dead", MaxAttempts: 5,
		ExportFormats: []string{"CVAT for images 1.1"}, Trigger: "update", Debounce: 30 * time.Second,
		MaxWait: 10 * time.Minute, ReconcileInterval: 10 * time.Minute, FullReconcileInterval: time.Hour,
		SyncSince: "first-start", MaxDeleteFraction: 0.5, GCSStatePrefix: "_cvat-sync", Redeliver: true,
		ShutdownGrace: 25 * time.Second, DataDir: "./cvat-sync-data", LogLevel: slog.LevelInfo,
	}
	if diff := cmp.Diff(want, c); diff != "" {
		t.Errorf("defaults (-want +got):\n%s", diff)
	}
	if !c.Embedded(env(nil)) {
		t.Error("no GCP settings should mean the embedded default")
	}
	if c.Embedded(env(map[string]string{"PUBSUB_EMULATOR_HOST": "localhost:8085"})) {
		t.Error("an emulator is not the embedded default")
	}
}

func TestPrecedenceAndFiles(t *testing.T) {
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "secret")
	if err := os.WriteFile(secretFile, []byte("new-secret-1, old-secret-2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("tok-from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := parse(t,
		[]string{"--debounce", "2s", "--export-formats", "COCO 1.0, CVAT for images 1.1", "--cvat-token-file", tokenFile},
		map[string]string{
			"CVAT_SYNC_WEBHOOK_SECRET_FILE": secretFile,
			"CVAT_SYNC_DEBOUNCE":            "9s", // the flag wins
			"CVAT_SYNC_MAX_WAIT":            "1m",
			"CVAT_SYNC_CVAT_URL":            "http://cvat:8080/",
			"GOOGLE_CLOUD_PROJECT":          "litter-prod",
			"CVAT_SYNC_CVAT_ORG":            "org1",
		}, NeedsSecret|NeedsCVAT)
	if err != nil {
		t.Fatal(err)
	}
	got := []any{c.WebhookSecrets, c.Debounce, c.MaxWait, c.ExportFormats, c.CVATToken, c.CVATURL, c.GCPProject, c.WebhookOrg}
	want := []any{[]string{"new-secret-1", "old-secret-2"}, 2 * time.Second, time.Minute,
		[]string{"COCO 1.0", "CVAT for images 1.1"}, "tok-from-file", "http://cvat:8080", "litter-prod", "org1"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

func TestErrors(t *testing.T) {
	const secret = "very-secret-value"
	tests := []struct {
		name  string
		args  []string
		env   map[string]string
		needs Needs
		want  []string // substrings of the error
	}{
		{"no secret", nil, nil, NeedsSecret, []string{"CVAT_SYNC_WEBHOOK_SECRET", "required"}},
		{"empty secret list", nil, map[string]string{"CVAT_SYNC_WEBHOOK_SECRET": " , "}, NeedsSecret, []string{"required"}},
		{"secret and file", nil, map[string]string{"CVAT_SYNC_WEBHOOK_SECRET": secret, "CVAT_SYNC_WEBHOOK_SECRET_FILE": "/x"}, NeedsSecret, []string{"not both"}},
		{"missing secret file", nil, map[string]string{"CVAT_SYNC_WEBHOOK_SECRET_FILE": "/nonexistent/secret"}, NeedsSecret, []string{"CVAT_SYNC_WEBHOOK_SECRET", "cannot read secret file"}},
		{"bad duration", []string{"--debounce", "soon"}, map[string]string{"CVAT_SYNC_WEBHOOK_SECRET": secret}, NeedsSecret, []string{"CVAT_SYNC_DEBOUNCE (--debounce)", "30s"}},
		{"max wait below debounce", nil, map[string]string{"CVAT_SYNC_WEBHOOK_SECRET": secret, "CVAT_SYNC_DEBOUNCE": "5m", "CVAT_SYNC_MAX_WAIT": "1m"}, NeedsSecret, []string{"CVAT_SYNC_MAX_WAIT"}},
		{"bad body limit", nil, map[string]string{"CVAT_SYNC_WEBHOOK_SECRET": secret, "CVAT_SYNC_MAX_BODY_BYTES": "1MB"}, NeedsSecret, []string{"CVAT_SYNC_MAX_BODY_BYTES"}},
		{"bad cvat url", nil, map[string]string{"CVAT_SYNC_CVAT_URL": "cvat:8080"}, 0, []string{"CVAT_SYNC_CVAT_URL", "http(s) URL"}},
		{"cvat url with credentials", nil, map[string]string{"CVAT_SYNC_CVAT_URL": "http://u:" + secret + "@cvat"}, 0, []string{"CVAT_SYNC_CVAT_URL"}},
		{"cvat needed", nil, nil, NeedsCVAT, []string{"CVAT_SYNC_CVAT_URL", "credentials are required"}},
		{"token and basic", nil, map[string]string{"CVAT_SYNC_CVAT_TOKEN": secret, "CVAT_SYNC_CVAT_USERNAME": "u", "CVAT_SYNC_CVAT_PASSWORD": "p"}, 0, []string{"not both"}},
		{"bad auth scheme", nil, map[string]string{"CVAT_SYNC_CVAT_AUTH": "jwt"}, 0, []string{"CVAT_SYNC_CVAT_AUTH", "bearer, token"}},
		{"bad trigger", nil, map[string]string{"CVAT_SYNC_TRIGGER": "always"}, 0, []string{"CVAT_SYNC_TRIGGER"}},
		{"bad bucket", nil, map[string]string{"CVAT_SYNC_GCS_BUCKET": "My Bucket"}, 0, []string{"CVAT_SYNC_GCS_BUCKET"}},
		{"bad topic", nil, map[string]string{"CVAT_SYNC_INBOX_TOPIC": "goog-x"}, 0, []string{"CVAT_SYNC_INBOX_TOPIC"}},
		{"max attempts out of range", nil, map[string]string{"CVAT_SYNC_MAX_ATTEMPTS": "2"}, 0, []string{"CVAT_SYNC_MAX_ATTEMPTS", "5 to 100"}},
		{"bad log level", nil, map[string]string{"CVAT_SYNC_LOG_LEVEL": "loud"}, 0, []string{"CVAT_SYNC_LOG_LEVEL"}},
		{"public url needed", nil, nil, NeedsPublicURL, []string{"CVAT_SYNC_PUBLIC_URL"}},
		{"unknown flag", []string{"--no-such-flag"}, nil, 0, []string{"no-such-flag"}},
		{"several problems at once", nil, map[string]string{"CVAT_SYNC_DEBOUNCE": "x", "CVAT_SYNC_TRIGGER": "y"}, NeedsSecret, []string{"CVAT_SYNC_DEBOUNCE", "CVAT_SYNC_TRIGGER", "CVAT_SYNC_WEBHOOK_SECRET"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parse(t, tt.args, tt.env, tt.needs)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("error %q repeats a secret", err)
			}
		})
	}
}

// TestBoolFlags: a boolean setting is a boolean flag, so it stands alone;
// its environment variable and the flag's =value form read true and false.
func TestBoolFlags(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want []bool // SaveImages, Redeliver, LegacySignature
	}{
		{"defaults", nil, nil, []bool{false, true, false}},
		{"alone", []string{"--save-images", "--legacy-signature"}, nil, []bool{true, true, true}},
		{"single dash", []string{"-save-images"}, nil, []bool{true, true, false}},
		{"=false", []string{"--redeliver=false"}, nil, []bool{false, false, false}},
		{"env", nil, map[string]string{"CVAT_SYNC_SAVE_IMAGES": "true", "CVAT_SYNC_REDELIVER": "false"}, []bool{true, false, false}},
		{"flag over env", []string{"--save-images=false"}, map[string]string{"CVAT_SYNC_SAVE_IMAGES": "true"}, []bool{false, true, false}},
		{"before another flag", []string{"--save-images", "--debounce", "2s"}, nil, []bool{true, true, false}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parse(t, tt.args, tt.env, 0)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, []bool{c.SaveImages, c.Redeliver, c.LegacySignature}); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
	_, err := parse(t, []string{"--save-images=maybe"}, nil, 0)
	if err == nil || !strings.Contains(err.Error(), "CVAT_SYNC_SAVE_IMAGES (--save-images)") {
		t.Errorf("--save-images=maybe: %v, want an error naming the setting", err)
	}
}

// TestRegisterOnly: a command reads only the settings it declares. The
// others are no flags of it, their variables are not read (a bad value in
// the shared environment does not stop it) and they keep their defaults.
func TestRegisterOnly(t *testing.T) {
	fs := flag.NewFlagSet("backfill", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	f, err := Register(fs, []string{"cvat-url", "cvat-token", "save-images"})
	if err != nil {
		t.Fatal(err)
	}
	if err := fs.Parse([]string{"--save-images", "--cvat-url", "http://cvat:8080"}); err != nil {
		t.Fatal(err)
	}
	c, err := f.Load(env(map[string]string{"CVAT_SYNC_CVAT_TOKEN": "tok", "CVAT_SYNC_DEBOUNCE": "soon", "CVAT_SYNC_LISTEN": ":1"}), NeedsCVAT)
	if err != nil {
		t.Fatal(err)
	}
	got := []any{c.CVATURL, c.CVATToken, c.SaveImages, c.Debounce, c.Listen}
	want := []any{"http://cvat:8080", "tok", true, 30 * time.Second, ":8080"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	var names []string
	fs.VisitAll(func(fl *flag.Flag) { names = append(names, fl.Name) })
	if diff := cmp.Diff([]string{"cvat-token", "cvat-token-file", "cvat-url", "save-images"}, names); diff != "" {
		t.Errorf("flags (-want +got):\n%s", diff)
	}
	if !f.IsSetting("cvat-token-file") || f.IsSetting("listen") {
		t.Error("IsSetting: cvat-token-file is a setting's flag here, listen is not")
	}
	if err := fs.Parse([]string{"--listen", ":1"}); err == nil {
		t.Error("an undeclared setting's flag was accepted")
	}
	for _, names := range [][]string{{"no-such-setting"}, {"listen", "listen"}} {
		if _, err := Register(flag.NewFlagSet("x", flag.ContinueOnError), names); err == nil {
			t.Errorf("Register(%q): no error", names)
		}
	}
}

// TestRequire: a command that decides at run time what it needs gets the
// same message as Load's.
func TestRequire(t *testing.T) {
	c, err := parse(t, nil, map[string]string{"CVAT_SYNC_CVAT_URL": "http://cvat:8080"}, NeedsCVATURL)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Require(NeedsCredentials); err == nil || !strings.Contains(err.Error(), "CVAT_SYNC_CVAT_TOKEN") {
		t.Errorf("Require(NeedsCredentials) = %v, want an error naming CVAT_SYNC_CVAT_TOKEN", err)
	}
	c.CVATToken = "tok"
	if err := c.Require(NeedsCVAT); err != nil {
		t.Errorf("Require(NeedsCVAT) with URL and token: %v", err)
	}
}

// TestREADMEDocumentsEverySetting keeps README's configuration table in step
// with the settings the program reads: one row per setting, with its
// variables (and _FILE for a secret), its flags and its default, and no row
// for a setting that does not exist.
func TestREADMEDocumentsEverySetting(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	type row struct{ Flags, Default string }
	got := map[string]row{}
	for _, line := range strings.Split(string(readme), "\n") {
		if !strings.HasPrefix(line, "| `CVAT_SYNC_") {
			continue
		}
		cells := strings.Split(line, " | ")
		if len(cells) < 4 {
			t.Errorf("README row %q: want environment | flag | default | meaning", line)
			continue
		}
		got[strings.TrimPrefix(cells[0], "| ")] = row{cells[1], cells[2]}
	}
	want := map[string]row{}
	for _, s := range Settings() {
		env, flags, def := "`"+s.Env+"`", "`--"+s.Flag+"`", "none"
		if s.Secret {
			env += " / `" + s.Env + "_FILE`"
			flags += " / `--" + s.FileFlag() + "`"
		}
		if s.Default != "" {
			def = "`" + s.Default + "`"
		}
		want[env] = row{flags, def}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("README.md's configuration table (-settings +README):\n%s", diff)
	}
}
