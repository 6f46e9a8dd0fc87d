// Package config reads cvat-sync's settings from flags, falling back to
// CVAT_SYNC_* environment variables and then to defaults. Secrets can also
// come from files (Kubernetes Secret mounts) through the _FILE variants.
// Every value is validated; an error names the setting and says what to fix,
// and never repeats a secret.
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// Config holds every setting of the service.
type Config struct {
	Listen          string
	WebhookSecrets  []string
	LegacySignature bool
	MaxBodyBytes    int64

	CVATURL      string
	CVATToken    string
	CVATAuth     string // "bearer" or "token"
	CVATUsername string
	CVATPassword string
	CVATOrg      string

	GCPProject        string
	GCSBucket         string
	GCSPrefix         string
	OutboxTopic       string
	InboxTopic        string
	InboxSubscription string
	DeadLetterTopic   string
	MaxAttempts       int

	ExportFormats         []string
	SaveImages            bool
	Trigger               string // "update" or "completed"
	Debounce              time.Duration
	MaxWait               time.Duration
	ReconcileInterval     time.Duration
	FullReconcileInterval time.Duration
	SyncSince             string
	MaxDeleteFraction     float64
	GCSStatePrefix        string
	Redeliver             bool
	ShutdownGrace         time.Duration

	DataDir  string
	LogLevel slog.Level

	PublicURL        string
	WebhookProjectID int64
	WebhookOrg       string
}

// Setting describes one configurable value: its flag, its environment
// variable, its default and whether it is a secret.
type Setting struct {
	Flag    string // kebab case, e.g. "cvat-url"
	Env     string // e.g. "CVAT_SYNC_CVAT_URL"
	Default string
	Usage   string
	Secret  bool // never printed; also readable from <Env>_FILE / --<flag>-file
	set     func(c *Config, v string) error
}

