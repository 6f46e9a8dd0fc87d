// Package config reads cvat-sync's settings. A command registers the
// settings it reads as flags of its flag set (Register) and, once the flags
// are parsed, resolves them (Load): the flag, else the flag's file, else the
// CVAT_SYNC_* environment variable, else its _FILE variant, else the
// default. Files serve secrets (Kubernetes Secret mounts). Every value is
// validated; an error names the setting and says what to fix, and never
// repeats a secret.
package config

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"maps"
	"net/url"
	"os"
	"slices"
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

// Kind is the type of a setting's value, as its flag shows it in help.
type Kind string

// The kinds of settings.
const (
	String   Kind = "string"
	Bool     Kind = "bool" // a real boolean flag: --save-images alone means true
	Int      Kind = "int"
	Float    Kind = "float"
	Duration Kind = "duration"
	List     Kind = "list" // comma-separated
	URL      Kind = "url"
)

// Setting describes one configurable value: its flag, its environment
// variable, its default and whether it is a secret.
type Setting struct {
	Flag    string // kebab case, e.g. "cvat-url"
	Env     string // the flag in upper snake case after CVAT_SYNC_, e.g. "CVAT_SYNC_CVAT_URL"
	Default string
	Usage   string
	Kind    Kind
	Group   string // heading the setting is listed under in help
	Secret  bool   // never printed; also readable from <Env>_FILE / --<flag>-file
	set     func(c *Config, v string) error
}

// FileFlag is the flag naming a file that holds a secret setting's value.
func (s Setting) FileFlag() string { return s.Flag + "-file" }

func setting(kind Kind, flag, def, usage string, set func(*Config, string) error) Setting {
	return Setting{Flag: flag, Env: "CVAT_SYNC_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_")), Default: def, Usage: usage, Kind: kind, set: set}
}

func secret(flag, usage string, set func(*Config, string) error) Setting {
	s := setting(String, flag, "", usage, set)
	s.Secret = true
	return s
}

// Headings of the groups of settings, in documentation order.
const (
	GroupIngress      = "Receiving webhooks"
	GroupCVAT         = "CVAT"
	GroupCloud        = "Cloud Storage and Pub/Sub"
	GroupExports      = "Exports"
	GroupConvergence  = "Coalescing and convergence"
	GroupRegistration = "Webhook registration"
	GroupProcess      = "Process"
)

