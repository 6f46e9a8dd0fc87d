// Package cvatapi is cvat-sync's client for CVAT's REST API: server discovery,
// reads of tasks, jobs and projects, streaming exports of a task's annotations
// (request-queue API from CVAT 2.16, legacy polling API before), and webhook
// management. It is the only package that imports resty.
//
// It adapts to the server's release (read from /api/server/about, cached for
// Config.VersionTTL and re-read when an export endpoint shows the server
// changed): the export API and its quirks, and, with AuthScheme "auto", how a
// token is sent.
//
// Credentials only ever go to the configured base URL's origin: the absolute
// URLs CVAT hands back (result_url, pagination links), which it builds from
// its proxies' headers, are used for their path and query only, and
// redirects to another origin are refused.
package cvatapi

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-resty/resty/v2"
	"github.com/prometheus/client_golang/prometheus"
)

// MediaType is the content type CVAT answers JSON with; it is also what the
// client sends as Accept.
const MediaType = "application/vnd.cvat+json"

// maxJSONBody caps how much of a JSON answer is read: CVAT's largest pages of
// tasks are a few MiB; anything far bigger is not a CVAT answer.
const maxJSONBody = 64 << 20

// Config configures a Client. Zero durations take the defaults documented on
// each field.
type Config struct {
	BaseURL    string // configured CVAT origin, e.g. http://cvat-backend:8080; the only host credentials go to
	Token      string // personal access token or legacy key
	AuthScheme string // how Token is sent: "auto" (default; "Bearer" from CVAT 2.48, "Token" before, by the server's version), "bearer" or "token" (legacy "Token <key>")
	Username   string // Basic auth instead of a token
	Password   string
	Org        string // organization slug, sent as X-Organization
	UserAgent  string // default "cvat-sync"

	RequestTimeout  time.Duration // per HTTP attempt until the answer's headers (and, for JSON, its body); default 30s. Downloads then time out only when idle this long.
	MaxRetries      int           // retries after the first attempt for 5xx, 429, network errors and answers that are not CVAT's; default 4, negative means none
	RetryWaitMin    time.Duration // first backoff; default 500ms
	RetryWaitMax    time.Duration // backoff cap; default 30s
	RetryAfterMax   time.Duration // longest Retry-After honoured; default 5m
	PollInterval    time.Duration // first wait between export status polls; default 1s
	PollMaxInterval time.Duration // poll backoff cap; default 15s
	ExportTimeout   time.Duration // longest wait for CVAT to prepare one export (restarts included); default 1h
	VersionTTL      time.Duration // how long the server's version (About) is trusted; default 5m

	HTTPClient *http.Client          // optional; its Transport (and Jar, if set) are used (copied, never modified)
	Registerer prometheus.Registerer // cvat_sync_cvat_requests_total and the duration histogram; nil means no metrics
	Logger     *slog.Logger          // nil discards
}

// Client talks to one CVAT server. It is safe for concurrent use.
type Client struct {
	cfg    Config
	base   *url.URL
	rc     *resty.Client
	scheme string // "auto", "bearer" or "token" (with a Token); "basic"; "" without credentials
	log    *slog.Logger
	m      *metrics

	aboutMu sync.Mutex
	about   *aboutCache
}