// Settings returns the table of settings, in documentation order.
func Settings() []Setting {
	return []Setting{
		{"listen", "CVAT_SYNC_LISTEN", ":8080", "HTTP listen address", false, func(c *Config, v string) error { c.Listen = v; return nonEmpty(v) }},
		{"webhook-secret", "CVAT_SYNC_WEBHOOK_SECRET", "", "webhook secret(s), comma-separated for rotation", true, func(c *Config, v string) error { c.WebhookSecrets = list(v); return nil }},
		{"legacy-signature", "CVAT_SYNC_LEGACY_SIGNATURE", "false", "also accept CVAT 2.3.0 signatures (body plus newline)", false, boolInto(func(c *Config) *bool { return &c.LegacySignature })},
		{"max-body-bytes", "CVAT_SYNC_MAX_BODY_BYTES", "1048576", "largest webhook body accepted", false, func(c *Config, v string) error {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 1024 || n > 64<<20 {
				return errors.New("must be a whole number of bytes from 1024 to 67108864")
			}
			c.MaxBodyBytes = n
			return nil
		}},
		{"cvat-url", "CVAT_SYNC_CVAT_URL", "", "CVAT base URL, e.g. http://cvat-backend-service.cvat.svc:8080", false, func(c *Config, v string) error {
			if v == "" {
				return nil
			}
			u, err := url.Parse(v)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.RawQuery != "" {
				return errors.New("must be an http(s) URL with a host and no user info or query, e.g. http://cvat-backend-service.cvat.svc:8080")
			}
			c.CVATURL = strings.TrimRight(v, "/")
			return nil
		}},
		{"cvat-token", "CVAT_SYNC_CVAT_TOKEN", "", "CVAT access token", true, func(c *Config, v string) error { c.CVATToken = v; return nil }},
		{"cvat-auth", "CVAT_SYNC_CVAT_AUTH", "auto", "how the token is sent: auto (Bearer on CVAT 2.48+, Token before), bearer (personal access token) or token (legacy key)", false, func(c *Config, v string) error {
			c.CVATAuth = strings.ToLower(v)
			return oneOf(c.CVATAuth, "auto", "bearer", "token")
		}},
		{"cvat-username", "CVAT_SYNC_CVAT_USERNAME", "", "CVAT user for Basic auth (instead of a token)", false, func(c *Config, v string) error { c.CVATUsername = v; return nil }},
		{"cvat-password", "CVAT_SYNC_CVAT_PASSWORD", "", "CVAT password for Basic auth", true, func(c *Config, v string) error { c.CVATPassword = v; return nil }},
		{"cvat-org", "CVAT_SYNC_CVAT_ORG", "", "CVAT organization slug", false, func(c *Config, v string) error { c.CVATOrg = v; return nil }},
		{"gcp-project", "CVAT_SYNC_GCP_PROJECT", "", "GCP project of the topics (default $GOOGLE_CLOUD_PROJECT)", false, func(c *Config, v string) error { c.GCPProject = v; return nil }},
		{"gcs-bucket", "CVAT_SYNC_GCS_BUCKET", "cvat-sync", "bucket the archives go to", false, func(c *Config, v string) error { c.GCSBucket = v; return bucketName(v) }},
		{"gcs-prefix", "CVAT_SYNC_GCS_PREFIX", "", "object name prefix in the bucket", false, func(c *Config, v string) error { c.GCSPrefix = strings.Trim(v, "/"); return nil }},
		{"gcs-state-prefix", "CVAT_SYNC_GCS_STATE_PREFIX", "_cvat-sync", "where the record of what was exported lives in the bucket (outside the archive prefix)", false, func(c *Config, v string) error {
			c.GCSStatePrefix = strings.Trim(v, "/")
			return nonEmpty(c.GCSStatePrefix)
		}},
		{"outbox-topic", "CVAT_SYNC_OUTBOX_TOPIC", "cvat-sync-exports", "topic of the export notices", false, func(c *Config, v string) error { c.OutboxTopic = v; return resourceID(v) }},
		{"inbox-topic", "CVAT_SYNC_INBOX_TOPIC", "cvat-sync-inbox", "topic of the work queue", false, func(c *Config, v string) error { c.InboxTopic = v; return resourceID(v) }},
		{"inbox-subscription", "CVAT_SYNC_INBOX_SUBSCRIPTION", "cvat-sync-inbox", "subscription of the work queue", false, func(c *Config, v string) error { c.InboxSubscription = v; return resourceID(v) }},
		{"inbox-dead-letter-topic", "CVAT_SYNC_INBOX_DEAD_LETTER_TOPIC", "cvat-sync-inbox-dead", "where work goes after --max-attempts", false, func(c *Config, v string) error { c.DeadLetterTopic = v; return resourceID(v) }},
		{"max-attempts", "CVAT_SYNC_MAX_ATTEMPTS", "5", "delivery attempts of an inbox message before it is dead-lettered (5 to 100, Pub/Sub's range)", false, func(c *Config, v string) error {
			n, err := strconv.Atoi(v)
			if err != nil || n < 5 || n > 100 {
				return errors.New("must be a whole number from 5 to 100 (Pub/Sub's dead-letter range)")
			}
			c.MaxAttempts = n
			return nil
		}},
		{"export-formats", "CVAT_SYNC_EXPORT_FORMATS", "CVAT for images 1.1", "comma-separated CVAT export format names", false, func(c *Config, v string) error {
			c.ExportFormats = list(v)
			if len(c.ExportFormats) == 0 {
				return errors.New(`must name at least one CVAT format, e.g. "CVAT for images 1.1,COCO 1.0"`)
			}
			return nil
		}},
		{"save-images", "CVAT_SYNC_SAVE_IMAGES", "false", "export images too, not only annotations", false, boolInto(func(c *Config) *bool { return &c.SaveImages })},
		{"trigger", "CVAT_SYNC_TRIGGER", "update", "which events export: update (any change to a task, its jobs or annotations) or completed (a job or task reaches completed)", false, func(c *Config, v string) error {
			c.Trigger = strings.ToLower(v)
			return oneOf(c.Trigger, "update", "completed")
		}},
		{"debounce", "CVAT_SYNC_DEBOUNCE", "30s", "export once a task has been quiet this long", false, durationInto(func(c *Config) *time.Duration { return &c.Debounce }, 0)},
		{"max-wait", "CVAT_SYNC_MAX_WAIT", "10m", "export at the latest this long after a task's first pending event", false, durationInto(func(c *Config) *time.Duration { return &c.MaxWait }, 0)},
		{"reconcile-interval", "CVAT_SYNC_RECONCILE_INTERVAL", "10m", "how often convergence compares CVAT's tasks with the bucket's record (0 = off: webhooks only)", false, durationInto(func(c *Config) *time.Duration { return &c.ReconcileInterval }, 0)},
		{"full-reconcile-interval", "CVAT_SYNC_FULL_RECONCILE_INTERVAL", "1h", "how often a convergence pass lists every task (finding deletions); the passes between list only what changed", false, durationInto(func(c *Config) *time.Duration { return &c.FullReconcileInterval }, time.Minute)},
		{"sync-since", "CVAT_SYNC_SYNC_SINCE", "first-start", "which tasks convergence exports unasked: first-start (changed since the service first started), all, an RFC 3339 time, or a duration before now (720h); backfill exports older ones", false, func(c *Config, v string) error {
			c.SyncSince = v
			switch v {
			case "first-start", "all":
				return nil
			}
			if _, err := time.Parse(time.RFC3339, v); err == nil {
				return nil
			}
			if d, err := time.ParseDuration(v); err == nil && d > 0 {
				return nil
			}
			return errors.New(`must be first-start, all, an RFC 3339 time (2026-05-01T00:00:00Z) or a duration before now (720h)`)
		}},
		{"max-delete-fraction", "CVAT_SYNC_MAX_DELETE_FRACTION", "0.5", "a full pass that finds more than this share of the recorded tasks gone (and more than 10) announces none of them and alerts; 1 lifts the guard", false, func(c *Config, v string) error {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil || f <= 0 || f > 1 {
				return errors.New("must be a number above 0 and at most 1")
			}
			c.MaxDeleteFraction = f
			return nil
		}},
		{"redeliver", "CVAT_SYNC_REDELIVER", "true", "read CVAT's delivery log of the registered webhook and redeliver failed deliveries", false, boolInto(func(c *Config) *bool { return &c.Redeliver })},
		{"shutdown-grace", "CVAT_SYNC_SHUTDOWN_GRACE", "25s", "how long SIGTERM may take to drain", false, durationInto(func(c *Config) *time.Duration { return &c.ShutdownGrace }, time.Second)},
		{"data-dir", "CVAT_SYNC_DATA_DIR", "./cvat-sync-data", "storage of the embedded default", false, func(c *Config, v string) error { c.DataDir = v; return nonEmpty(v) }},
		{"log-level", "CVAT_SYNC_LOG_LEVEL", "info", "debug, info, warn or error", false, func(c *Config, v string) error {
			if err := c.LogLevel.UnmarshalText([]byte(v)); err != nil {
				return errors.New("must be debug, info, warn or error")
			}
			return nil
		}},
		{"public-url", "CVAT_SYNC_PUBLIC_URL", "", "URL CVAT reaches this service at (webhook register)", false, func(c *Config, v string) error {
			if v == "" {
				return nil
			}
			u, err := url.Parse(v)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				return errors.New("must be an http(s) URL, e.g. http://cvat-sync.cvat.svc:8080")
			}
			c.PublicURL = strings.TrimRight(v, "/")
			return nil
		}},
		{"webhook-project-id", "CVAT_SYNC_WEBHOOK_PROJECT_ID", "", "webhook register: make a project webhook for this project id", false, func(c *Config, v string) error {
			if v == "" {
				return nil
			}
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n <= 0 {
				return errors.New("must be a positive CVAT project id")
			}
			c.WebhookProjectID = n
			return nil
		}},
		{"webhook-org", "CVAT_SYNC_WEBHOOK_ORG", "", "webhook register: make an organization webhook (default --cvat-org)", false, func(c *Config, v string) error { c.WebhookOrg = v; return nil }},
	}
}