// Settings returns the table of settings, in documentation order.
func Settings() []Setting {
	var out []Setting
	group := func(name string, ss ...Setting) {
		for _, s := range ss {
			s.Group = name
			out = append(out, s)
		}
	}
	group(GroupIngress,
		setting(String, "listen", ":8080", "HTTP listen address", func(c *Config, v string) error { c.Listen = v; return nonEmpty(v) }),
		secret("webhook-secret", "webhook secret(s), comma-separated for rotation", func(c *Config, v string) error { c.WebhookSecrets = list(v); return nil }),
		setting(Bool, "legacy-signature", "false", "also accept CVAT 2.3.0 signatures (body plus newline)", boolInto(func(c *Config) *bool { return &c.LegacySignature })),
		setting(Int, "max-body-bytes", "1048576", "largest webhook body accepted", func(c *Config, v string) error {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 1024 || n > 64<<20 {
				return errors.New("must be a whole number of bytes from 1024 to 67108864")
			}
			c.MaxBodyBytes = n
			return nil
		}),
	)
	group(GroupCVAT,
		setting(URL, "cvat-url", "", "CVAT base URL, e.g. http://cvat-backend-service.cvat.svc:8080", func(c *Config, v string) error {
			if v == "" {
				return nil
			}
			u, err := url.Parse(v)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.RawQuery != "" {
				return errors.New("must be an http(s) URL with a host and no user info or query, e.g. http://cvat-backend-service.cvat.svc:8080")
			}
			c.CVATURL = strings.TrimRight(v, "/")
			return nil
		}),
		secret("cvat-token", "CVAT access token", func(c *Config, v string) error { c.CVATToken = v; return nil }),
		setting(String, "cvat-auth", "auto", "how the token is sent: auto (Bearer on CVAT 2.48+, Token before), bearer (personal access token) or token (legacy key)", func(c *Config, v string) error {
			c.CVATAuth = strings.ToLower(v)
			return oneOf(c.CVATAuth, "auto", "bearer", "token")
		}),
		setting(String, "cvat-username", "", "CVAT user for Basic auth (instead of a token)", func(c *Config, v string) error { c.CVATUsername = v; return nil }),
		secret("cvat-password", "CVAT password for Basic auth", func(c *Config, v string) error { c.CVATPassword = v; return nil }),
		setting(String, "cvat-org", "", "CVAT organization slug", func(c *Config, v string) error { c.CVATOrg = v; return nil }),
	)
	group(GroupCloud,
		setting(String, "gcp-project", "", "GCP project of the topics (default $GOOGLE_CLOUD_PROJECT; none and no emulator: the embedded default)", func(c *Config, v string) error { c.GCPProject = v; return nil }),
		setting(String, "gcs-bucket", "cvat-sync", "bucket the archives go to", func(c *Config, v string) error { c.GCSBucket = v; return bucketName(v) }),
		setting(String, "gcs-prefix", "", "object name prefix in the bucket", func(c *Config, v string) error { c.GCSPrefix = strings.Trim(v, "/"); return nil }),
		setting(String, "gcs-state-prefix", "_cvat-sync", "where the record of what was exported lives in the bucket (outside the archive prefix)", func(c *Config, v string) error {
			c.GCSStatePrefix = strings.Trim(v, "/")
			return nonEmpty(c.GCSStatePrefix)
		}),
		setting(String, "outbox-topic", "cvat-sync-exports", "topic of the export notices", func(c *Config, v string) error { c.OutboxTopic = v; return resourceID(v) }),
		setting(String, "inbox-topic", "cvat-sync-inbox", "topic of the work queue", func(c *Config, v string) error { c.InboxTopic = v; return resourceID(v) }),
		setting(String, "inbox-subscription", "cvat-sync-inbox", "subscription of the work queue", func(c *Config, v string) error { c.InboxSubscription = v; return resourceID(v) }),
		setting(String, "inbox-dead-letter-topic", "cvat-sync-inbox-dead", "where work goes after --max-attempts", func(c *Config, v string) error { c.DeadLetterTopic = v; return resourceID(v) }),
		setting(Int, "max-attempts", "5", "delivery attempts of an inbox message before it is dead-lettered (5 to 100, Pub/Sub's range)", func(c *Config, v string) error {
			n, err := strconv.Atoi(v)
			if err != nil || n < 5 || n > 100 {
				return errors.New("must be a whole number from 5 to 100 (Pub/Sub's dead-letter range)")
			}
			c.MaxAttempts = n
			return nil
		}),
		setting(String, "data-dir", "./cvat-sync-data", "storage of the embedded default", func(c *Config, v string) error { c.DataDir = v; return nonEmpty(v) }),
	)
	group(GroupExports,
		setting(List, "export-formats", "CVAT for images 1.1", "comma-separated CVAT export format names", func(c *Config, v string) error {
			c.ExportFormats = list(v)
			if len(c.ExportFormats) == 0 {
				return errors.New(`must name at least one CVAT format, e.g. "CVAT for images 1.1,COCO 1.0"`)
			}
			return nil
		}),
		setting(Bool, "save-images", "false", "export images too, not only annotations", boolInto(func(c *Config) *bool { return &c.SaveImages })),
		setting(String, "trigger", "update", "which events export: update (any change to a task, its jobs or annotations) or completed (a job or task reaches completed)", func(c *Config, v string) error {
			c.Trigger = strings.ToLower(v)
			return oneOf(c.Trigger, "update", "completed")
		}),
	)
	group(GroupConvergence,
		setting(Duration, "debounce", "30s", "export once a task has been quiet this long", durationInto(func(c *Config) *time.Duration { return &c.Debounce }, 0)),
		setting(Duration, "max-wait", "10m", "export at the latest this long after a task's first pending event", durationInto(func(c *Config) *time.Duration { return &c.MaxWait }, 0)),
		setting(Duration, "reconcile-interval", "10m", "how often convergence compares CVAT's tasks with the bucket's record (0 = off: webhooks only)", durationInto(func(c *Config) *time.Duration { return &c.ReconcileInterval }, 0)),
		setting(Duration, "full-reconcile-interval", "1h", "how often a convergence pass lists every task (finding deletions); the passes between list only what changed", durationInto(func(c *Config) *time.Duration { return &c.FullReconcileInterval }, time.Minute)),
		setting(String, "sync-since", "first-start", "which tasks convergence exports unasked: first-start (changed since the service first started), all, an RFC 3339 time, or a duration before now (720h); backfill exports older ones", func(c *Config, v string) error {
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
		}),
		setting(Float, "max-delete-fraction", "0.5", "a full pass that finds more than this share of the recorded tasks gone (and more than 10) announces none of them and alerts; 1 lifts the guard", func(c *Config, v string) error {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil || f <= 0 || f > 1 {
				return errors.New("must be a number above 0 and at most 1")
			}
			c.MaxDeleteFraction = f
			return nil
		}),
		setting(Bool, "redeliver", "true", "read CVAT's delivery log of the registered webhook and redeliver failed deliveries", boolInto(func(c *Config) *bool { return &c.Redeliver })),
	)
	group(GroupRegistration,
		setting(URL, "public-url", "", "URL CVAT reaches this service at (webhook register)", func(c *Config, v string) error {
			if v == "" {
				return nil
			}
			u, err := url.Parse(v)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				return errors.New("must be an http(s) URL, e.g. http://cvat-sync.cvat.svc:8080")
			}
			c.PublicURL = strings.TrimRight(v, "/")
			return nil
		}),
		setting(Int, "webhook-project-id", "", "webhook register: make a project webhook for this project id", func(c *Config, v string) error {
			if v == "" {
				return nil
			}
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n <= 0 {
				return errors.New("must be a positive CVAT project id")
			}
			c.WebhookProjectID = n
			return nil
		}),
		setting(String, "webhook-org", "", "webhook register: make an organization webhook (default --cvat-org)", func(c *Config, v string) error { c.WebhookOrg = v; return nil }),
	)
	group(GroupProcess,
		setting(Duration, "shutdown-grace", "25s", "how long SIGTERM may take to drain", durationInto(func(c *Config) *time.Duration { return &c.ShutdownGrace }, time.Second)),
		setting(String, "log-level", "info", "debug, info, warn or error", func(c *Config, v string) error {
			if err := c.LogLevel.UnmarshalText([]byte(v)); err != nil {
				return errors.New("must be debug, info, warn or error")
			}
			return nil
		}),
	)
	return out
}