// New validates cfg and builds a Client. It makes no request.
//
// The client keeps a cookie jar (unless Config.HTTPClient brings its own):
// CVAT 2.3-2.16 log every Token-authenticated request without a session in,
// and without the cookie each request would add a session to the server's
// table. Requests still carry their Authorization header, which CVAT checks
// before the session, so the session's CSRF rule never applies to them.
func New(cfg Config) (*Client, error) {
	if cfg.BaseURL == "" {
		return nil, errors.New("cvatapi: BaseURL is required")
	}
	base, err := url.Parse(strings.TrimRight(cfg.BaseURL, "/"))
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" {
		return nil, fmt.Errorf("cvatapi: BaseURL %q must be an absolute http(s) URL", cfg.BaseURL)
	}
	if base.RawQuery != "" || base.Fragment != "" {
		return nil, fmt.Errorf("cvatapi: BaseURL %q must not have a query or fragment", cfg.BaseURL)
	}
	scheme := strings.ToLower(cfg.AuthScheme)
	switch scheme {
	case "":
		scheme = "auto"
	case "auto", "bearer", "token":
	default:
		return nil, fmt.Errorf("cvatapi: AuthScheme %q: want auto, bearer or token", cfg.AuthScheme)
	}
	if cfg.Token != "" && (cfg.Username != "" || cfg.Password != "") {
		return nil, errors.New("cvatapi: set either Token or Username/Password, not both")
	}
	if (cfg.Username == "") != (cfg.Password == "") {
		return nil, errors.New("cvatapi: Basic auth needs both Username and Password")
	}
	switch {
	case cfg.Token == "" && cfg.Username != "":
		scheme = "basic"
	case cfg.Token == "":
		scheme = ""
	}
	setDefaults(&cfg)

	hc := &http.Client{}
	if cfg.HTTPClient != nil {
		cp := *cfg.HTTPClient
		hc = &cp
	}
	hc.Timeout = 0 // per-attempt contexts bound requests; a client-wide timeout would cut long downloads
	if hc.Jar == nil {
		hc.Jar, _ = cookiejar.New(nil) // never fails without options
	}
	rc := resty.NewWithClient(hc).
		SetBaseURL(base.String()).
		SetHeader("Accept", MediaType).
		SetHeader("User-Agent", cfg.UserAgent).
		SetRetryCount(0).
		SetLogger(discardLogger{}).
		SetRedirectPolicy(resty.RedirectPolicyFunc(func(req *http.Request, via []*http.Request) error {
			if !sameOrigin(req.URL, base) {
				return fmt.Errorf("%w: redirect to %s", ErrOffOrigin, redactURL(req.URL))
			}
			if len(via) >= 5 {
				return errors.New("stopped after 5 redirects")
			}
			return nil
		}))
	// Credentials are set per request (see attempt), not on the resty
	// client, so that the open /api/server/about goes without them and the
	// token's scheme can follow the server's version.
	if cfg.Org != "" {
		rc.SetHeader("X-Organization", cfg.Org)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	return &Client{cfg: cfg, base: base, rc: rc, scheme: scheme, log: log, m: m}, nil
}

func setDefaults(cfg *Config) {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.RequestTimeout, 30*time.Second)
	def(&cfg.RetryWaitMin, 500*time.Millisecond)
	def(&cfg.RetryWaitMax, 30*time.Second)
	def(&cfg.RetryAfterMax, 5*time.Minute)
	def(&cfg.PollInterval, time.Second)
	def(&cfg.PollMaxInterval, 15*time.Second)
	def(&cfg.ExportTimeout, time.Hour)
	def(&cfg.VersionTTL, 5*time.Minute)
	if cfg.RetryWaitMax < cfg.RetryWaitMin {
		cfg.RetryWaitMax = cfg.RetryWaitMin
	}
	if cfg.PollMaxInterval < cfg.PollInterval {
		cfg.PollMaxInterval = cfg.PollInterval
	}
	switch {
	case cfg.MaxRetries == 0:
		cfg.MaxRetries = 4
	case cfg.MaxRetries < 0:
		cfg.MaxRetries = 0
	}
	if cfg.UserAgent == "" {
		cfg.UserAgent = "cvat-sync"
	}
}

// BaseURL returns the configured CVAT origin (without a trailing slash).
func (c *Client) BaseURL() string { return c.base.String() }

// Close releases idle connections. The Client must not be used afterwards.
func (c *Client) Close() { c.rc.GetClient().CloseIdleConnections() }

// call describes one logical API call: retried as a whole on transient
// failures.
type call struct {
	method  string
	route   string // template for metrics, e.g. /api/tasks/{id}
	path    string // real path or absolute URL (already origin-checked)
	query   url.Values
	body    any // JSON request body
	header  map[string]string
	noAuth  bool
	accept  []int // non-2xx statuses returned as answers, not errors (e.g. 409)
	noRetry []int // statuses not retried although they normally would be
}

// String names the call in errors: method and path, never the query (which
// can be long) nor anything secret.
func (k call) String() string {
	p := k.path
	if u, err := url.Parse(p); err == nil && u.IsAbs() {
		p = u.Path
	}
	return k.method + " " + p
}