// Needs says which optional groups of settings a command requires.
type Needs uint8

const (
	// NeedsSecret requires a webhook secret (serve, webhook register).
	NeedsSecret Needs = 1 << iota
	// NeedsCVAT requires a CVAT URL and credentials (backfill, webhook commands).
	NeedsCVAT
	// NeedsPublicURL requires CVAT_SYNC_PUBLIC_URL (webhook register).
	NeedsPublicURL
)

// Parse reads args (without the program and command names) and getenv into a
// Config. Flags win over the environment, which wins over defaults. Flags other
// than the settings' can be added to fs beforehand; Parse returns the
// remaining arguments.
func Parse(fs *flag.FlagSet, args []string, getenv func(string) string, needs Needs) (Config, []string, error) {
	settings := Settings()
	values := make([]*string, len(settings))
	files := make([]*string, len(settings))
	for i, s := range settings {
		values[i] = fs.String(s.Flag, "", usage(s))
		if s.Secret {
			files[i] = fs.String(s.Flag+"-file", "", "file holding "+s.Flag+" (env "+s.Env+"_FILE)")
		}
	}
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		return Config{}, nil, err
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })

	var c Config
	var errs []error
	for i, s := range settings {
		v, err := resolve(s, given, *values[i], files[i], getenv)
		if err == nil {
			err = s.set(&c, v)
			if err != nil && s.Secret {
				err = errors.New("is invalid")
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s (--%s): %w", s.Env, s.Flag, err))
		}
	}
	if c.GCPProject == "" {
		c.GCPProject = getenv("GOOGLE_CLOUD_PROJECT")
	}
	if c.WebhookOrg == "" {
		c.WebhookOrg = c.CVATOrg
	}
	errs = append(errs, c.check(needs)...)
	if len(errs) > 0 {
		return Config{}, nil, errors.Join(errs...)
	}
	return c, fs.Args(), nil
}