// Names returns the flag names of every setting, in documentation order:
// what serve reads.
func Names() []string {
	var out []string
	for _, s := range Settings() {
		out = append(out, s.Flag)
	}
	return out
}

// Needs says which optional groups of settings a command requires.
type Needs uint8

const (
	// NeedsSecret requires a webhook secret (serve, webhook register).
	NeedsSecret Needs = 1 << iota
	// NeedsCVATURL requires a CVAT URL.
	NeedsCVATURL
	// NeedsCredentials requires CVAT credentials: a token, or a username
	// and password.
	NeedsCredentials
	// NeedsPublicURL requires CVAT_SYNC_PUBLIC_URL (webhook register).
	NeedsPublicURL

	// NeedsCVAT requires a CVAT URL and credentials (backfill, webhook commands).
	NeedsCVAT = NeedsCVATURL | NeedsCredentials
)

// Flags are the settings a command reads, registered as flags on its flag
// set. After the flag set has parsed the arguments, Load resolves them.
type Flags struct {
	fs       *flag.FlagSet
	settings []Setting
	values   []*string
	files    []*string
}

// Register declares the named settings (flag names, as in Setting.Flag) as
// flags of fs, in documentation order, with a --<flag>-file flag for each
// secret. A setting a command does not declare is not read: Load leaves it
// at its default.
func Register(fs *flag.FlagSet, names []string) (*Flags, error) {
	want := map[string]bool{}
	for _, n := range names {
		if want[n] {
			return nil, fmt.Errorf("config: setting %q listed twice", n)
		}
		want[n] = true
	}
	f := &Flags{fs: fs}
	for _, s := range Settings() {
		if !want[s.Flag] {
			continue
		}
		delete(want, s.Flag)
		v := new(string)
		fs.Var(&text{p: v, bool: s.Kind == Bool}, s.Flag, s.Usage)
		var file *string
		if s.Secret {
			file = fs.String(s.FileFlag(), "", "file holding --"+s.Flag)
		}
		f.settings, f.values, f.files = append(f.settings, s), append(f.values, v), append(f.files, file)
	}
	if len(want) > 0 {
		return nil, fmt.Errorf("config: no setting %q", slices.Sorted(maps.Keys(want)))
	}
	return f, nil
}

// Settings returns the registered settings, in documentation order.
func (f *Flags) Settings() []Setting { return f.settings }

// IsSetting reports whether name is the flag (or the file flag) of one of
// the registered settings, not a command's own flag.
func (f *Flags) IsSetting(name string) bool {
	for _, s := range f.settings {
		if name == s.Flag || (s.Secret && name == s.FileFlag()) {
			return true
		}
	}
	return false
}

// text is a setting's flag: it keeps the raw text, which Load validates
// together with the environment's, so a value has one check and one message
// wherever it comes from. A Bool setting's flag is a boolean flag.
type text struct {
	p    *string
	bool bool
}