// do runs k with retries and returns the successful (2xx) response with its
// body still open, and a cancel that the caller must call once the body is
// consumed. With stream set the per-attempt timeout stops applying once the
// headers are in; an idle watchdog takes over (see idleBody).
func (c *Client) do(ctx context.Context, k call, stream bool) (*http.Response, context.CancelFunc, error) {
	var auth, cred string
	if !k.noAuth {
		var err error
		if auth, cred, err = c.authorization(ctx); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", k, err)
		}
	}
	for attempt := 0; ; attempt++ {
		resp, cancel, err := c.attempt(ctx, k, auth, stream)
		if err == nil && (resp.StatusCode < 300 || slices.Contains(k.accept, resp.StatusCode)) {
			return resp, cancel, nil
		}
		var retryAfter time.Duration
		if err == nil {
			se := statusError(k, resp)
			if se.Code == http.StatusUnauthorized && !k.noAuth {
				// Not for the open calls: About runs under aboutMu, which
				// authHint's version lookup takes.
				se.Credential, se.Hint = cred, c.authHint(ctx)
			}
			err = se
			retryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
			cancel()
		}
		if ctx.Err() != nil {
			return nil, nil, fmt.Errorf("%s: %w", k, ctx.Err())
		}
		var se *StatusError
		if !retryable(err) || attempt >= c.cfg.MaxRetries || (errors.As(err, &se) && slices.Contains(k.noRetry, se.Code)) {
			return nil, nil, err
		}
		wait := c.backoff(attempt, retryAfter)
		c.log.LogAttrs(ctx, slog.LevelDebug, "retrying CVAT request",
			slog.String("endpoint", k.route), slog.String("method", k.method),
			slog.Int("attempt", attempt+1), slog.Duration("wait", wait), slog.String("error", err.Error()))
		if serr := sleep(ctx, wait); serr != nil {
			return nil, nil, fmt.Errorf("%w; gave up waiting to retry: %w", err, serr)
		}
	}
}

// authorization is the Authorization header for an authenticated call and
// a description of it for errors (the setting and the scheme, never the
// credential). AuthScheme "auto" sends a token as "Bearer" from CVAT 2.48
// (personal access tokens) and as "Token" before, where a Bearer header
// would make the request anonymous.
func (c *Client) authorization(ctx context.Context) (header, desc string, err error) {
	switch c.scheme {
	case "":
		return "", "no credentials configured (Config.Token, or Config.Username and Config.Password)", nil
	case "basic":
		return "Basic " + base64.StdEncoding.EncodeToString([]byte(c.cfg.Username+":"+c.cfg.Password)),
			`Config.Username/Password sent as "Basic"`, nil
	case "bearer":
		return "Bearer " + c.cfg.Token, `Config.Token sent as "Bearer" (AuthScheme bearer)`, nil
	case "token":
		return "Token " + c.cfg.Token, `Config.Token sent as "Token" (AuthScheme token)`, nil
	}
	v, err := c.Version(ctx)
	var ue *unparsableVersionError
	switch {
	case errors.As(err, &ue):
		return "Bearer " + c.cfg.Token, `Config.Token sent as "Bearer" (AuthScheme auto, unparsable CVAT version)`, nil
	case err != nil:
		return "", "", fmt.Errorf("choose how to send the token: %w", err)
	case v.AtLeast(2, 48, 0):
		return "Bearer " + c.cfg.Token, `Config.Token sent as "Bearer" (AuthScheme auto, CVAT ` + v.String() + ")", nil
	}
	return "Token " + c.cfg.Token, `Config.Token sent as "Token" (AuthScheme auto, CVAT ` + v.String() + ")", nil
}