// resolve picks a setting's raw value: flag, flag file, env, env file, default.
func resolve(s Setting, given map[string]bool, flagVal string, flagFile *string, getenv func(string) string) (string, error) {
	switch {
	case given[s.Flag] && flagFile != nil && given[s.Flag+"-file"]:
		return "", fmt.Errorf("set either --%s or --%s-file, not both", s.Flag, s.Flag)
	case given[s.Flag]:
		return strings.TrimSpace(flagVal), nil
	case flagFile != nil && given[s.Flag+"-file"]:
		return readSecretFile(*flagFile)
	}
	env := getenv(s.Env)
	if s.Secret {
		file := getenv(s.Env + "_FILE")
		if env != "" && file != "" {
			return "", fmt.Errorf("set either %s or %s_FILE, not both", s.Env, s.Env)
		}
		if file != "" {
			return readSecretFile(file)
		}
	}
	if env != "" {
		return strings.TrimSpace(env), nil
	}
	return s.Default, nil
}

func readSecretFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		// The path is not secret; the content is never read into the message.
		return "", fmt.Errorf("cannot read secret file: %w", errors.Unwrap(err))
	}
	return strings.TrimSpace(string(b)), nil
}

// check validates combinations of settings.
func (c *Config) check(needs Needs) []error {
	var errs []error
	if needs&NeedsSecret != 0 && len(c.WebhookSecrets) == 0 {
		errs = append(errs, errors.New("CVAT_SYNC_WEBHOOK_SECRET (--webhook-secret) or CVAT_SYNC_WEBHOOK_SECRET_FILE: required; "+
			"set the secret of the CVAT webhook (a webhook without a secret sends unsigned deliveries, which are refused)"))
	}
	if c.CVATToken != "" && (c.CVATUsername != "" || c.CVATPassword != "") {
		errs = append(errs, errors.New("CVAT_SYNC_CVAT_TOKEN and CVAT_SYNC_CVAT_USERNAME/PASSWORD: set a token or a username and password, not both"))
	}
	if (c.CVATUsername == "") != (c.CVATPassword == "") {
		errs = append(errs, errors.New("CVAT_SYNC_CVAT_USERNAME and CVAT_SYNC_CVAT_PASSWORD: set both for Basic auth"))
	}
	if needs&NeedsCVAT != 0 {
		if c.CVATURL == "" {
			errs = append(errs, errors.New("CVAT_SYNC_CVAT_URL (--cvat-url): required for this command, e.g. http://cvat-backend-service.cvat.svc:8080"))
		}
		if c.CVATToken == "" && c.CVATUsername == "" {
			errs = append(errs, errors.New("CVAT_SYNC_CVAT_TOKEN (or _FILE), or CVAT_SYNC_CVAT_USERNAME and CVAT_SYNC_CVAT_PASSWORD: credentials are required for this command"))
		}
	}
	if needs&NeedsPublicURL != 0 && c.PublicURL == "" {
		errs = append(errs, errors.New("CVAT_SYNC_PUBLIC_URL (--public-url): required; the URL CVAT reaches this service at, e.g. http://cvat-sync.cvat.svc:8080"))
	}
	if c.MaxWait < c.Debounce {
		errs = append(errs, fmt.Errorf("CVAT_SYNC_MAX_WAIT (--max-wait): %s is shorter than CVAT_SYNC_DEBOUNCE %s; make it at least as long", c.MaxWait, c.Debounce))
	}
	return errs
}