func (t *text) String() string {
	if t.p == nil {
		return ""
	}
	return *t.p
}
func (t *text) Set(v string) error { *t.p = v; return nil }
func (t *text) IsBoolFlag() bool   { return t.bool }

// Load resolves the registered settings from the parsed flags and getenv,
// in this order: flag, flag file, environment, environment file, default.
// It checks every value and the requirements of needs, and reports every
// problem at once.
func (f *Flags) Load(getenv func(string) string, needs Needs) (Config, error) {
	given := map[string]bool{}
	f.fs.Visit(func(fl *flag.Flag) { given[fl.Name] = true })
	declared := map[string]bool{}
	var c Config
	var errs []error
	for i, s := range f.settings {
		declared[s.Flag] = true
		v, err := resolve(s, given, *f.values[i], f.files[i], getenv)
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
	for _, s := range Settings() {
		if !declared[s.Flag] {
			if err := s.set(&c, s.Default); err != nil {
				panic(fmt.Sprintf("config: default of %s: %v", s.Env, err)) // a bug in the table
			}
		}
	}
	if declared["gcp-project"] && c.GCPProject == "" {
		c.GCPProject = getenv("GOOGLE_CLOUD_PROJECT")
	}
	if c.WebhookOrg == "" {
		c.WebhookOrg = c.CVATOrg
	}
	errs = append(errs, c.check()...)
	errs = append(errs, c.require(needs)...)
	if len(errs) > 0 {
		return Config{}, errors.Join(errs...)
	}
	return c, nil
}

// resolve picks a setting's raw value: flag, flag file, env, env file, default.
func resolve(s Setting, given map[string]bool, flagVal string, flagFile *string, getenv func(string) string) (string, error) {
	switch {
	case given[s.Flag] && flagFile != nil && given[s.FileFlag()]:
		return "", fmt.Errorf("set either --%s or --%s, not both", s.Flag, s.FileFlag())
	case given[s.Flag]:
		return strings.TrimSpace(flagVal), nil
	case flagFile != nil && given[s.FileFlag()]:
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
func (c *Config) check() []error {
	var errs []error
	if c.CVATToken != "" && (c.CVATUsername != "" || c.CVATPassword != "") {
		errs = append(errs, errors.New("CVAT_SYNC_CVAT_TOKEN and CVAT_SYNC_CVAT_USERNAME/PASSWORD: set a token or a username and password, not both"))
	}
	if (c.CVATUsername == "") != (c.CVATPassword == "") {
		errs = append(errs, errors.New("CVAT_SYNC_CVAT_USERNAME and CVAT_SYNC_CVAT_PASSWORD: set both for Basic auth"))
	}
	if c.MaxWait < c.Debounce {
		errs = append(errs, fmt.Errorf("CVAT_SYNC_MAX_WAIT (--max-wait): %s is shorter than CVAT_SYNC_DEBOUNCE %s; make it at least as long", c.MaxWait, c.Debounce))
	}
	return errs
}

// Require checks that the settings needs names are set, for a command that
// decides what it requires only once it runs. The error names every
// missing setting.
func (c *Config) Require(needs Needs) error { return errors.Join(c.require(needs)...) }

func (c *Config) require(needs Needs) []error {
	var errs []error
	if needs&NeedsSecret != 0 && len(c.WebhookSecrets) == 0 {
		errs = append(errs, errors.New("CVAT_SYNC_WEBHOOK_SECRET (--webhook-secret) or CVAT_SYNC_WEBHOOK_SECRET_FILE: required; "+
			"set the secret of the CVAT webhook (a webhook without a secret sends unsigned deliveries, which are refused)"))
	}
	if needs&NeedsCVATURL != 0 && c.CVATURL == "" {
		errs = append(errs, errors.New("CVAT_SYNC_CVAT_URL (--cvat-url): required for this command, e.g. http://cvat-backend-service.cvat.svc:8080"))
	}
	if needs&NeedsCredentials != 0 && !c.HasCredentials() {
		errs = append(errs, errors.New("CVAT_SYNC_CVAT_TOKEN (or _FILE), or CVAT_SYNC_CVAT_USERNAME and CVAT_SYNC_CVAT_PASSWORD: credentials are required for this command"))
	}
	if needs&NeedsPublicURL != 0 && c.PublicURL == "" {
		errs = append(errs, errors.New("CVAT_SYNC_PUBLIC_URL (--public-url): required; the URL CVAT reaches this service at, e.g. http://cvat-sync.cvat.svc:8080"))
	}
	return errs
}

// HasCredentials reports whether CVAT credentials are configured.
func (c *Config) HasCredentials() bool { return c.CVATToken != "" || c.CVATUsername != "" }

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