// authHint says what probably fixes a 401. It reads the server's version
// (the open About, usually cached) to tell a scheme the release does not
// take from a wrong credential.
func (c *Client) authHint(ctx context.Context) string {
	if c.scheme == "" {
		return "configure a token or a username and password"
	}
	v, err := c.Version(ctx)
	switch {
	case err != nil:
	case c.scheme == "bearer" && !v.AtLeast(2, 48, 0):
		return "CVAT " + v.String() + " has no personal access tokens (2.48+): use AuthScheme token or auto with a legacy key"
	case c.scheme == "token" && v.AtLeast(2, 48, 0):
		return "a personal access token is sent as Bearer: use AuthScheme bearer or auto (Token is for legacy keys)"
	case c.scheme == "auto" && v.AtLeast(2, 48, 0):
		return "check the token; a legacy key (not a personal access token) needs AuthScheme token"
	}
	return "check the credential"
}

func (c *Client) attempt(ctx context.Context, k call, auth string, stream bool) (*http.Response, context.CancelFunc, error) {
	actx, cancel := context.WithCancel(ctx)
	timer := time.AfterFunc(c.cfg.RequestTimeout, cancel)
	stopTimer := func() bool { return timer.Stop() }
	req := c.rc.R().SetContext(actx).SetDoNotParseResponse(true)
	if k.query != nil {
		req.SetQueryParamsFromValues(k.query)
	}
	for h, v := range k.header {
		req.SetHeader(h, v)
	}
	if auth != "" {
		req.SetHeader("Authorization", auth)
	}
	if k.body != nil {
		b, err := json.Marshal(k.body)
		if err != nil {
			cancel()
			return nil, nil, fmt.Errorf("%s: encode body: %w", k, err)
		}
		req.SetHeader("Content-Type", "application/json").SetBody(b)
	}
	start := time.Now()
	rresp, err := req.Execute(k.method, k.path)
	elapsed := time.Since(start)
	var resp *http.Response
	if rresp != nil {
		resp = rresp.RawResponse
	}
	if err != nil || resp == nil {
		fired := !stopTimer()
		cancel()
		c.m.observe(k.route, "error", elapsed)
		if err == nil {
			err = errors.New("no response")
		}
		if fired && ctx.Err() == nil {
			return nil, nil, &NetError{Call: k.String(), Err: fmt.Errorf("timeout after %s: %w", c.cfg.RequestTimeout, context.DeadlineExceeded)}
		}
		return nil, nil, &NetError{Call: k.String(), Err: cleanURLError(err)}
	}
	c.m.observe(k.route, strconv.Itoa(resp.StatusCode), elapsed)
	if stream && resp.StatusCode < 300 {
		if !stopTimer() {
			// The timer fired between the headers and here: the body is dead.
			cancel()
			resp.Body.Close()
			return nil, nil, &NetError{Call: k.String(), Err: fmt.Errorf("timeout after %s: %w", c.cfg.RequestTimeout, context.DeadlineExceeded)}
		}
		resp.Body = newIdleBody(resp.Body, c.cfg.RequestTimeout, cancel)
		return resp, cancel, nil
	}
	// JSON answers and errors are read completely inside the attempt's timeout.
	body, rerr := io.ReadAll(io.LimitReader(resp.Body, maxJSONBody+1))
	resp.Body.Close()
	fired := !stopTimer()
	cancel()
	if rerr != nil {
		if fired && ctx.Err() == nil {
			rerr = fmt.Errorf("timeout after %s: %w", c.cfg.RequestTimeout, context.DeadlineExceeded)
		}
		return nil, nil, &NetError{Call: k.String(), Err: fmt.Errorf("read body: %w", cleanURLError(rerr))}
	}
	if len(body) > maxJSONBody {
		return nil, nil, fmt.Errorf("%s: answer larger than %d bytes", k, maxJSONBody)
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	return resp, func() {}, nil
}

// answer runs a non-streaming call and returns the answer with its whole
// body (a 2xx, or a status in k.accept).
func (c *Client) answer(ctx context.Context, k call) (*http.Response, []byte, error) {
	resp, cancel, err := c.do(ctx, k, false)
	if err != nil {
		return nil, nil, err
	}
	defer cancel()
	b, err := io.ReadAll(resp.Body)
	return resp, b, err
}

// doJSON runs k and decodes a 2xx JSON answer into out (nil ignores it). A
// GET answered with something that is not JSON (a proxy's page) is retried
// like a 5xx; other methods are not repeated (the request may have been
// done).
func (c *Client) doJSON(ctx context.Context, k call, out any) (*http.Response, error) {
	for attempt := 0; ; attempt++ {
		resp, b, err := c.answer(ctx, k)
		if err != nil {
			return nil, err
		}
		if out == nil {
			return resp, nil
		}
		err = decodeJSON(k, resp, b, out)
		var nj *NotJSONError
		if err == nil || !errors.As(err, &nj) || k.method != http.MethodGet || attempt >= c.cfg.MaxRetries {
			return resp, err
		}
		if serr := sleep(ctx, c.backoff(attempt, 0)); serr != nil {
			return nil, fmt.Errorf("%w; gave up waiting to retry: %w", err, serr)
		}
	}
}

// decodeJSON parses an answer explicitly instead of relying on resty's
// content-type sniffing, and says so when CVAT (or a proxy in front of it)
// answered something that is not JSON, e.g. an HTML login page: a
// *NotJSONError, which is ErrUnavailable.
func decodeJSON(k call, resp *http.Response, b []byte, out any) error {
	ct := resp.Header.Get("Content-Type")
	if ct != "" && !isJSON(ct) {
		return &NotJSONError{Call: k.String(), Status: resp.Status, ContentType: ct, Start: printable(b, 64)}
	}
	if err := json.Unmarshal(b, out); err != nil {
		if ct == "" && len(bytes.TrimSpace(b)) > 0 && !json.Valid(b) {
			return &NotJSONError{Call: k.String(), Status: resp.Status, Start: printable(b, 64)}
		}
		return fmt.Errorf("%s: decode answer: %w", k, err)
	}
	return nil
}

func (c *Client) backoff(attempt int, retryAfter time.Duration) time.Duration {
	d := c.cfg.RetryWaitMin << min(attempt, 30)
	if d <= 0 || d > c.cfg.RetryWaitMax {
		d = c.cfg.RetryWaitMax
	}
	// Equal jitter: half fixed, half random, so replicas spread out but
	// never retry immediately.
	d = d/2 + rand.N(d/2+1)
	if retryAfter > 0 {
		d = max(d, min(retryAfter, c.cfg.RetryAfterMax))
	}
	return d
}

// parseRetryAfter reads delta-seconds or an HTTP date.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(v); err == nil {
		if s < 0 {
			return 0
		}
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(t.Sub(now), 0)
	}
	return 0
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// onOrigin takes the path and query of an absolute URL CVAT built (from its
// proxies' Host and X-Forwarded-Proto, so often another scheme or host than
// the configured one) and puts them on the configured origin: credentials
// never leave it. A path prefix of the base URL that CVAT's path lacks (a
// proxy strips it) is put back.
func (c *Client) onOrigin(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Path == "" {
		return "", fmt.Errorf("unusable URL %q from CVAT", tidy(raw))
	}
	p := u.EscapedPath()
	if prefix := c.base.EscapedPath(); prefix != "" && !strings.HasPrefix(p, prefix+"/") {
		p = prefix + p
	}
	out := c.base.Scheme + "://" + c.base.Host + p
	if u.RawQuery != "" {
		out += "?" + u.RawQuery
	}
	return out, nil
}

func sameOrigin(a, b *url.URL) bool {
	return strings.EqualFold(a.Scheme, b.Scheme) && strings.EqualFold(hostPort(a), hostPort(b))
}

func hostPort(u *url.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	switch strings.ToLower(u.Scheme) {
	case "http":
		return u.Hostname() + ":80"
	case "https":
		return u.Hostname() + ":443"
	}
	return u.Host
}

// redactURL drops userinfo and the query (which may carry an rq_id or other
// noise) from a URL shown in an error.
func redactURL(u *url.URL) string {
	cp := *u
	cp.User = nil
	cp.RawQuery = ""
	cp.Fragment = ""
	return cp.String()
}

// cleanURLError drops *url.Error's wrapping, whose message repeats the full
// URL with its query; the call already names the endpoint.
func cleanURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

type discardLogger struct{}

func (discardLogger) Errorf(string, ...any) {}
func (discardLogger) Warnf(string, ...any)  {}
func (discardLogger) Debugf(string, ...any) {}
