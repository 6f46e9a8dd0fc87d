package config

import (
	"flag"
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

func parse(t *testing.T, args []string, e map[string]string, needs Needs) (Config, error) {
	t.Helper()
	c, _, err := Parse(flag.NewFlagSet("test", flag.ContinueOnError), args, env(e), needs)
	return c, err
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
		MaxWait: 10 * time.Minute, ReconcileInterval: 10 * time.Minute, ShutdownGrace: 25 * time.Second,
		FullReconcileInterval: time.Hour, SyncSince: "first-start", MaxDeleteFraction: 0.5, GCSStatePrefix: "_cvat-sync", Redeliver: true,
		DataDir: "./cvat-sync-data", LogLevel: slog.LevelInfo,
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

// TestEverySettingDocumented keeps the README's configuration table in step
// with the settings the program reads.
func TestEverySettingDocumented(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range Settings() {
		if !strings.Contains(string(readme), "`"+s.Env+"`") {
			t.Errorf("README.md does not document %s", s.Env)
		}
	}
}