// Embedded reports whether no GCP project and no emulator is configured, so
// the service runs on its embedded default.
func (c *Config) Embedded(getenv func(string) string) bool {
	return c.GCPProject == "" && getenv("PUBSUB_EMULATOR_HOST") == "" && getenv("STORAGE_EMULATOR_HOST") == ""
}

// Secrets returns every secret value in c, for scrubbing logs in tests.
func (c *Config) Secrets() []string {
	out := append([]string{}, c.WebhookSecrets...)
	for _, s := range []string{c.CVATToken, c.CVATPassword} {
		if s != "" {
			out = append(out, s)
		}
	}
	return out
}

func usage(s Setting) string {
	u := s.Usage + " (env " + s.Env
	if s.Secret {
		u += ", or " + s.Env + "_FILE"
	}
	if s.Default != "" {
		u += `; default "` + s.Default + `"`
	}
	return u + ")"
}

func list(v string) []string {
	var out []string
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func nonEmpty(v string) error {
	if v == "" {
		return errors.New("must not be empty")
	}
	return nil
}

func oneOf(v string, allowed ...string) error {
	for _, a := range allowed {
		if v == a {
			return nil
		}
	}
	return fmt.Errorf("%q is not one of %s", v, strings.Join(allowed, ", "))
}

func boolInto(field func(*Config) *bool) func(*Config, string) error {
	return func(c *Config, v string) error {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("%q is not true or false", v)
		}
		*field(c) = b
		return nil
	}
}

func durationInto(field func(*Config) *time.Duration, min time.Duration) func(*Config, string) error {
	return func(c *Config, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("%q is not a duration; use a Go duration such as 30s, 2m or 1h", v)
		}
		if d < min || (min == 0 && d < 0) {
			return fmt.Errorf("%s is too short; use at least %s", d, min)
		}
		*field(c) = d
		return nil
	}
}

// bucketName applies GCS's basic bucket-name rules.
func bucketName(v string) error {
	if len(v) < 3 || len(v) > 63 {
		return errors.New("must be a GCS bucket name of 3 to 63 characters")
	}
	for i, r := range v {
		ok := r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || (i > 0 && i < len(v)-1 && (r == '-' || r == '_' || r == '.'))
		if !ok {
			return fmt.Errorf("%q is not a GCS bucket name (lower-case letters, digits, - _ .; starting and ending with a letter or digit)", v)
		}
	}
	return nil
}

// resourceID applies Pub/Sub's rules for topic and subscription ids.
func resourceID(v string) error {
	if len(v) < 3 || len(v) > 255 || strings.HasPrefix(v, "goog") {
		return fmt.Errorf("%q is not a Pub/Sub id (3 to 255 characters, not starting with goog)", v)
	}
	for i, r := range v {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || (i > 0 && (r >= '0' && r <= '9' || strings.ContainsRune("-_.~+%", r)))
		if !ok {
			return fmt.Errorf("%q is not a Pub/Sub id (start with a letter; letters, digits, - _ . ~ + %%)", v)
		}
	}
	return nil
}
